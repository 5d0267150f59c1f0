"""Pure pixel transforms: stored DICOM values -> display values -> letterboxed model frame.

Windowing is delegated to pydicom so a synthetic array and a real DICOM object take the same code
path (``pydicom.pixels.apply_modality_lut`` / ``apply_voi_lut``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import MODEL_INPUT, POOL

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]


@dataclass(frozen=True)
class PixelModule:
    """The DICOM attributes that decide how stored values become display values."""

    photometric: Photometric
    bits_stored: int
    window_center: float
    window_width: float
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    voi_lut_function: Literal["LINEAR", "SIGMOID"] = "LINEAR"

    def as_dataset(self) -> Dataset:
        """A minimal pydicom Dataset carrying these attributes (for pydicom's LUT functions)."""
        ds = Dataset()
        ds.PhotometricInterpretation = self.photometric
        ds.BitsStored = self.bits_stored
        ds.BitsAllocated = 16
        ds.HighBit = self.bits_stored - 1
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.RescaleSlope = self.rescale_slope
        ds.RescaleIntercept = self.rescale_intercept
        ds.RescaleType = "US"
        ds.WindowCenter = self.window_center
        ds.WindowWidth = self.window_width
        ds.VOILUTFunction = self.voi_lut_function
        return ds


def to_display(stored: np.ndarray, ds: Dataset | PixelModule) -> np.ndarray:
    """Map stored pixel values to display values in [0, 1] where 1 is white (dense tissue).

    Applies the modality LUT, then the VOI LUT (window or LUT sequence, first one), then inverts
    MONOCHROME1 so every image comes out in MONOCHROME2 sense.
    """
    if isinstance(ds, PixelModule):
        ds = ds.as_dataset()
    arr = apply_modality_lut(stored, ds).astype(np.float64)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        out = apply_voi_lut(arr, ds, index=0, prefer_lut=True).astype(np.float64)
        if "VOILUTSequence" in ds and "WindowCenter" not in ds:
            lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            lo, hi = 0.0, float(2**lut_bits - 1)
        else:
            lo, hi = _window_output_range(ds)
    else:
        lo, hi = float(arr.min()), float(arr.max())
        out = arr
    span = hi - lo if hi > lo else 1.0
    disp = np.clip((out - lo) / span, 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        disp = 1.0 - disp
    return disp.astype(np.float32)


def _window_output_range(ds: Dataset) -> tuple[float, float]:
    """pydicom's windowing maps into the stored-value range of the modality-LUT output."""
    bits = int(ds.BitsStored)
    if ds.get("PixelRepresentation", 0) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        # pydicom windows into the range of the rescaled values
        slope = float(ds.get("RescaleSlope", 1.0))
        icpt = float(ds.get("RescaleIntercept", 0.0))
        a, b = lo * slope + icpt, hi * slope + icpt
        lo, hi = min(a, b), max(a, b)
    return lo, hi


@dataclass(frozen=True)
class Letterbox:
    """Maps between an image of shape (rows, cols) and the square model frame."""

    rows: int
    cols: int
    size: int = MODEL_SIZE

    @property
    def scale(self) -> float:
        return self.size / max(self.rows, self.cols)

    @property
    def inner(self) -> tuple[int, int]:
        """Rows and columns the image occupies inside the model frame."""
        return round(self.rows * self.scale), round(self.cols * self.scale)

    @property
    def offset(self) -> tuple[int, int]:
        """(row, col) of the image's top-left corner inside the model frame."""
        r, c = self.inner
        return (self.size - r) // 2, (self.size - c) // 2

    def to_model(self, xy: np.ndarray) -> np.ndarray:
        """Source pixel coordinates (x=col, y=row; pixel centres at integers) -> model frame."""
        r, c = self.inner
        oy, ox = self.offset
        xy = np.asarray(xy, dtype=np.float64)
        sx, sy = c / self.cols, r / self.rows
        return np.stack([(xy[..., 0] + 0.5) * sx - 0.5 + ox, (xy[..., 1] + 0.5) * sy - 0.5 + oy], axis=-1)

    def to_source(self, xy: np.ndarray) -> np.ndarray:
        """Model-frame coordinates -> source pixel coordinates."""
        r, c = self.inner
        oy, ox = self.offset
        xy = np.asarray(xy, dtype=np.float64)
        sx, sy = c / self.cols, r / self.rows
        return np.stack([(xy[..., 0] + 0.5 - ox) / sx - 0.5, (xy[..., 1] + 0.5 - oy) / sy - 0.5], axis=-1)


def letterbox(image: np.ndarray, size: int = MODEL_SIZE, resample: int = Image.Resampling.BOX) -> np.ndarray:
    """Aspect-preserving resize into a size x size float32 frame, centred, zero padded."""
    lb = Letterbox(image.shape[0], image.shape[1], size)
    r, c = lb.inner
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    small = np.asarray(img.resize((c, r), resample=resample), dtype=np.float32)
    out = np.zeros((size, size), dtype=np.float32)
    oy, ox = lb.offset
    out[oy : oy + r, ox : ox + c] = small
    return out


def letterbox_labels(labels: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """Letterbox a label map with nearest-neighbour sampling (labels stay labels)."""
    lb = Letterbox(labels.shape[0], labels.shape[1], size)
    r, c = lb.inner
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    small = np.asarray(img.resize((c, r), resample=Image.Resampling.NEAREST), dtype=np.uint8)
    out = np.zeros((size, size), dtype=np.uint8)
    oy, ox = lb.offset
    out[oy : oy + r, ox : ox + c] = small
    return out


def model_input(display_512: np.ndarray) -> np.ndarray:
    """Letterboxed MODEL_SIZE^2 display image -> the models' [1, 1, MODEL_INPUT, MODEL_INPUT] input."""
    if display_512.shape != (MODEL_SIZE, MODEL_SIZE):
        raise ValueError(f"expected a {MODEL_SIZE}x{MODEL_SIZE} image, got {display_512.shape}")
    pooled = display_512.reshape(MODEL_INPUT, POOL, MODEL_INPUT, POOL).mean(axis=(1, 3))
    return pooled[None, None].astype(np.float32)


def input_labels(labels_512: np.ndarray) -> np.ndarray:
    """A MODEL_SIZE^2 label map in the model-input frame (nearest: the centre pixel of each block)."""
    return np.ascontiguousarray(labels_512[POOL // 2 :: POOL, POOL // 2 :: POOL])
