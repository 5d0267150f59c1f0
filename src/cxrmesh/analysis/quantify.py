"""Four-region quantification: pure functions from an image, a lung map and the left hilum.

Shared by training (prognosis features), the landmark/quantification service and reports, so a
region's numbers mean the same everywhere. Works in any frame: the image and maps must share it.
"""

from __future__ import annotations

import numpy as np

from cxrmesh.analysis.regions import REGION_KEYS, split_regions
from cxrmesh.contracts.tensors import REGION_FEATURES

# A lung pixel counts as opacified when it is this much brighter than the clear-lung reference
# (the 20th percentile of both lungs' display values): air-filled lung is the darkest lung tissue.
OPACITY_DELTA = 0.12


def lung_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean of right- and left-lung Dice per image; ``pred``/``truth`` are label maps, (H, W) or (N, H, W)."""
    axes = (-2, -1)
    scores = []
    for cls in (1, 2):
        p, t = pred == cls, truth == cls
        inter = (p & t).sum(axis=axes)
        scores.append(2 * inter / np.maximum(p.sum(axis=axes) + t.sum(axis=axes), 1))
    return np.mean(scores, axis=0)


def region_table(image: np.ndarray, lungs: np.ndarray, left_hilum_xy: tuple[float, float]) -> dict[str, dict]:
    """Per region: area fraction of the lungs, mean display intensity, opacified fraction."""
    regions = split_regions(lungs, left_hilum_xy)
    lung = lungs > 0
    total = int(lung.sum())
    reference = float(np.percentile(image[lung], 20)) if total else 0.0
    out: dict[str, dict] = {}
    for region, key in REGION_KEYS.items():
        inside = regions == region
        n = int(inside.sum())
        values = image[inside]
        out[key] = {
            "area_fraction": n / total if total else 0.0,
            "mean_intensity": float(values.mean()) if n else 0.0,
            "opacity_fraction": float((values > reference + OPACITY_DELTA).mean()) if n else 0.0,
            "pixels": n,
        }
    return out


def region_vector(table: dict[str, dict]) -> np.ndarray:
    """The table flattened in ``spec.REGION_FEATURES`` order (the prognosis head's input)."""
    flat = {f"{region}_{name}": float(v) for region, row in table.items() for name, v in row.items()}
    return np.array([flat[name] for name in REGION_FEATURES], dtype=np.float32)
