"""Pictures of what the models see: lung masks, zone split, landmarks and attention on an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrmesh.analysis.landmarks import ChosenLandmarks, choose_landmarks
from cxrmesh.analysis.overlay import draw_overlay, font
from cxrmesh.analysis.pixels import model_input
from cxrmesh.analysis.regions import Lung, split_regions
from cxrmesh.ml.onnx_models import Findings, OnnxModels

FIGURE_SIZE = 512  # pixels per side of each of the two pictures


def _model_view(display_512: np.ndarray, size: int) -> np.ndarray:
    """The models' input frame of the image, enlarged to ``size`` for looking at (Lanczos)."""
    base = Image.fromarray(model_input(display_512)[0, 0])
    return np.asarray(base.resize((size, size), Image.Resampling.LANCZOS))


def used_landmarks(f: Findings) -> ChosenLandmarks:
    """The landmarks the services would split at: the detector's, or the estimate when implausible."""
    (carina, hilum), scores = f.landmarks, f.landmark_confidence
    return choose_landmarks(f.lungs, tuple(map(float, carina)), tuple(map(float, hilum)), tuple(scores))


def overlay(display_512: np.ndarray, f: Findings, size: int = FIGURE_SIZE) -> Image.Image:
    """Lung outlines, the upper/lower split and the two landmarks on the models' view of the image."""
    used = used_landmarks(f)
    suffix = " (estimated)" if used.estimated else ""
    marks = [("carina" + suffix, *used.carina), ("left_hilum" + suffix, *used.left_hilum)]
    return draw_overlay(_model_view(display_512, size), lungs=f.lungs, landmarks=marks)


def attention_image(display_512: np.ndarray, f: Findings, size: int = FIGURE_SIZE) -> Image.Image:
    """The embedder's attention as a heatmap on the models' view of the image."""
    return draw_overlay(_model_view(display_512, size), attention=f.attention)


def real_radiograph_report(repository: Path, out: Path) -> dict:
    """Run the models on the real pydicom-data radiograph and save the overlays side by side."""
    from cxrmesh.synth.contact import real_radiograph

    display, info = real_radiograph()
    f = OnnxModels(repository).run(model_input(display))
    left = overlay(display, f)
    right = attention_image(display, f)
    sheet = Image.new("RGB", (2 * FIGURE_SIZE, FIGURE_SIZE + 48), (0, 0, 0))
    sheet.paste(left, (0, 48))
    sheet.paste(right, (FIGURE_SIZE, 48))
    ImageDraw.Draw(sheet).text(
        (8, 6),
        "Real radiograph (pydicom-data RG1_UNCR) through the served models (ONNX)\n"
        "left: lungs (red right, blue left), dashed zone split, carina (green), left hilum (magenta); "
        "right: attention",
        fill=(255, 255, 255),
        font=font(16),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    used = used_landmarks(f)
    regions = split_regions(f.lungs, used.left_hilum)
    return {
        "image": str(out),
        "lung_fraction": {k.name.lower(): float((f.lungs == k).mean()) for k in (Lung.RIGHT, Lung.LEFT)},
        "landmarks": np.round([used.carina, used.left_hilum], 2).tolist(),
        "landmarks_estimated": used.estimated,
        "landmark_confidence": np.round(used.confidence, 3).tolist(),
        "detector_landmarks": f.landmarks.round(2).tolist(),
        "detector_score": f.landmark_confidence.round(3).tolist(),
        "landmark_problems": list(used.problems),
        "region_pixels": {int(r): int((regions == r).sum()) for r in range(1, 5)},
        "member_agreement": float((f.member_probs.argmax(axis=1) == f.lungs[None]).mean()),
        "source": info,
    }
