"""A drawn chest for report tests: no models needed, same shapes every time."""

from __future__ import annotations

import numpy as np


def drawn_display() -> np.ndarray:
    """A 512x512 grey chest-like image in [0, 1]: bright body, darker lung fields."""
    yy, xx = np.mgrid[0:512, 0:512]
    img = np.full((512, 512), 0.75, np.float32)
    for cx in (170, 342):
        img[((xx - cx) / 70) ** 2 + ((yy - 260) / 150) ** 2 < 1] = 0.3
    return img


def drawn_lungs() -> np.ndarray:
    """256x256 lung labels: right lung (1) on the image's left, left lung (2) on its right."""
    yy, xx = np.mgrid[0:256, 0:256]
    lungs = np.zeros((256, 256), np.uint8)
    lungs[((xx - 85) / 35) ** 2 + ((yy - 130) / 75) ** 2 < 1] = 1
    lungs[((xx - 171) / 35) ** 2 + ((yy - 130) / 75) ** 2 < 1] = 2
    return lungs
