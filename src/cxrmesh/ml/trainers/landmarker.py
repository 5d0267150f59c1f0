"""Training of the landmark model: Gaussian heatmap targets plus a soft-argmax coordinate loss."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from cxrmesh.contracts.tensors import MODEL_INPUT
from cxrmesh.ml.artefacts import real_world
from cxrmesh.ml.augment import augment
from cxrmesh.ml.data import Data
from cxrmesh.ml.loop import CPU, batches, run_epochs
from cxrmesh.ml.nets import WORK, Landmarker, soft_argmax


def _gaussian_targets(xy: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    grid = torch.arange(size, dtype=torch.float32, device=xy.device)
    gx = torch.exp(-((grid[None, None, None, :] - xy[..., 0, None, None]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((grid[None, None, :, None] - xy[..., 1, None, None]) ** 2) / (2 * sigma**2))
    g = gx * gy
    return g / g.sum(dim=(2, 3), keepdim=True).clamp(min=1e-8)


def train_landmarker(
    data: Data,
    epochs: int,
    run_dir: Path,
    weights_dir: Path,
    resume: bool,
    device: torch.device = CPU,
    budget_s: float | None = None,
) -> Landmarker:
    assert data.landmarks is not None, "landmark training needs landmarks"
    model = Landmarker().to(device)
    train_idx = data.index("train")
    f = MODEL_INPUT / WORK

    def steps(epoch: int) -> Iterable[torch.Tensor]:
        for b in batches(train_idx, 16):
            x, _ = real_world(augment(data.images[b].to(device).float()))  # labels stay exact
            target = (data.landmarks[b].to(device) + 0.5) / f - 0.5  # in WORK pixels
            heat = model.heatmaps(x)
            logp = F.log_softmax(heat.flatten(2) * model.beta, dim=-1)
            gauss = _gaussian_targets(target, WORK, 1.5).flatten(2)
            xy, _ = soft_argmax(heat, model.beta)
            yield -(gauss * logp).sum(-1).mean() + 0.5 * F.smooth_l1_loss(xy, target)

    return run_epochs("cxr_landmarks", model, epochs, steps, run_dir, weights_dir, 3e-3, resume, budget_s)
