"""The lung map's anatomy rules (``analysis.lung_map``): each fixes its fault, leaves a right map alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrmesh.analysis.lung_map import BASE_MARGIN, clean_lung_map, lung_map
from cxrmesh.analysis.pixels import input_labels, model_input
from cxrmesh.analysis.regions import Lung
from cxrmesh.contracts.corpus import read_manifest, read_training_copy

H = 128


def chest() -> tuple[np.ndarray, np.ndarray]:
    """A drawn chest: body on black, two dark lungs (right on the image's left), bright between."""
    image = np.zeros((H, H), np.float32)
    image[10:120, 14:114] = 0.8  # body
    labels = np.zeros((H, H), np.uint8)
    labels[20:100, 24:58] = Lung.RIGHT
    labels[22:104, 70:104] = Lung.LEFT
    image[labels > 0] = 0.35
    return image, labels


def probs_of(labels: np.ndarray) -> np.ndarray:
    p = np.zeros((3, *labels.shape), np.float32)
    for k in range(3):
        p[k] = labels == k
    return 0.1 + 0.8 * p


def test_a_clean_map_comes_back_unchanged() -> None:
    image, labels = chest()
    assert np.array_equal(clean_lung_map(labels, image), labels)
    assert np.array_equal(lung_map(probs_of(labels), image), labels)


def test_island_outside_the_body_is_dropped() -> None:
    image, labels = chest()
    bad = labels.copy()
    bad[112:124, 2:10] = Lung.RIGHT  # in the black background, below and beside the body
    assert (clean_lung_map(bad, image) == labels).all()


def test_island_over_the_arm_is_dropped_and_a_hole_is_filled() -> None:
    image, labels = chest()
    bad = labels.copy()
    bad[40:60, 108:112] = Lung.LEFT  # a piece beside the chest, inside the body outline
    bad[50:60, 30:40] = Lung.BACKGROUND  # a hole under a lead
    assert (clean_lung_map(bad, image) == labels).all()


def test_a_lung_split_by_a_dense_band_keeps_both_pieces() -> None:
    image, labels = chest()
    split = labels.copy()
    split[60:64, 24:58] = Lung.BACKGROUND  # a band right across the right lung
    out = clean_lung_map(split, image)
    assert (out[20:60, 24:58] == Lung.RIGHT).all() and (out[64:100, 24:58] == Lung.RIGHT).all()


def test_a_lung_running_below_the_other_base_is_cut() -> None:
    image, labels = chest()
    bad = labels.copy()
    bad[70:100, 24:58] = Lung.BACKGROUND  # a short right lung (base at row 69) ...
    bad[104:127, 70:104] = Lung.LEFT  # ... and the left one runs on into the abdomen, to row 126
    out = clean_lung_map(bad, image)
    left_rows = np.nonzero((out == Lung.LEFT).any(axis=1))[0]
    assert left_rows[-1] <= 69 + BASE_MARGIN * (126 - 22 + 1) < 126
    assert (out == Lung.RIGHT).sum() == (bad == Lung.RIGHT).sum()


def test_underexposed_film_keeps_its_lungs() -> None:
    image, labels = chest()
    dark = image * 0.2  # everything dark, lungs too: relative darkness decides, not an absolute level
    assert np.array_equal(clean_lung_map(labels, dark), labels)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        lung_map(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="differ"):
        clean_lung_map(np.zeros((8, 8), np.uint8) + 1, np.zeros((4, 4)))


def test_synthetic_truth_maps_pass_through(corpus: Path) -> None:
    """The rules are anatomy: real (here synthetic-truth) lungs must come back as they were."""
    for row in read_manifest(corpus)[:12]:
        truth = input_labels(np.asarray(Image.open(corpus / row["paths"]["lungs"])))
        image = model_input(read_training_copy(corpus / row["paths"]["image"]))[0, 0]
        out = clean_lung_map(truth, image)
        assert (out != truth).mean() < 1e-3, row["sop_instance_uid"][-6:]
