"""Stored pixel values of an admitted DICOM -> the model-frame display image.

Deliberately nothing but the shared preprocessing contract (:mod:`cxrmesh.contracts.preprocessing`): the same
``to_display`` and ``letterbox`` the corpus generator uses for the training copies, so an image
arriving at ingestion is seen by the models exactly as the training images were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cxrmesh.analysis.pixels import Letterbox, letterbox, to_display
from cxrmesh.contracts.preprocessing import MODEL_SIZE


@dataclass(frozen=True)
class Normalised:
    """The model input of one radiograph and how to map it back to the source pixels."""

    display: np.ndarray  # float32 (MODEL_SIZE, MODEL_SIZE) in [0, 1], 1 = white (dense)
    letterbox: Letterbox  # maps model <-> source coordinates
    pixel_spacing_mm: float | None  # of the source image; None if the header gives none


def pixel_spacing_mm(ds: Dataset) -> float | None:
    """Detector-plane spacing in mm: PixelSpacing, else ImagerPixelSpacing; None if absent or zero.

    The letterbox treats pixels as square, so one number is returned: the mean of the row and
    column spacing (they differ by well under 1 % on real detectors). Zero or negative values
    (some CR readers write 0\\0 when uncalibrated) mean "unknown", not "infinitely small".
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            values = [float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and min(values) > 0 and all(np.isfinite(values)):
            return float(sum(values) / 2.0)
    return None


def normalise(ds: Dataset, stored: np.ndarray) -> Normalised:
    """Apply the preprocessing contract: modality LUT, VOI LUT, MONOCHROME1 inversion, letterbox."""
    stored = np.asarray(stored)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if stored.shape != (rows, cols):
        raise ValueError(f"stored pixels have shape {stored.shape}, but the header says {rows} x {cols}")
    display = letterbox(to_display(stored, ds), MODEL_SIZE)
    return Normalised(
        display=np.ascontiguousarray(display, dtype=np.float32),
        letterbox=Letterbox(rows, cols, MODEL_SIZE),
        pixel_spacing_mm=pixel_spacing_mm(ds),
    )
