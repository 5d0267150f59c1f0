"""The one function that turns the ensemble's probabilities into the lung map, with anatomy applied.

Used alike by the segmentation service, the in-process runner (``ml.onnx_models``), the evaluation
and the Triton demo, so their lung maps and Dice stay equal.

Why post-process at all: trained on synthetic films, the models make the typical domain-gap errors
on real ones (docs/real-radiographs.md): islands of "lung" outside the body or over the arms,
holes in a lung under a lead or a dense opacity, and a lung running on below the diaphragm. The
rules below are anatomy, not tuning, and each leaves a correct map alone (a test applies them to
the synthetic truth maps and asks for them back unchanged):

1. Nothing outside the body is lung: a piece of "lung" lying mostly in the dark background
   connected to the film's edge (air around the patient, black collimation) is dropped. "Dark" is
   relative to the lungs themselves (below ``OUTSIDE_SHARE`` of their median), so an underexposed
   film does not lose its lungs; whole pieces go, not pixels, because a true lung may touch
   thin dark chest wall at its lateral edge and must not be notched there.
2. Each lung is one piece: per side the largest connected component is kept, and a second one only
   where it is plausible (``SECOND_MIN`` of the largest's area, lying mostly within the largest's
   columns: a lung split by a dense band), never an island beside the chest.
3. A lung has no holes: a lead, a line or a dense consolidation inside it is still lung.
4. A lung does not run on below the other side's base by more than ``BASE_MARGIN`` of its own
   height: the hemidiaphragms lie within a few centimetres of each other (the left usually 1-2 cm
   lower), so a lung reaching far below the other has followed the abdomen.

Labels: ``regions.Lung`` (0 background, 1 patient's right lung on the image's left, 2 left).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cxrmesh.analysis.regions import Lung

OUTSIDE_SHARE = 0.25  # background: darker than this share of the lungs' median display value
SECOND_MIN = 0.15  # a second piece of one lung is kept from this share of the largest piece's area
# How far (share of its own height) a lung may reach below the other's base. On the synthetic truth
# maps (1,000 of data/corpus-2000) the most was 0.31 (an effusion lifting one base; 99th pct 0.22).
BASE_MARGIN = 0.40
_CONNECT = ndimage.generate_binary_structure(2, 1)  # 4-connectivity: diagonal touches don't join


def lung_map(probs: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """Ensemble probabilities (3, H, W) -> uint8 lung map, cleaned by the anatomy rules above.

    ``image``: the model-input frame (H, W) display values in [0, 1] the probabilities came from;
    without it, rule 1 (outside the body) is skipped.
    """
    if probs.ndim != 3 or probs.shape[0] != len(Lung):
        raise ValueError(f"expected probabilities of shape ({len(Lung)}, H, W), got {probs.shape}")
    return clean_lung_map(np.asarray(probs).argmax(axis=0).astype(np.uint8), image)


def clean_lung_map(labels: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """Rules 1-4 on a label map (which may come from any model or from a person)."""
    keep = labels > 0
    if image is not None and keep.any():
        if image.shape != labels.shape:
            raise ValueError(f"image {image.shape} and lung map {labels.shape} differ in shape")
        keep = _drop_outside(keep, outside_body(image, float(np.median(image[keep]))))
    sides = {side: one_piece(keep & (labels == side)) for side in (Lung.RIGHT, Lung.LEFT)}
    sides = _cut_low_bases(sides)
    out = np.zeros(labels.shape, np.uint8)
    for side, mask in sides.items():
        out[ndimage.binary_fill_holes(mask) & (out == 0)] = side
    return out


def outside_body(image: np.ndarray, lung_level: float) -> np.ndarray:
    """Dark pixels connected to the film's edge: the air around the patient (rule 1)."""
    dark = ndimage.uniform_filter(image.astype(np.float32), 3) < OUTSIDE_SHARE * lung_level
    labelled, _ = ndimage.label(dark, _CONNECT)
    edge = np.unique(np.concatenate([labelled[0], labelled[-1], labelled[:, 0], labelled[:, -1]]))
    return np.isin(labelled, edge[edge > 0])


def _drop_outside(lung: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Rule 1: pieces of lung lying mostly outside the body are dropped whole."""
    labelled, n = ndimage.label(lung, _CONNECT)
    if n == 0:
        return lung
    index = np.arange(1, n + 1)
    share_out = ndimage.mean(outside, labelled, index)
    return np.isin(labelled, index[np.asarray(share_out) <= 0.5])


def one_piece(mask: np.ndarray) -> np.ndarray:
    """The largest component, plus a second one only where it is plausibly the same lung (rule 2)."""
    labelled, n = ndimage.label(mask, _CONNECT)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1]
    first = order[0] + 1
    keep = labelled == first
    second = order[1] + 1
    if sizes[order[1]] >= SECOND_MIN * sizes[order[0]] and _below_or_above(keep, labelled == second):
        keep |= labelled == second
    return keep


def _below_or_above(largest: np.ndarray, piece: np.ndarray) -> bool:
    """Most of ``piece``'s columns lie within ``largest``'s: the same lung, not something beside it."""
    cols = np.nonzero(largest.any(axis=0))[0]
    piece_cols = np.nonzero(piece.any(axis=0))[0]
    inside = (piece_cols >= cols[0]) & (piece_cols <= cols[-1])
    return bool(inside.mean() >= 0.5)


def _cut_low_bases(sides: dict[Lung, np.ndarray]) -> dict[Lung, np.ndarray]:
    """Rule 4: trim a lung that reaches far below the other lung's base."""
    rows = {s: np.nonzero(m.any(axis=1))[0] for s, m in sides.items()}
    if any(r.size == 0 for r in rows.values()):
        return sides
    out = dict(sides)
    for side, other in ((Lung.RIGHT, Lung.LEFT), (Lung.LEFT, Lung.RIGHT)):
        top, base = rows[side][0], rows[side][-1]
        limit = rows[other][-1] + BASE_MARGIN * (base - top + 1)
        if base > limit:
            out[side] = sides[side].copy()
            out[side][int(np.floor(limit)) + 1 :] = False
    return out
