"""The quality gate: is this image a frontal chest radiograph the measurements can be trusted on?

A lateral view, another body part, a photo of a screen, a blank or corrupt frame or a chest turned
on its side still get a lung map from the segmentation ensemble, and every number downstream would
be computed on it. The gate looks at the image itself (never the DICOM header, which is often
wrong) and at the lung map the ensemble made of it, and answers ``pass``, ``flagged`` (a person
should look before the numbers are used) or ``refused`` (do not measure), with reasons a person can
act on.

Each cue is a number with a ``bad`` and an ``ok`` end; its plausibility is 1 at or beyond ``ok``, 0
at or beyond ``bad`` and linear between. The cues that say whether the picture is a chest at all
(contrast, texture, two lungs of plausible size, the models agreeing, a bright mediastinum between
two lungs side by side, the lungs' shapes) multiply into ``chest_score``; those that disease can
also produce (unequal lungs, a lung in pieces) count softly (``SOFT_FACTOR``) and never refuse
alone. Orientation cues (which lung is on which side, which way is up) only flag: the picture is a
chest, hung or labelled wrongly, which a person fixes. The verdict:

- refused: a refusing cue is at its bad end, or ``chest_score`` < ``REFUSE_SCORE`` (several
  borderline cues together);
- flagged: any cue short of its ok end;
- pass: otherwise.

Thresholds come from ``benchmarks/quality_gate.py --corpus data/corpus-2000 --split val``: the
``ok`` ends sit below the smallest value over those synthetic chests and the real radiograph
RG1_UNCR (pydicom-data), the ``bad`` ends at or beyond what the negatives of
``tests/support/not_chest.py`` give; the test split and data/bench-500 check them. Every value is
in the model-input frame (``MODEL_INPUT``^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cxrmesh.analysis.regions import Lung

Verdict = str  # one of VERDICTS
VERDICTS: tuple[Verdict, ...] = ("pass", "flagged", "refused")

# "Chests" below: the 327 synthetic studies of the corpus-2000 val split (min-max) and RG1; the
# negatives are those of tests/support/not_chest.py (RG1 turned for the rotations), all through the
# committed ONNX models.

# --- image cues (no lungs needed)
# p99 - p1 of the non-padding pixels. Chests 0.66-0.97, RG1 0.69; blank grey frame 0.00.
CONTRAST_BAD, CONTRAST_OK = 0.05, 0.25
# Correlation of horizontally neighbouring pixels. Chests >= 0.987, RG1 0.965 (real grain); uniform
# noise 0.00.
TEXTURE_BAD, TEXTURE_OK = 0.30, 0.75

# --- lung presence and size (share of the frame per lung)
# Below this a lung counts as absent: a blank frame or a screen photo give < 0.001 for one lung.
MISSING_AREA = 0.005
# Smaller lung: chests 0.060-0.190, RG1 0.25; hand and knee 0.035.
AREA_SMALL_BAD, AREA_SMALL_OK = 0.015, 0.04
# Larger lung: chests <= 0.20, RG1 0.27; uniform noise 0.49 (not reached: its texture refuses first).
AREA_LARGE_BAD, AREA_LARGE_OK = 0.50, 0.36

# --- the five segmentation members (mean pairwise Dice)
# Chests >= 0.975, RG1 0.877; RG1 upside down 0.80, lateral 0.73, RG1 on its side 0.57, knee 0.31,
# hand 0.15, screen photo 0.03. Below BAD the models do not see lungs in the same place.
AGREEMENT_BAD, AGREEMENT_OK = 0.50, 0.85

# --- two lungs side by side with a mediastinum between them
# Overlap of the lungs' row ranges (5th-95th percentile) over the shorter one. Chests >= 0.80, RG1 1.
OVERLAP_BAD, OVERLAP_OK = 0.30, 0.60
# Median gap (px) between the right lung's medial edge and the left lung's, over the shared rows.
# Chests >= 19, RG1 22; RG1 on its side 0, hand 8.
GAP_BAD, GAP_OK = 3.0, 10.0
# Share of the shared rows where the lungs touch (gap <= TOUCH_PX): a lateral view's one lung field
# split in two. Chests and RG1 0.00, RG1 upside down 0.02; lateral 0.16, RG1 on a photographed
# screen 0.40, hand 0.42, RG1 on its side 0.62.
TOUCH_PX = 2
TOUCH_OK, TOUCH_BAD = 0.03, 0.20
# Median display value of that gap minus the lungs' median. Chests >= 0.13, RG1 0.18; hand -0.01.
# Even a white-out lung stays darker than the spine and heart.
MEDIASTINUM_BAD, MEDIASTINUM_OK = 0.0, 0.08

# --- the pair's shapes (soft: disease can produce them)
# Smaller over larger lung area. Chests >= 0.63, RG1 0.93; lateral 0.51, knee 0.42, hand 0.37.
SIZE_BAD, SIZE_OK = 0.25, 0.55
# Dice of the right lung mirrored about the middle of the gap with the left lung. Chests >= 0.646,
# RG1 0.85; lateral 0.52, RG1 on its side 0.39, hand 0.33, knee 0.25.
MIRROR_BAD, MIRROR_OK = 0.30, 0.60
# Height over width (5th-95th percentile extents) per lung. Chests 1.03-2.33, RG1 2.12-2.47; RG1 on
# its side 0.66. A limb gives 3-3.5 but other cues refuse it first.
ASPECT_WIDE_BAD, ASPECT_WIDE_OK = 0.60, 0.85
ASPECT_LONG_BAD, ASPECT_LONG_OK = 6.00, 4.00
# Share of a lung's pixels in its largest connected piece. Chests and RG1 1.00; knee 0.73, RG1 on its
# side 0.56, hand 0.48.
PIECES_BAD, PIECES_OK = 0.55, 0.85

# --- orientation (flag only)
# Share of the right lung on the image's left half, and of the left lung on the right half.
# Chests >= 0.80, RG1 1.00; swapped labels give 0.
SIDE_BAD, SIDE_OK = 0.30, 0.70
# Median gap in the lowest third of the shared rows over the highest third: the heart widens the
# mediastinum downwards. Chests >= 0.63, RG1 2.54; RG1 upside down 0.26.
UPRIGHT_BAD, UPRIGHT_OK = 0.35, 0.55

# A cue that cannot refuse alone (disease can produce it) lowers chest_score at most by this factor,
# so it takes three of them at their bad ends (or two and a weak refusing cue) to refuse.
SOFT_FACTOR = 0.5
# chest_score below this refuses even when no single cue is at its bad end.
REFUSE_SCORE = 0.25


@dataclass(frozen=True)
class QualityVerdict:
    verdict: Verdict  # "pass", "flagged" or "refused"
    reasons: tuple[str, ...]  # actionable sentences, most serious first; empty on pass
    chest_score: float  # 0..1: how much the image looks like a frontal chest


@dataclass(frozen=True)
class Cue:
    """One measured sign, its plausibility for a frontal chest and what to tell a person."""

    name: str
    value: float
    plausibility: float  # 1 = typical of a frontal chest, 0 = not one
    refuses: bool  # at plausibility 0 this cue refuses on its own
    in_score: bool  # counts toward chest_score (orientation cues do not)
    reason: str


def _ramp(value: float, bad: float, ok: float) -> float:
    """0 at or beyond ``bad``, 1 at or beyond ``ok``, linear between (either direction)."""
    if not np.isfinite(value):
        return 0.0
    return float(np.clip((value - bad) / (ok - bad), 0.0, 1.0))


def _cue(
    name: str, value: float, bad: float, ok: float, reason: str, refuses: bool = True, in_score: bool = True
) -> Cue:
    return Cue(name, float(value), _ramp(value, bad, ok), refuses, in_score, reason)


# ----------------------------------------------------------------------------- image


def image_cues(image: np.ndarray) -> tuple[Cue, ...]:
    """Contrast and texture of the non-padding pixels (letterbox padding is exactly 0)."""
    content = image != 0
    values = image[content]
    contrast = float(np.percentile(values, 99) - np.percentile(values, 1)) if values.size > 100 else 0.0
    pairs = content[:, 1:] & content[:, :-1]
    a, b = image[:, 1:][pairs], image[:, :-1][pairs]
    varies = a.size > 100 and a.std() > 1e-6 and b.std() > 1e-6
    texture = float(np.corrcoef(a, b)[0, 1]) if varies else 1.0  # flat is not noise: contrast says it
    return (
        _cue(
            "contrast",
            contrast,
            CONTRAST_BAD,
            CONTRAST_OK,
            f"the image is almost uniform (contrast {contrast:.2f}): check the exposure, the window "
            "settings and that the pixel data was read correctly",
        ),
        _cue(
            "texture",
            texture,
            TEXTURE_BAD,
            TEXTURE_OK,
            f"the image looks like noise (neighbouring pixels correlate {texture:.2f}): check that "
            "the pixel data was decoded correctly",
        ),
    )


# ----------------------------------------------------------------------------- lungs


def _largest_piece(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """The largest 8-connected piece of ``mask`` and its share of the mask's pixels."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask, 0.0
    sizes = np.bincount(labels.ravel())[1:]
    k = int(sizes.argmax())
    return labels == k + 1, float(sizes[k] / sizes.sum())


def _extent(coords: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(coords, 5)), float(np.percentile(coords, 95))


def _mirror_dice(image_left: np.ndarray, image_right: np.ndarray, centre: float) -> float:
    """Dice of the image-left lung mirrored about column ``centre`` with the image-right lung."""
    cols = np.arange(image_left.shape[1])
    src = np.round(2 * centre - cols).astype(int)
    valid = (src >= 0) & (src < image_left.shape[1])
    mirrored = np.zeros_like(image_left)
    mirrored[:, valid] = image_left[:, src[valid]]
    return float(2 * (mirrored & image_right).sum() / max(1, mirrored.sum() + image_right.sum()))


def _gaps(image_left: np.ndarray, image_right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per shared row, top to bottom: the gap (px) between the lungs' medial edges, and its pixels."""
    rows = np.nonzero(image_left.any(axis=1) & image_right.any(axis=1))[0]
    cols = np.arange(image_left.shape[1])
    medial_a = np.where(image_left[rows], cols, -1).max(axis=1)
    medial_b = np.where(image_right[rows], cols, image_left.shape[1]).min(axis=1)
    between = np.zeros_like(image_left)
    for y, a, b in zip(rows, medial_a, medial_b, strict=True):
        between[y, a + 1 : b] = True
    return (medial_b - medial_a - 1).astype(np.float64), between


def _missing(right_area: float, left_area: float) -> Cue | None:
    """A refusing cue naming the missing lung(s), None when both are there."""
    if right_area >= MISSING_AREA and left_area >= MISSING_AREA:
        return None
    if right_area < MISSING_AREA and left_area < MISSING_AREA:
        reason = (
            "no lungs found: is this a chest radiograph at all (another body part, a photo, a blank image)?"
        )
    else:
        which, where = ("right", "left") if right_area < MISSING_AREA else ("left", "right")
        reason = (
            f"no {which} lung found (the image's {where} side): is this a lateral view, another body "
            "part or not a radiograph?"
        )
    return Cue("lungs_present", min(right_area, left_area), 0.0, True, True, reason)


def pair_measures(image: np.ndarray, lungs: np.ndarray) -> dict[str, float]:
    """The numbers behind the lung cues, for a map holding both lungs.

    Geometry uses each lung's largest piece and orders the pair by image position, so a map with
    swapped labels is measured like any other and only the ``sides`` value tells.
    """
    right_all, left_all = lungs == Lung.RIGHT, lungs == Lung.LEFT
    (right, right_share), (left, left_share) = _largest_piece(right_all), _largest_piece(left_all)
    a, b = (right, left) if np.nonzero(right)[1].mean() <= np.nonzero(left)[1].mean() else (left, right)
    (ya, xa), (yb, xb) = np.nonzero(a), np.nonzero(b)
    (a0, a1), (b0, b1) = _extent(ya), _extent(yb)
    aspects = [
        (_extent(y)[1] - _extent(y)[0]) / max(1.0, _extent(x)[1] - _extent(x)[0])
        for y, x in ((ya, xa), (yb, xb))
    ]
    gaps, between = _gaps(a, b)
    third = gaps.size // 3
    top, bottom = (
        (float(np.median(gaps[:third])), float(np.median(gaps[-third:]))) if third >= 3 else (0.0, 0.0)
    )
    areas = float(right_all.mean()), float(left_all.mean())
    half = lungs.shape[1] / 2
    return {
        "area_small": min(areas),
        "area_large": max(areas),
        "overlap": max(0.0, min(a1, b1) - max(a0, b0)) / max(1.0, min(a1 - a0, b1 - b0)),
        "gap": float(np.median(gaps)) if gaps.size else 0.0,
        "touch": float((gaps <= TOUCH_PX).mean()) if gaps.size else 1.0,
        "mediastinum": float(np.median(image[between]) - np.median(image[a | b])) if between.any() else -1.0,
        "size": min(areas) / max(areas),
        "mirror": _mirror_dice(a, b, 0.5 * (np.percentile(xa, 95) + np.percentile(xb, 5))),
        "aspect_wide": min(aspects),
        "aspect_long": max(aspects),
        "pieces": min(right_share, left_share),
        "sides": min(
            float((np.nonzero(right_all)[1] < half).mean()), float((np.nonzero(left_all)[1] >= half).mean())
        ),
        # no mediastinum to read gives 1: the gap and touch cues speak for it
        "upright": bottom / top if top > 0 and bottom > 0 else 1.0,
    }


def lung_cues(image: np.ndarray, lungs: np.ndarray, member_agreement: float) -> tuple[Cue, ...]:
    """Every lung-map cue; only ``lungs_present`` and agreement when a lung is missing."""
    agreement = _cue(
        "agreement",
        member_agreement,
        AGREEMENT_BAD,
        AGREEMENT_OK,
        f"the five lung models disagree (agreement {member_agreement:.2f}, frontal chests give "
        f"{AGREEMENT_OK:.2f} or more): is this a frontal chest radiograph of a person?",
    )
    missing = _missing(float((lungs == Lung.RIGHT).mean()), float((lungs == Lung.LEFT).mean()))
    if missing is not None:
        return (missing, agreement)
    m = pair_measures(image, lungs)
    return (
        agreement,
        _cue(
            "area_small",
            m["area_small"],
            AREA_SMALL_BAD,
            AREA_SMALL_OK,
            f"a lung covers only {m['area_small']:.1%} of the image (frontal chests: {AREA_SMALL_OK:.0%} or "
            "more): is the chest cropped or far away, or is this a photo of a screen?",
        ),
        _cue(
            "area_large",
            m["area_large"],
            AREA_LARGE_BAD,
            AREA_LARGE_OK,
            f"a lung fills {m['area_large']:.0%} of the image, more than a chest allows: is this noise or a "
            "close-up of another structure?",
        ),
        _cue(
            "overlap",
            m["overlap"],
            OVERLAP_BAD,
            OVERLAP_OK,
            f"the two lungs are not side by side (their heights overlap {m['overlap']:.0%}): is the image "
            "rotated by 90 degrees?",
        ),
        _cue(
            "gap",
            m["gap"],
            GAP_BAD,
            GAP_OK,
            f"there is no mediastinum between the lungs (gap {m['gap']:.0f} px): is this a lateral view, "
            "an image turned on its side, a photo of a screen or another body part?",
        ),
        _cue(
            "touch",
            m["touch"],
            TOUCH_BAD,
            TOUCH_OK,
            f"the lungs touch over {m['touch']:.0%} of their height with no mediastinum between them: is "
            "this a lateral view or an image turned on its side?",
        ),
        _cue(
            "mediastinum",
            m["mediastinum"],
            MEDIASTINUM_BAD,
            MEDIASTINUM_OK,
            f"the column between the lungs is not brighter than the lungs (difference "
            f"{m['mediastinum']:+.2f}): a frontal chest has the spine and heart there; is this another "
            "body part or view?",
        ),
        _cue(
            "size",
            m["size"],
            SIZE_BAD,
            SIZE_OK,
            f"one lung is much smaller than the other (ratio {m['size']:.2f}): check for a lateral or "
            "oblique view or a cropped image (a collapsed lung or large effusion also does this)",
            refuses=False,
        ),
        _cue(
            "mirror",
            m["mirror"],
            MIRROR_BAD,
            MIRROR_OK,
            f"the lungs are not mirror images of each other (overlap {m['mirror']:.2f}): is this a lateral "
            "or oblique view, or another body part?",
            refuses=False,
        ),
        _cue(
            "aspect_wide",
            m["aspect_wide"],
            ASPECT_WIDE_BAD,
            ASPECT_WIDE_OK,
            f"a lung is wider than it is tall (height/width {m['aspect_wide']:.2f}): is the image rotated "
            "by 90 degrees?",
            refuses=False,
        ),
        _cue(
            "aspect_long",
            m["aspect_long"],
            ASPECT_LONG_BAD,
            ASPECT_LONG_OK,
            f"a lung is long and narrow (height/width {m['aspect_long']:.1f}): is this a limb or another "
            "body part?",
            refuses=False,
        ),
        _cue(
            "pieces",
            m["pieces"],
            PIECES_BAD,
            PIECES_OK,
            f"a lung is split into separate pieces (largest piece {m['pieces']:.0%}): is the image "
            "rotated, or of another body part?",
            refuses=False,
        ),
        _cue(
            "sides",
            m["sides"],
            SIDE_BAD,
            SIDE_OK,
            "a lung is found on the wrong side (the patient's right lung belongs on the image's left): "
            "is the image mirrored or the left/right marker wrong?",
            refuses=False,
            in_score=False,
        ),
        _cue(
            "upright",
            m["upright"],
            UPRIGHT_BAD,
            UPRIGHT_OK,
            "the space between the lungs is wider at the top than at the bottom, as if the heart were "
            "above: is the image upside down?",
            refuses=False,
            in_score=False,
        ),
    )


# ----------------------------------------------------------------------------- verdict


def chest_cues(image: np.ndarray, lungs: np.ndarray, member_agreement: float) -> tuple[Cue, ...]:
    """Image cues, then lung cues unless the image is blank or noise (a lung map of it means nothing)."""
    if image.shape != lungs.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and lung map {lungs.shape} must be the same 2-D frame")
    if not np.isfinite(member_agreement):
        raise ValueError("member agreement is not finite")
    cues = image_cues(np.asarray(image, dtype=np.float64))
    if any(c.plausibility == 0.0 for c in cues):
        return cues
    return cues + lung_cues(np.asarray(image, dtype=np.float64), np.asarray(lungs), float(member_agreement))


def _weight(cue: Cue) -> float:
    """A cue's factor in chest_score: its plausibility, softened for cues that cannot refuse alone."""
    return cue.plausibility if cue.refuses else SOFT_FACTOR + (1 - SOFT_FACTOR) * cue.plausibility


def verdict_of(cues: tuple[Cue, ...]) -> QualityVerdict:
    """Combine cues: refuse on a refusing cue at 0 or a low score, flag on any cue short of ok."""
    score = float(np.prod([_weight(c) for c in cues if c.in_score]))
    short = sorted((c for c in cues if c.plausibility < 1.0), key=lambda c: c.plausibility)
    reasons = tuple(c.reason for c in short)
    if any(c.refuses and c.plausibility == 0.0 for c in cues) or score < REFUSE_SCORE:
        return QualityVerdict("refused", reasons, score)
    return QualityVerdict("flagged" if short else "pass", reasons, score)


def assess_quality(image: np.ndarray, lungs: np.ndarray, member_agreement: float) -> QualityVerdict:
    """Gate one image: ``image`` the model-input frame (display values, 1 = white), ``lungs`` the
    ensemble's label map in that frame (``Lung`` labels), ``member_agreement`` the members' mean
    pairwise Dice (1 = all agree)."""
    return verdict_of(chest_cues(image, lungs, member_agreement))
