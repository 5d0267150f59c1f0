"""Trained weights in and predictions out: load a model by its served name, run it in batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cxrmesh.contracts.tensors import SEG_MEMBERS
from cxrmesh.ml.loop import CPU
from cxrmesh.ml.nets import Embedder, Landmarker, PrognosisHead, Segmenter


def load_weights(name: str, weights_dir: Path, device: torch.device = CPU) -> torch.nn.Module:
    model: torch.nn.Module
    if name in SEG_MEMBERS:
        model = Segmenter(name)
    elif name == "cxr_landmarks":
        model = Landmarker()
    elif name == "cxr_embedder":
        model = Embedder()
    elif name == "prognosis_head":
        model = PrognosisHead()
    else:
        raise ValueError(f"unknown model {name!r}")
    state = torch.load(weights_dir / f"{name}.pt", map_location="cpu", weights_only=True)
    if isinstance(model, Segmenter):
        model.load_earlier_weights(state)  # (also reads members trained before the coordinate channel)
    else:
        model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 32) -> Any:
    """Run ``model`` on the device its weights live on; results come back on the CPU."""
    dev = next(model.parameters()).device
    outs = [model(images[i : i + batch].to(dev).float()) for i in range(0, len(images), batch)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts).cpu() for parts in zip(*outs, strict=True))
    return torch.cat(outs).cpu()
