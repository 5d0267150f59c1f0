"""Fast approximate Gaussian smoothing for the renderer.

Wide Gaussian blurs dominate rendering time; for sigma of several pixels the result is smooth
anyway, so blurring a box-downsampled copy and interpolating back is indistinguishable and
an order of magnitude cheaper.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def smooth(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a 2-D float array; exact below 4 px, downsampled above."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if sigma_px < 4.0:
        return ndimage.gaussian_filter(a, sigma_px)
    f = int(sigma_px // 2)
    h, w = a.shape
    small_size = (max(1, w // f), max(1, h // f))
    small = np.asarray(Image.fromarray(a).resize(small_size, Image.Resampling.BOX), dtype=np.float32)
    small = ndimage.gaussian_filter(small, np.sqrt(max(sigma_px**2 - f**2 / 4.0, 1.0)) / f)
    return np.array(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
