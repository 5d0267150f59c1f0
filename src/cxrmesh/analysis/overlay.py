"""The one picture of what was found on a chest image, and the one colour table it is drawn with.

Lung outlines, the four-region split, opacity truth, landmarks and an attention heatmap, drawn on a
grey image. The demo report, the real-radiograph figure and the synthetic corpus's contact sheet all
draw with ``draw_overlay``, so a lung, a region or a landmark has the same colour wherever it shows.

It lives in the pure core (numpy and PIL in memory, no files) because both the synthetic corpus
(an adapter) and the reports (assembly) draw it, and neither may import the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from cxrmesh.analysis.regions import Lung, Region
from cxrmesh.contracts.tensors import MODEL_INPUT

RGB = tuple[int, int, int]

# ------------------------------------------------------------------------------------ colour table
# Fill colours of the four regions and outline colours of the two lungs.
REGION_COLOURS: dict[int, RGB] = {
    Region.RIGHT_UPPER: (235, 87, 64),
    Region.RIGHT_LOWER: (250, 176, 40),
    Region.LEFT_UPPER: (66, 133, 244),
    Region.LEFT_LOWER: (38, 198, 170),
}
LUNG_COLOURS: dict[int, RGB] = {Lung.RIGHT: (255, 80, 80), Lung.LEFT: (90, 170, 255)}
# landmark name -> (label drawn beside it, ring colour); unknown landmarks are yellow under their own name
LANDMARK_STYLE: dict[str, tuple[str, RGB]] = {
    "carina": ("carina", (60, 235, 95)),
    "left_hilum": ("L hilum", (245, 70, 245)),
}
OTHER_LANDMARK: RGB = (255, 255, 0)
SPLIT_LINE_COLOUR: RGB = (255, 255, 255)  # dashed upper/lower split through the left hilum
OPACITY_COLOUR: RGB = (255, 170, 0)  # opacity truth of the synthetic corpus
REGION_ALPHA = 0.30
OPACITY_ALPHA = 0.40
ATTENTION_ALPHA = 0.60
# Anchor colours of the attention colour map (low -> high), a turbo-like ramp.
HEAT_ANCHORS = np.array(
    [(48, 18, 59), (65, 120, 240), (30, 215, 200), (160, 250, 60), (250, 185, 40), (215, 40, 20)],
    dtype=np.float32,
)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (..., 3) float RGB on the turbo-like ramp."""
    v = np.clip(values, 0, 1) * (len(HEAT_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(HEAT_ANCHORS) - 2)
    t = (v - lo)[..., None]
    return HEAT_ANCHORS[lo] * (1 - t) + HEAT_ANCHORS[lo + 1] * t


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at ``size`` pixels (the fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D label map scaled to ``shape`` (nearest; block copies when the factor is whole)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.shape == shape:
        return labels.astype(np.uint8)
    h, w = shape
    if h % labels.shape[0] == 0 and w % labels.shape[1] == 0:
        return np.kron(
            labels.astype(np.uint8), np.ones((h // labels.shape[0], w // labels.shape[1]), np.uint8)
        )
    img = Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(img)


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (4-neighbour erosion)."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def _blend(rgb: np.ndarray, mask: np.ndarray, colour: RGB, alpha: float) -> None:
    rgb[mask] = rgb[mask] * (1 - alpha) + np.array(colour, np.float32) * alpha


def _heatmap(rgb: np.ndarray, attention: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    att = np.nan_to_num(np.asarray(attention, dtype=np.float32))
    att = att - min(float(att.min()), 0.0)
    att = att / max(float(att.max()), 1e-6)
    big = Image.fromarray(att.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
    a = np.clip(np.asarray(big, dtype=np.float32), 0, 1)
    alpha = (ATTENTION_ALPHA * a**0.8)[..., None]
    return rgb * (1 - alpha) + heat_colours(a) * alpha


def _split_line(draw: ImageDraw.ImageDraw, extent: np.ndarray, y: float, unit: float) -> None:
    """The dashed upper/lower split at image row ``y``, across the columns that ``extent`` covers."""
    cols = np.nonzero((extent > 0).any(axis=0))[0]
    if not cols.size:
        return
    for x0 in range(int(cols.min()), int(cols.max()), max(2, round(12 * unit))):
        x1 = min(x0 + round(6 * unit), int(cols.max()))
        draw.line([(x0, y), (x1, y)], fill=SPLIT_LINE_COLOUR, width=max(1, round(unit)))


def _marker(draw: ImageDraw.ImageDraw, name: str, X: float, Y: float, unit: float) -> None:
    """A ringed cross at (X, Y) with its label: carina's up-left, the hilum's down-right (never collide)."""
    label, colour = LANDMARK_STYLE.get(name, (name, OTHER_LANDMARK))
    r = 8 * unit
    draw.ellipse([X - r - 1, Y - r - 1, X + r + 1, Y + r + 1], outline=(0, 0, 0), width=max(1, round(unit)))
    draw.ellipse([X - r, Y - r, X + r, Y + r], outline=colour, width=max(2, round(2.5 * unit)))
    draw.line([(X - 2 * unit, Y), (X + 2 * unit, Y)], fill=colour, width=max(1, round(unit)))
    draw.line([(X, Y - 2 * unit), (X, Y + 2 * unit)], fill=colour, width=max(1, round(unit)))
    tx, ty = (X - r - 4 * unit, Y - r - 2 * unit) if name == "carina" else (X + r + 3 * unit, Y + r * 0.3)
    anchor = "rb" if name == "carina" else "lt"
    draw.text(
        (tx, ty),
        label,
        fill=colour,
        font=font(max(10, round(22 * unit))),
        anchor=anchor,
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )


def draw_overlay(
    display: np.ndarray,
    lungs: np.ndarray | None = None,
    regions: np.ndarray | None = None,
    landmarks: Sequence[tuple[str, float, float]] = (),
    attention: np.ndarray | None = None,
    opacity: np.ndarray | None = None,
    model_size: int = MODEL_INPUT,
) -> Image.Image:
    """``display`` (H, W) in [0, 1] as an RGB image with whichever layers are given, at the display size.

    ``regions`` (0 none, 1 RU, 2 RL, 3 LU, 4 LL) become translucent fills, ``opacity`` (non-zero =
    opacity) an orange tint and ``lungs`` (1 right, 2 left) outlines; all may be at any size that
    scales to the display (nearest). ``landmarks`` are (name, x, y) in ``model_size`` pixels (pixel
    centres at integers), drawn as ringed markers; the line through the left hilum (the upper/lower
    split) is drawn across the lungs. ``attention`` (any small grid) is stretched to the display
    (bilinear), normalised to its max and blended as a heatmap whose opacity grows with the value.
    """
    display = np.asarray(display, dtype=np.float32)
    if display.ndim != 2:
        raise ValueError(f"display image must be 2-D, got shape {display.shape}")
    h, w = display.shape
    grey = np.nan_to_num(np.clip(display, 0, 1)) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if attention is not None:
        rgb = _heatmap(rgb, attention)
    region_map = resize_labels(regions, (h, w)) if regions is not None else None
    if region_map is not None:
        for label, colour in REGION_COLOURS.items():
            _blend(rgb, region_map == label, colour, REGION_ALPHA)
    if opacity is not None:
        _blend(rgb, resize_labels(opacity > 0, (h, w)) > 0, OPACITY_COLOUR, OPACITY_ALPHA)
    lung_map = resize_labels(lungs, (h, w)) if lungs is not None else None
    if lung_map is not None:
        for label, colour in LUNG_COLOURS.items():
            rgb[_edge(lung_map == label, max(1, round(w / 256)))] = colour

    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    sx, sy = w / model_size, h / model_size
    unit = max(w, h) / 512  # marker sizes scale with the image
    extent = lung_map if lung_map is not None else region_map
    for name, _x, y in landmarks:
        if name == "left_hilum" and extent is not None and np.isfinite(y):
            _split_line(draw, extent, (y + 0.5) * sy, unit)
    for name, x, y in landmarks:
        if np.isfinite(x) and np.isfinite(y):
            _marker(draw, name, (x + 0.5) * sx, (y + 0.5) * sy, unit)
    return img
