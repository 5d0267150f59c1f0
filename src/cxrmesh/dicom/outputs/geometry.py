"""Region maps from the model frame back onto the source image's pixel grid (for the SEG frames)."""

from __future__ import annotations

import numpy as np

from cxrmesh.analysis.pixels import Letterbox
from cxrmesh.analysis.regions import Region


def regions_to_source(regions_model: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """Model-frame region map (0..4, square, any size) -> (rows, cols) source-frame map, nearest.

    The letterbox geometry comes from ``letterbox.rows``/``letterbox.cols`` and the map's own size
    (so a 256² map works with a ``Letterbox`` made for 512²). Source pixel (i, j) takes the model
    pixel nearest to its centre under ``Letterbox.to_model``; computed in integers, so there are no
    rounding ties. This is the inverse of ``letterbox_labels`` (same nearest convention as PIL).
    """
    arr = np.asarray(regions_model)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"model-frame region map must be square 2-D, got shape {arr.shape}")
    if arr.dtype.kind not in "uib":
        raise ValueError(f"region map must have an integer dtype, got {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > max(Region)):
        raise ValueError(f"region labels must lie in 0..{int(max(Region))}, got {arr.min()}..{arr.max()}")
    lb = Letterbox(letterbox.rows, letterbox.cols, arr.shape[0])
    inner_r, inner_c = lb.inner
    oy, ox = lb.offset
    # nearest model index of source centre i: floor((i + 0.5) * inner / n) + offset, exactly.
    ri = (2 * np.arange(lb.rows, dtype=np.int64) + 1) * inner_r // (2 * lb.rows) + oy
    ci = (2 * np.arange(lb.cols, dtype=np.int64) + 1) * inner_c // (2 * lb.cols) + ox
    return np.ascontiguousarray(arr[np.ix_(ri, ci)], dtype=np.uint8)
