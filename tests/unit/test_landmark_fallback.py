"""Implausible detected landmarks are replaced by the estimate from the lung map, and say so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cxrmesh.analysis.landmarks import (
    ESTIMATE_WITHIN_10MM,
    calibrated_confidence,
    choose_landmarks,
    estimate_landmarks,
)
from cxrmesh.analysis.pixels import input_labels
from cxrmesh.analysis.regions import Lung, landmark_problems
from cxrmesh.contracts.corpus import read_manifest
from cxrmesh.ml.data import mm_per_input_pixel, to_input_frame


def lungs() -> np.ndarray:
    m = np.zeros((256, 256), np.uint8)
    m[40:200, 40:118] = Lung.RIGHT
    m[44:210, 140:220] = Lung.LEFT
    return m


def test_a_plausible_pair_is_used_as_detected() -> None:
    chosen = choose_landmarks(lungs(), (129.0, 90.0), (150.0, 110.0), (0.3, 0.2))
    assert not chosen.estimated and chosen.problems == ()
    assert chosen.carina == (129.0, 90.0) and chosen.left_hilum == (150.0, 110.0)
    assert chosen.confidence == (calibrated_confidence(0.3), calibrated_confidence(0.2))


def test_hilum_above_carina_falls_back_to_the_estimate() -> None:
    m = lungs()
    chosen = choose_landmarks(m, (129.0, 120.0), (150.0, 60.0), (0.05, 0.05))
    assert chosen.estimated
    assert any("above" in p for p in chosen.problems)
    assert landmark_problems(m, chosen.carina, chosen.left_hilum) == []
    assert chosen.confidence == (ESTIMATE_WITHIN_10MM, ESTIMATE_WITHIN_10MM)


def test_without_a_lung_nothing_is_estimated() -> None:
    m = lungs()
    m[m == Lung.LEFT] = 0
    chosen = choose_landmarks(m, (129.0, 90.0), (150.0, 110.0), (0.3, 0.3))
    assert estimate_landmarks(m) is None
    assert not chosen.estimated and chosen.problems  # the detector's pair stays, with its problems


def test_calibration_is_a_probability_rising_with_the_score() -> None:
    values = [calibrated_confidence(s) for s in (0.0, 0.01, 0.05, 0.1, 0.3, 1.0)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values) and values[0] < values[-1]


def test_estimate_on_synthetic_truth_maps_is_near_the_truth(corpus: Path) -> None:
    """The fractions were fitted on another corpus's training maps; here: a different sample."""
    errors = []
    for row in read_manifest(corpus)[:12]:
        truth = input_labels(np.asarray(Image.open(corpus / row["paths"]["lungs"])))
        expected = np.array([to_input_frame(row["landmarks"][k]["model"]) for k in ("carina", "left_hilum")])
        estimate = estimate_landmarks(truth)
        assert estimate is not None and landmark_problems(truth, *estimate) == []
        errors.append(np.linalg.norm(np.array(estimate) - expected, axis=1) * mm_per_input_pixel(row))
    assert float(np.mean(errors)) < 12.0
