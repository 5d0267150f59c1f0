"""Fast approximate Gaussian smoothing and smooth noise for the renderer.

Wide Gaussian blurs and full-resolution noise draws dominate rendering time; for sigma of several
pixels the result is smooth anyway, so working on a box-downsampled copy and interpolating back is
indistinguishable and an order of magnitude cheaper.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def _up(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.array(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def smooth(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a 2-D float array; direct below 2 px, on a downsampled copy above."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if sigma_px < 2.0:
        return ndimage.gaussian_filter(a, sigma_px, truncate=3.0)
    f = max(2, int(sigma_px // 2))
    h, w = a.shape
    small = np.asarray(Image.fromarray(a).resize((max(1, w // f), max(1, h // f)), Image.Resampling.BOX))
    small = ndimage.gaussian_filter(small.astype(np.float32), np.sqrt(max(sigma_px**2 - f**2 / 4.0, 1.0)) / f)
    return _up(small, a.shape)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Unit-variance Gaussian noise with correlation length ``sigma_px``, drawn at low resolution."""
    f = max(1, int(sigma_px // 2))
    h, w = shape
    small = rng.standard_normal((max(1, h // f), max(1, w // f)), dtype=np.float32)
    small = ndimage.gaussian_filter(small, max(sigma_px / f, 0.5))
    out = _up(small, shape) if f > 1 else small
    out -= out.mean()
    out /= out.std() + 1e-6
    return out


def edge_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (px) from each inside pixel to the mask edge, computed at half resolution."""
    h, w = mask.shape
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    small = np.asarray(img.resize((w // 2, h // 2), Image.Resampling.BOX))
    dist = ndimage.distance_transform_edt(small > 127).astype(np.float32) * 2.0
    return _up(dist, mask.shape) * mask
