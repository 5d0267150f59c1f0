"""Which carina and left hilum the zone split uses: the detector's, or an estimate from the lung map.

The detector (``cxr_landmarks``) is accurate on the films it was trained on (1.8 mm mean on the
synthetic test split) and can be far off on others: on real films it has put the left hilum above
the carina or out in the lateral lung. A split at such a point misplaces RALE's upper and lower
zones silently. So a pair that fails the project's plausibility rules
(``regions.landmark_problems``) is not used as it is: both points are replaced by an anatomical
estimate from the lung map, and the result says so (``estimated``), for the study view, the SR and
the report to mark the zones as estimated.

The estimate (fractions fitted on the 2,070 training truth maps of data/corpus-2000, medians;
``benchmarks/landmark_calibration.py`` refits and prints them):

- carina: between the medial borders of the two lungs' upper halves, ``CARINA_X`` of the way from
  the right lung's border to the left's, and ``CARINA_Y`` of the way down from the higher apex to
  the lower base;
- left hilum: ``HILUM_X`` of the left lung's width out from its medial border, ``HILUM_Y`` of its
  height down from its apex.

On the synthetic test truth maps this is 5.5 mm (carina) and 8.2 mm (hilum) from the truth, 82 % of
points within 10 mm: much worse than the detector where the detector works, and always plausible.

Confidence. The detector's own score (the peak of its heatmap softmax) is not a probability: it is
about 0.05 on the real RG1 film whatever the error, and ~0.3 on synthetic films. ``confidence``
maps it to the chance that the point is within 10 mm of the truth, by a logistic fit on films the
detector fails on as well as on those it does not (synthetic validation films, clean and with the
training artefacts; ``benchmarks/landmark_calibration.py``). An estimated point gets the estimate's
own measured rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cxrmesh.analysis.regions import Lung, landmark_problems

CARINA_X, CARINA_Y = 0.516, 0.306
HILUM_X, HILUM_Y = 0.110, 0.399
ESTIMATE_WITHIN_10MM = 0.82  # share of estimated points within 10 mm on the synthetic test truth maps
# logistic calibration of the detector score: P(within 10 mm) = sigmoid(A * ln(score) + B)
# Fitted for the served detector (trained with the artefacts, 2026-12-04) on 1,962 points of the
# data/corpus-2000 val films, clean + artefacts + degraded; hit rate 0.77; reliability by fifths of
# the prediction: 0.22/0.20, 0.84/0.77, 0.92/0.97, 0.94/0.99, 0.96/0.94 (predicted/observed)
CALIBRATION_A, CALIBRATION_B = 3.77, 12.74

Point = tuple[float, float]


@dataclass(frozen=True)
class ChosenLandmarks:
    carina: Point
    left_hilum: Point
    estimated: bool  # True: the detector's pair was implausible; these are estimated from the lungs
    problems: tuple[str, ...]  # what was wrong with the detector's pair (empty when it was used)
    confidence: tuple[float, float]  # calibrated chance within 10 mm, carina and left hilum


def calibrated_confidence(score: float) -> float:
    """The detector's peak score -> the chance the point is within 10 mm of the truth."""
    z = CALIBRATION_A * math.log(max(float(score), 1e-6)) + CALIBRATION_B
    return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True)
class LungFrame:
    """The lung map's landmarks-to-be: the spans the estimate's fractions are fractions of."""

    top: float  # the higher apex (row)
    bottom: float  # the lower base (row)
    right_border: float  # medial (image-right) border of the right lung's upper half (column)
    left_border: float  # medial (image-left) border of the left lung's upper half (column)
    left_rows: tuple[float, float]  # the left lung's apex and base
    left_columns: tuple[float, float]  # the left lung's medial and lateral extent


def lung_frame(lungs: np.ndarray) -> LungFrame | None:
    """The spans of ``lungs`` the estimate uses (and ``benchmarks/landmark_calibration.py`` fits on)."""
    rr, rc = np.nonzero(lungs == Lung.RIGHT)
    lr, lc = np.nonzero(lungs == Lung.LEFT)
    if rr.size == 0 or lr.size == 0:
        return None
    top, bottom = min(rr.min(), lr.min()), max(rr.max(), lr.max())
    middle = top + 0.5 * (bottom - top)
    return LungFrame(
        float(top),
        float(bottom),
        float(rc[rr <= middle].max()) if (rr <= middle).any() else float(rc.max()),
        float(lc[lr <= middle].min()) if (lr <= middle).any() else float(lc.min()),
        (float(lr.min()), float(lr.max())),
        (float(lc.min()), float(lc.max())),
    )


def estimate_landmarks(lungs: np.ndarray) -> tuple[Point, Point] | None:
    """Carina and left hilum estimated from the lung map alone; None without both lungs."""
    f = lung_frame(lungs)
    if f is None:
        return None
    carina = (
        f.right_border + CARINA_X * (f.left_border - f.right_border),
        f.top + CARINA_Y * (f.bottom - f.top),
    )
    (l_top, l_base), (l_medial, l_lateral) = f.left_rows, f.left_columns
    hilum = (l_medial + HILUM_X * (l_lateral - l_medial), l_top + HILUM_Y * (l_base - l_top))
    return carina, hilum


def choose_landmarks(
    lungs: np.ndarray, carina: Point, left_hilum: Point, scores: tuple[float, float]
) -> ChosenLandmarks:
    """The detector's pair when plausible for ``lungs``, else the estimate (when that is plausible).

    When neither is plausible (a lung missing, sides swapped) the detector's pair stays, with its
    problems: the quantification reports them as warnings and the quality gate decides the rest.
    """
    problems = tuple(landmark_problems(lungs, carina, left_hilum))
    detected = ChosenLandmarks(
        carina,
        left_hilum,
        False,
        problems,
        (calibrated_confidence(scores[0]), calibrated_confidence(scores[1])),
    )
    if not problems:
        return detected
    estimate = estimate_landmarks(lungs)
    if estimate is None or landmark_problems(lungs, *estimate):
        return detected
    return ChosenLandmarks(*estimate, True, problems, (ESTIMATE_WITHIN_10MM, ESTIMATE_WITHIN_10MM))
