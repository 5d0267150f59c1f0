"""The quality gate: frontal chests pass, everything else is flagged or refused with a reason.

Two halves. The rules on hand-made label maps (no models): each cue does what its reason says.
Then the real thing: the committed ONNX models segment the real radiograph RG1, four synthetic
chests and the negatives of ``support.not_chest``, and the gate judges the lung maps they make,
as the pipeline would (member agreement as the segmentation service computes it).
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from support.not_chest import not_chest_images

from cxrmesh.analysis.pixels import model_input
from cxrmesh.analysis.quality import QualityVerdict, assess_quality
from cxrmesh.analysis.quantify import lung_dice
from cxrmesh.analysis.regions import Lung
from cxrmesh.contracts.corpus import read_manifest, read_training_copy
from cxrmesh.contracts.tensors import MODEL_INPUT

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"

# ----------------------------------------------------------------------------- hand-made frames

N = MODEL_INPUT


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    y, x = np.mgrid[0:N, 0:N]
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _frontal() -> tuple[np.ndarray, np.ndarray]:
    """A cartoon frontal chest: two tall lungs, a bright mediastinum, the heart notching the left lung."""
    right = _ellipse(80, 120, 38, 80)
    heart = _ellipse(150, 185, 42, 38)
    left = _ellipse(176, 120, 38, 80) & ~heart
    lungs = np.zeros((N, N), np.uint8)
    lungs[right] = Lung.RIGHT
    lungs[left] = Lung.LEFT
    y, x = np.mgrid[0:N, 0:N] / N
    image = 0.55 + 0.1 * np.sin(3 * x) * np.cos(2 * y)  # smooth body with some shading
    image[(x > 0.45) & (x < 0.55)] = 0.8  # spine and mediastinum
    image[heart] = 0.75
    image[lungs > 0] = 0.25 + 0.05 * y[lungs > 0]
    return image.astype(np.float32), lungs


def test_cartoon_frontal_chest_passes() -> None:
    image, lungs = _frontal()
    v = assess_quality(image, lungs, 0.97)
    assert v == QualityVerdict("pass", (), 1.0)


def test_one_lung_missing_is_refused_naming_the_lung() -> None:
    image, lungs = _frontal()
    lungs[lungs == Lung.LEFT] = 0
    v = assess_quality(image, lungs, 0.97)
    assert v.verdict == "refused"
    assert v.reasons[0].startswith("no left lung found")
    assert v.chest_score == 0.0


def test_no_lungs_is_refused() -> None:
    image, _ = _frontal()
    v = assess_quality(image, np.zeros((N, N), np.uint8), 0.97)
    assert v.verdict == "refused"
    assert v.reasons[0].startswith("no lungs found")


def test_swapped_sides_are_flagged_not_refused() -> None:
    image, lungs = _frontal()
    swapped = np.where(lungs == Lung.RIGHT, Lung.LEFT, np.where(lungs == Lung.LEFT, Lung.RIGHT, 0)).astype(
        np.uint8
    )
    v = assess_quality(image, swapped, 0.97)
    assert v.verdict == "flagged"
    assert any("wrong side" in r for r in v.reasons)


def test_upside_down_is_flagged() -> None:
    image, lungs = _frontal()
    v = assess_quality(image[::-1], lungs[::-1], 0.97)  # the heart's notch now at the top
    assert v.verdict == "flagged"
    assert any("upside down" in r for r in v.reasons)


def test_lungs_stacked_on_top_of_each_other_are_refused() -> None:
    image, lungs = _frontal()
    stacked = np.zeros_like(lungs)
    stacked[_ellipse(128, 70, 90, 40)] = Lung.RIGHT
    stacked[_ellipse(128, 190, 90, 40)] = Lung.LEFT
    v = assess_quality(image, stacked, 0.97)
    assert v.verdict == "refused"
    assert any("side by side" in r for r in v.reasons)


def test_lungs_touching_without_mediastinum_are_refused() -> None:
    image, _ = _frontal()
    one_field = _ellipse(128, 128, 100, 90)
    lungs = np.zeros((N, N), np.uint8)
    lungs[one_field] = Lung.RIGHT
    lungs[one_field & (np.arange(N) >= 128)[None, :]] = Lung.LEFT  # one field cut in two, as on a lateral
    v = assess_quality(image, lungs, 0.97)
    assert v.verdict == "refused"
    assert any("mediastinum" in r for r in v.reasons)


def test_member_disagreement_refuses_and_borderline_flags() -> None:
    image, lungs = _frontal()
    low, mid = assess_quality(image, lungs, 0.3), assess_quality(image, lungs, 0.7)
    assert low.verdict == "refused" and "disagree" in low.reasons[0]
    assert mid.verdict == "flagged" and "disagree" in mid.reasons[0]
    assert 0.0 < mid.chest_score < 1.0


def test_one_small_lung_is_flagged_not_refused() -> None:
    """A collapsed lung or a big effusion: a chest that needs a look, not a refusal."""
    image, lungs = _frontal()
    lungs[(lungs == Lung.LEFT) & (np.arange(N) < 110)[:, None]] = 0  # only the left base is left
    v = assess_quality(image, lungs, 0.97)
    assert v.verdict == "flagged"
    assert any("smaller than the other" in r for r in v.reasons)


def test_blank_and_noise_frames_are_refused_for_what_they_are() -> None:
    _, lungs = _frontal()
    blank = assess_quality(np.full((N, N), 0.5, np.float32), lungs, 0.97)
    assert blank.verdict == "refused" and blank.reasons == (blank.reasons[0],)
    assert "uniform" in blank.reasons[0]
    noise = np.random.default_rng(0).uniform(0, 1, (N, N)).astype(np.float32)
    v = assess_quality(noise, lungs, 0.97)
    assert v.verdict == "refused" and "noise" in v.reasons[0]


def test_verdict_is_frozen_and_frames_must_match() -> None:
    image, lungs = _frontal()
    v = assess_quality(image, lungs, 0.97)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.verdict = "refused"  # type: ignore[misc]
    with pytest.raises(ValueError):
        assess_quality(image[:128], lungs, 0.97)


# ----------------------------------------------------------------------------- the real models


@pytest.fixture(scope="module")
def models():
    from cxrmesh.ml.onnx_models import OnnxModels

    return OnnxModels(REPOSITORY)


@pytest.fixture(scope="module")
def rg1() -> np.ndarray:
    from cxrmesh.synth.contact import real_radiograph

    return real_radiograph()[0]


def _gate(models, display_512: np.ndarray) -> QualityVerdict:
    x = model_input(display_512)
    f = models.run(x)
    labels = f.member_probs.argmax(axis=1)
    pairs = itertools.combinations(range(len(labels)), 2)
    agreement = float(np.mean([lung_dice(labels[a], labels[b]) for a, b in pairs]))
    return assess_quality(x[0, 0], f.lungs, agreement)


# The least each negative must get, and why that and not more.
LEAST = {
    "blank_grey": "refused",  # nothing to measure
    "uniform_noise": "refused",  # corrupt pixels
    "screen_photo": "refused",  # the models find no right lung
    "hand": "refused",  # the models disagree, "lungs" in pieces
    "knee": "refused",  # the models disagree
    "lateral_chest": "refused",  # lungs touch with no mediastinum, unequal, models half agree
    "rotated_90": "refused",  # no mediastinum between the "lungs"
    # A chest, hung wrongly: the lungs, the mediastinum and the models' agreement all look right,
    # only the heart's side of the mediastinum is on top. A person turns it; flagging is enough.
    "upside_down": "flagged",
    # The chest on the monitor is a real frontal chest, small and framed: refused today (at that size
    # the lungs run together over the mediastinum), but it is the one negative whose lungs could
    # look right, so flagging is the least required.
    "screen_photo_of_chest": "flagged",
}
ABOUT = {
    "blank_grey": "uniform",
    "uniform_noise": "noise",
    "screen_photo": "no right lung",
    "lateral_chest": "lateral",
    "rotated_90": "90 degrees",
    "upside_down": "upside down",
}


@pytest.fixture(scope="module")
def negatives(models, rg1) -> dict[str, QualityVerdict]:
    return {name: _gate(models, image) for name, image in not_chest_images(rg1).items()}


@pytest.mark.parametrize("name", sorted(LEAST))
def test_negative_is_stopped_with_a_reason(negatives: dict[str, QualityVerdict], name: str) -> None:
    v = negatives[name]
    allowed = ("refused",) if LEAST[name] == "refused" else ("flagged", "refused")
    assert v.verdict in allowed, f"{name}: {v}"
    assert v.reasons and all(r.strip() for r in v.reasons)
    if name in ABOUT:
        assert any(ABOUT[name] in r for r in v.reasons), v.reasons


def test_every_negative_is_covered(negatives: dict[str, QualityVerdict]) -> None:
    assert set(negatives) == set(LEAST)


def test_real_radiograph_is_not_refused(models, rg1: np.ndarray) -> None:
    v = _gate(models, rg1)
    assert v.verdict in ("pass", "flagged"), v
    assert v.chest_score > 0.5


@pytest.fixture(scope="module")
def synthetic_chests(request: pytest.FixtureRequest) -> list[np.ndarray]:
    """Four synthetic chests spread over site, diagnosis and view, from the session's test corpus.

    Its own seed: none of its studies was trained on, so every split may be drawn from (a fresh
    clone has no data/ folder; the same films on every machine).
    """
    from cxrmesh.synth.contact import pick_samples

    corpus = request.getfixturevalue("corpus")
    rows = read_manifest(corpus)
    return [read_training_copy(corpus / r["paths"]["image"]) for r in pick_samples(rows, 4)]


def test_synthetic_chests_pass(models, synthetic_chests: list[np.ndarray]) -> None:
    assert len(synthetic_chests) == 4
    verdicts = [_gate(models, img) for img in synthetic_chests]
    assert [v.verdict for v in verdicts] == ["pass"] * 4, verdicts
