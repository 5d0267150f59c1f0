"""The two pictures of a study in the report: its findings overlay and its attention map, as PNG.

The arrays come from the blob store by the StudyView's references; any of them may be missing or
unreadable, and the pictures show whatever is there (masks on black when the display image is gone).
Drawing is ``cxrmesh.analysis.overlay``'s, with its colour table; the report adds one mark of its own:
a dashed outer ring around a landmark estimated from the lung map (the legend says so in words). A
study the quality gate refused gets no landmarks and no split: nothing was measured on it.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from cxrmesh.analysis.overlay import LANDMARK_STYLE, OTHER_LANDMARK, draw_overlay
from cxrmesh.contracts.tensors import MODEL_INPUT
from cxrmesh.reporting import views as v
from cxrmesh.runtime.blobs import BlobError, BlobStore, bytes_array
from cxrmesh.v1 import common_pb2, studyview_pb2

DASHES = 12  # dashes around an estimated landmark's ring (three of them left out where the label is)
ESTIMATED_RING = 14  # its radius at a 512-pixel image (draw_overlay's own ring is 8)


def _estimated_rings(
    img: Image.Image,
    landmarks: Sequence[tuple[str, float, float]],
    estimated: Collection[str],
    model_size: int,
) -> None:
    """A dashed ring in the landmark's colour around each estimated landmark (frames as draw_overlay's),
    open on the quarter where draw_overlay writes the landmark's name (the carina's up-left, others'
    down-right; PIL's angles go clockwise from 3 o'clock)."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    sx, sy, unit = w / model_size, h / model_size, max(w, h) / 512
    r, width = ESTIMATED_RING * unit, max(2, round(2 * unit))
    step = 360 / DASHES
    for name, x, y in landmarks:
        if name not in estimated or not (np.isfinite(x) and np.isfinite(y)):
            continue
        X, Y = (x + 0.5) * sx, (y + 0.5) * sy
        colour = LANDMARK_STYLE.get(name, (name, OTHER_LANDMARK))[1]
        label = (180, 270) if name == "carina" else (0, 90)
        for k in range(DASHES):
            start = k * step
            if label[0] <= start < label[1]:
                continue
            draw.arc([X - r, Y - r, X + r, Y + r], start, start + step / 2, fill=colour, width=width)


def overlay_png(
    display: np.ndarray,
    lungs: np.ndarray | None,
    regions: np.ndarray | None,
    landmarks: Sequence[tuple[str, float, float]],
    attention: np.ndarray | None,
    model_size: int = MODEL_INPUT,
    estimated: Collection[str] = (),
) -> bytes:
    """PNG bytes of ``draw_overlay`` (see there for the layers and their frames).

    ``estimated``: names of landmarks estimated from the lung map, ringed with dashes.
    """
    img = draw_overlay(display, lungs, regions, landmarks, attention, model_size=model_size)
    if estimated:
        _estimated_rings(img, landmarks, estimated, model_size)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass
class StudyPictures:
    """A study's overlay and attention PNGs (None when there is nothing to draw) and what went wrong."""

    overlay: bytes | None
    attention: bytes | None
    caption: str
    problems: list[str] = field(default_factory=list)


def _load(blobs: BlobStore, ref: common_pb2.BlobRef, what: str, problems: list[str]) -> np.ndarray | None:
    """The array behind ``ref``; None (and a note in ``problems``) when absent or unreadable."""
    if not (ref.sha256 or ref.uri):
        return None
    try:
        array = bytes_array(blobs.get(ref))
    except (BlobError, OSError, ValueError) as exc:
        problems.append(f"{what} unavailable: {exc}")
        return None
    if array.ndim != 2:
        problems.append(f"{what} unavailable: expected a 2-D array, got shape {array.shape}")
        return None
    return array


def study_pictures(view: studyview_pb2.StudyView, blobs: BlobStore) -> StudyPictures:
    """Load the study's display image, masks and attention map and draw its two pictures."""
    problems: list[str] = []
    display = _load(blobs, view.display_image, "display image", problems)
    lungs = (
        _load(blobs, view.segmentation.lungs, "lung map", problems) if view.HasField("segmentation") else None
    )
    regions = None
    landmarks: list[tuple[str, float, float]] = []
    if view.HasField("quantification") and not v.is_refused(view):
        regions = _load(blobs, view.quantification.region_map, "region map", problems)
        landmarks = [(lm.name, lm.model.x, lm.model.y) for lm in view.quantification.landmarks]
    estimated = v.estimated_landmarks(view)
    attention = _load(blobs, view.attention_map, "attention map", problems)

    base = display
    if base is None and (lungs is not None or regions is not None or attention is not None):
        base = np.zeros((MODEL_INPUT * 2, MODEL_INPUT * 2), np.float32)  # masks on black
    over = att = None
    if base is not None:
        over = overlay_png(base, lungs, regions, landmarks, None, estimated=estimated)
        if attention is not None:
            att = overlay_png(base, None, None, [], attention)
    parts = [p for p, ok in (("lungs", lungs), ("regions", regions)) if ok is not None]
    if landmarks:
        parts.append("landmarks (estimated: dashed ring)" if estimated else "landmarks")
    caption = "Overlay: " + (", ".join(parts) if parts else "none available")
    if v.is_refused(view):
        caption += " (image refused: not measured)"
    return StudyPictures(over, att, caption, problems)
