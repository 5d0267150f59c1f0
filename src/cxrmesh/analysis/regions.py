"""The four-region split: right/left lung x upper/lower zone.

The rule, written down once and reused by the generator, training, the landmark service and the
reports:

    Each lung is divided into an upper and a lower zone by the horizontal image line through the
    left hilum. Pixels whose centre lies above that line (row < hilum_y) are upper zone, the rest
    lower zone. The right/left division is the lung segmentation itself.

Sources. RALE (Warren et al., Thorax 2018;73:840-846) defines its quadrants by the vertical axis of
the vertebral column and a horizontal axis through the first branch of the left main bronchus.
Kim et al. (Diagnostics 2022;12:101, arXiv:2009.12610) automate this with a detector for the carina
and the left hilum; the left hilum is where the left main bronchus gives off its first (upper lobe)
branch, so the horizontal line through it is RALE's horizontal axis. The carina is not needed for
the split itself; it is used to check that a landmark pair is anatomically plausible (the carina
lies between the lungs, above the left hilum, and medial to it) and that the lung labels are on
their own side of it (a segmentation that swaps left and right would otherwise swap the quadrants
silently).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

import numpy as np

WRONG_SIDE_LIMIT = 0.10  # share of lung pixels on the other lung's side of the carina that is flagged


class Lung(IntEnum):
    """Labels of the lung map (patient's right lung is on the image's left)."""

    BACKGROUND = 0
    RIGHT = 1
    LEFT = 2


class Region(IntEnum):
    """Labels of the four-region map."""

    BACKGROUND = 0
    RIGHT_UPPER = 1
    RIGHT_LOWER = 2
    LEFT_UPPER = 3
    LEFT_LOWER = 4


REGION_KEYS: dict[Region, str] = {
    Region.RIGHT_UPPER: "right_upper",
    Region.RIGHT_LOWER: "right_lower",
    Region.LEFT_UPPER: "left_upper",
    Region.LEFT_LOWER: "left_lower",
}


def split_regions(lungs: np.ndarray, left_hilum_xy: tuple[float, float]) -> np.ndarray:
    """Split a lung label map (0 background, 1 right, 2 left) into the four regions.

    ``left_hilum_xy`` is (x, y) in the pixel coordinates of ``lungs`` (pixel centres at integers).
    Returns a uint8 map with the ``Region`` labels.
    """
    if lungs.ndim != 2:
        raise ValueError(f"lung map must be 2-D, got shape {lungs.shape}")
    hilum_y = float(left_hilum_xy[1])
    if not np.isfinite(hilum_y):
        raise ValueError("left hilum coordinate is not finite")
    upper = (np.arange(lungs.shape[0], dtype=np.float64) < hilum_y)[:, None]
    out = np.zeros(lungs.shape, dtype=np.uint8)
    right = lungs == Lung.RIGHT
    left = lungs == Lung.LEFT
    out[right & upper] = Region.RIGHT_UPPER
    out[right & ~upper] = Region.RIGHT_LOWER
    out[left & upper] = Region.LEFT_UPPER
    out[left & ~upper] = Region.LEFT_LOWER
    return out


def wrong_side_share(lungs: np.ndarray, carina_x: float) -> float:
    """Share of lung pixels labelled with the lung of the other side of the carina (0 = sides right).

    In standard display orientation the patient's right lung lies left of the carina in the image;
    a map that puts its labels the other way round has its sides swapped, whatever its Dice.
    """
    xs = np.nonzero(lungs == Lung.RIGHT)[1]
    xl = np.nonzero(lungs == Lung.LEFT)[1]
    return int((xs > carina_x).sum() + (xl < carina_x).sum()) / max(1, xs.size + xl.size)


class LandmarkProblem(StrEnum):
    """What ``landmark_problems`` can find wrong with a landmark pair, as a fixed set of codes.

    The sentences it returns are for people (warnings on the study, the SR, reports) and one carries a
    number; a metric label or a program needs a bounded code, so each sentence starts with its code's
    fixed text (``PROBLEM_TEXT``) and ``problem_code`` maps a sentence back. A new check adds a code here.
    """

    LUNG_MISSING = "lung_missing"
    CARINA_NOT_BETWEEN_LUNGS = "carina_not_between_lungs"
    CARINA_NOT_ABOVE_HILUM = "carina_not_above_hilum"
    HILUM_NOT_LATERAL = "hilum_not_lateral"
    HILUM_OUTSIDE_LUNGS = "hilum_outside_lungs"
    LUNGS_WRONG_SIDE = "lungs_wrong_side"
    OTHER = "other"  # a sentence no code claims (never produced here; keeps the label set closed)


PROBLEM_TEXT: dict[LandmarkProblem, str] = {
    LandmarkProblem.LUNG_MISSING: "lung map lacks a right or a left lung",
    LandmarkProblem.CARINA_NOT_BETWEEN_LUNGS: "carina does not lie between the lung centroids",
    LandmarkProblem.CARINA_NOT_ABOVE_HILUM: "carina is not above the left hilum",
    LandmarkProblem.HILUM_NOT_LATERAL: "left hilum is not lateral (patient-left) of the carina",
    LandmarkProblem.HILUM_OUTSIDE_LUNGS: "left hilum lies outside the lungs' vertical extent",
    LandmarkProblem.LUNGS_WRONG_SIDE: "lung labels on the wrong side of the carina",
}


def problem_code(problem: str) -> LandmarkProblem:
    """The code of one of ``landmark_problems``' sentences (``OTHER`` for a sentence it did not write)."""
    for code, text in PROBLEM_TEXT.items():
        if problem.startswith(text):
            return code
    return LandmarkProblem.OTHER


def landmark_problems(
    lungs: np.ndarray, carina_xy: tuple[float, float], left_hilum_xy: tuple[float, float]
) -> list[str]:
    """Reasons why a landmark pair is implausible for this lung map; empty when plausible.

    Each reason starts with its ``PROBLEM_TEXT`` (``problem_code`` gives its ``LandmarkProblem``).
    """
    problems: list[str] = []
    ys, xs = np.nonzero(lungs == Lung.RIGHT)
    yl, xl = np.nonzero(lungs == Lung.LEFT)
    if xs.size == 0 or xl.size == 0:
        return [PROBLEM_TEXT[LandmarkProblem.LUNG_MISSING]]
    cx, cy = carina_xy
    hx, hy = left_hilum_xy
    if not xs.mean() < cx < xl.mean():
        problems.append(PROBLEM_TEXT[LandmarkProblem.CARINA_NOT_BETWEEN_LUNGS])
    if not cy < hy:
        problems.append(PROBLEM_TEXT[LandmarkProblem.CARINA_NOT_ABOVE_HILUM])
    if not cx < hx:
        problems.append(PROBLEM_TEXT[LandmarkProblem.HILUM_NOT_LATERAL])
    top = min(ys.min(), yl.min())
    bottom = max(ys.max(), yl.max())
    if not top < hy < bottom:
        problems.append(PROBLEM_TEXT[LandmarkProblem.HILUM_OUTSIDE_LUNGS])
    wrong = wrong_side_share(lungs, cx)
    if wrong > WRONG_SIDE_LIMIT:
        problems.append(f"{PROBLEM_TEXT[LandmarkProblem.LUNGS_WRONG_SIDE]} ({wrong:.0%} of lung pixels)")
    return problems
