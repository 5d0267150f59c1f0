"""The four-region split rule and landmark plausibility, on hand-made lung maps."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmesh.analysis.regions import Lung, Region, landmark_problems, split_regions, wrong_side_share


def _lungs() -> np.ndarray:
    m = np.zeros((100, 120), dtype=np.uint8)
    m[10:90, 10:50] = Lung.RIGHT
    m[10:85, 70:110] = Lung.LEFT
    return m


def test_split_is_the_horizontal_line_through_the_left_hilum() -> None:
    lungs = _lungs()
    regions = split_regions(lungs, (75.0, 40.3))
    # rows 0..40 lie above y = 40.3 (pixel centres at integers), rows 41.. below
    assert (regions[10:41, 10:50] == Region.RIGHT_UPPER).all()
    assert (regions[41:90, 10:50] == Region.RIGHT_LOWER).all()
    assert (regions[10:41, 70:110] == Region.LEFT_UPPER).all()
    assert (regions[41:85, 70:110] == Region.LEFT_LOWER).all()
    assert (regions[lungs == 0] == Region.BACKGROUND).all()


def test_split_depends_only_on_hilum_height() -> None:
    lungs = _lungs()
    a = split_regions(lungs, (75.0, 50.0))
    b = split_regions(lungs, (95.0, 50.0))
    c = split_regions(lungs, (75.0, 51.0))
    assert (a == b).all()
    assert (a != c).any()


def test_split_keeps_lung_membership() -> None:
    lungs = _lungs()
    regions = split_regions(lungs, (75.0, 30.0))
    right = np.isin(regions, [Region.RIGHT_UPPER, Region.RIGHT_LOWER])
    left = np.isin(regions, [Region.LEFT_UPPER, Region.LEFT_LOWER])
    assert (right == (lungs == Lung.RIGHT)).all()
    assert (left == (lungs == Lung.LEFT)).all()


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4), dtype=np.uint8)])
def test_split_rejects_non_2d(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="2-D"):
        split_regions(bad, (1.0, 1.0))


def test_split_rejects_nan_hilum() -> None:
    with pytest.raises(ValueError, match="finite"):
        split_regions(_lungs(), (1.0, float("nan")))


def test_landmark_plausibility() -> None:
    lungs = _lungs()
    assert landmark_problems(lungs, (60.0, 30.0), (72.0, 40.0)) == []
    assert "carina does not lie between the lung centroids" in landmark_problems(
        lungs, (20.0, 30.0), (72.0, 40.0)
    )
    assert "carina is not above the left hilum" in landmark_problems(lungs, (60.0, 50.0), (72.0, 40.0))
    assert "left hilum lies outside the lungs' vertical extent" in landmark_problems(
        lungs, (60.0, 3.0), (72.0, 95.0)
    )
    swapped = np.where(lungs == Lung.RIGHT, Lung.LEFT, np.where(lungs == Lung.LEFT, Lung.RIGHT, 0))
    problems = landmark_problems(swapped.astype(np.uint8), (60.0, 30.0), (72.0, 40.0))
    assert any(p.startswith("lung labels on the wrong side of the carina (100%") for p in problems)
    assert landmark_problems(np.zeros((10, 10), np.uint8), (1, 1), (2, 2)) == [
        "lung map lacks a right or a left lung"
    ]


def test_wrong_side_share_counts_labels_across_the_carina() -> None:
    lungs = _lungs()
    assert wrong_side_share(lungs, 60.0) == 0.0
    swapped = np.where(lungs == Lung.RIGHT, Lung.LEFT, np.where(lungs == Lung.LEFT, Lung.RIGHT, 0))
    assert wrong_side_share(swapped.astype(np.uint8), 60.0) == 1.0
    one_label = np.where(lungs > 0, Lung.LEFT, 0).astype(np.uint8)  # both lungs called "left"
    right_pixels = int((lungs == Lung.RIGHT).sum())
    assert wrong_side_share(one_label, 60.0) == pytest.approx(right_pixels / int((lungs > 0).sum()))
    assert wrong_side_share(np.zeros((4, 4), np.uint8), 2.0) == 0.0
