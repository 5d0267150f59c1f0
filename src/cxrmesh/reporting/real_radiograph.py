"""Pictures of what the models see: lung masks, zone split, landmarks and attention on an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from cxrmesh.analysis.pixels import model_input
from cxrmesh.analysis.regions import Lung, landmark_problems, split_regions
from cxrmesh.contracts.tensors import MODEL_INPUT
from cxrmesh.ml.onnx_models import Findings, OnnxModels

COLOURS = {Lung.RIGHT: (255, 70, 70), Lung.LEFT: (70, 150, 255)}


def overlay(display_512: np.ndarray, f: Findings, size: int = 512) -> Image.Image:
    """Lung outlines, upper/lower split, carina (green) and left hilum (magenta) on the image."""
    base = model_input(display_512)[0, 0]
    rgb = np.repeat((np.clip(base, 0, 1) * 255)[..., None], 3, axis=2)
    for label, colour in COLOURS.items():
        m = f.lungs == label
        edge = m & ~ndimage.binary_erosion(m, iterations=1)
        rgb[edge] = colour
    img = Image.fromarray(rgb.astype(np.uint8)).resize((size, size), Image.Resampling.LANCZOS)
    s = size / MODEL_INPUT
    draw = ImageDraw.Draw(img)
    (cx, cy), (hx, hy) = f.landmarks
    xs = np.nonzero((f.lungs > 0).any(axis=0))[0]
    if xs.size:
        draw.line(
            [(xs.min() * s, (hy + 0.5) * s), (xs.max() * s, (hy + 0.5) * s)], fill=(255, 255, 0), width=2
        )
    for (x, y), colour in (((cx, cy), (0, 255, 0)), ((hx, hy), (255, 0, 255))):
        X, Y = (x + 0.5) * s, (y + 0.5) * s
        draw.ellipse([X - 6, Y - 6, X + 6, Y + 6], outline=colour, width=3)
    return img


def attention_image(display_512: np.ndarray, f: Findings, size: int = 512) -> Image.Image:
    base = Image.fromarray((np.clip(model_input(display_512)[0, 0], 0, 1) * 255).astype(np.uint8)).convert(
        "RGB"
    )
    base = base.resize((size, size))
    att = f.attention / (f.attention.max() + 1e-6)
    heat = Image.fromarray((att * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    heat_rgb = np.zeros((size, size, 3), dtype=np.float32)
    h = np.asarray(heat, dtype=np.float32) / 255
    heat_rgb[..., 0] = 255 * h
    heat_rgb[..., 1] = 120 * h
    out = 0.65 * np.asarray(base, dtype=np.float32) + 0.35 * heat_rgb
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def real_radiograph_report(repository: Path, out: Path) -> dict:
    """Run the models on the real pydicom-data radiograph and save the overlays side by side."""
    from cxrmesh.synth.contact import real_radiograph

    display, info = real_radiograph()
    f = OnnxModels(repository).run(model_input(display))
    left = overlay(display, f)
    right = attention_image(display, f)
    sheet = Image.new("RGB", (1024, 560), (0, 0, 0))
    sheet.paste(left, (0, 48))
    sheet.paste(right, (512, 48))
    font = ImageFont.load_default(size=16)
    ImageDraw.Draw(sheet).text(
        (8, 6),
        "Real radiograph (pydicom-data RG1_UNCR) through the served models (ONNX)\n"
        "left: lungs (red right, blue left), zone split, carina (green), left hilum (magenta); "
        "right: attention",
        fill=(255, 255, 255),
        font=font,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    regions = split_regions(f.lungs, tuple(f.landmarks[1]))
    return {
        "image": str(out),
        "lung_fraction": {k.name.lower(): float((f.lungs == k).mean()) for k in (Lung.RIGHT, Lung.LEFT)},
        "landmarks": f.landmarks.round(2).tolist(),
        "landmark_confidence": f.landmark_confidence.round(3).tolist(),
        "landmark_problems": landmark_problems(f.lungs, tuple(f.landmarks[0]), tuple(f.landmarks[1])),
        "region_pixels": {int(r): int((regions == r).sum()) for r in range(1, 5)},
        "member_agreement": float((f.member_probs.argmax(axis=1) == f.lungs[None]).mean()),
        "source": info,
    }
