"""The epoch loop every trainer shares: seeding, device and precision choice, batching, checkpoints.

A trainer supplies the model and a ``steps(epoch)`` generator of losses; ``run_epochs`` does the
optimiser, the cosine schedule, the wall-time budget, the resumable checkpoint after every epoch and
the final weights file.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)
CPU = torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and every GPU) alike."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_epochs(
    name: str,
    model: torch.nn.Module,
    epochs: int,
    steps: Callable[[int], Iterable[float]],
    run_dir: Path,
    weights_dir: Path,
    lr: float,
    resume: bool,
    budget_s: float | None = None,
) -> torch.nn.Module:
    """Epoch loop with an AdamW + cosine schedule and a checkpoint after every epoch.

    ``budget_s`` caps the wall time: after each epoch the epoch count is set to what still fits at
    that epoch's pace (never more than asked) and the cosine schedule is re-aimed at it, so a
    time-boxed run still anneals. A slow first epoch (start-up, a shared GPU) lowers the count only
    until faster epochs show that more fit.
    """
    run = run_dir / name
    run.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    start = 0
    ckpt = run / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        start = state["epoch"] + 1
    history = []
    asked = epochs
    began = time.monotonic()
    epoch = start
    while epoch < epochs:  # (not a range: a time budget may lower ``epochs`` on the way)
        epoch_began = time.monotonic()
        model.train()
        losses = []
        bar = tqdm(steps(epoch), desc=f"{name} {epoch + 1}/{epochs}", unit="batch", disable=None, leave=False)
        for loss in bar:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if budget_s:
            # judged on the latest epoch, not the first: that one also pays for CUDA/cuDNN start-up
            now = time.monotonic()
            left = budget_s - (now - began)
            fits = min(asked, epoch + 1 + max(0, int(left / max(now - epoch_began, 1e-6))))
            if fits != epochs:
                log.info("%s: %d epochs fit in %.0f s (of %d asked)", name, fits, budget_s, asked)
                epochs = fits
                sched.T_max = max(1, epochs)
        sched.step()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan})
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
            },
            ckpt,
        )
        with open(run / "history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(history[-1]) + "\n")
        epoch += 1
    log.info("%s: epochs %d-%d in %.0f s", name, start + 1, epochs, time.monotonic() - began)
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights_dir / f"{name}.pt")
    model.eval()
    return model


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` = the GPU when PyTorch sees one; weights are identical in layout either way."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU")
        torch.backends.cudnn.benchmark = True
    return torch.device(name)


def batches(idx: np.ndarray, batch: int, shuffle: bool = True) -> Iterable[np.ndarray]:
    """Shuffled training batches; a last batch of one is dropped (batch norm cannot train on it)."""
    order = np.random.permutation(idx) if shuffle else idx
    for i in range(0, len(order), batch):
        if len(order) - i > 1 or i == 0:
            yield order[i : i + batch]


PRECISIONS = ("auto", "bf16", "fp32")


def autocast(device: torch.device, precision: str) -> Any:
    """Mixed precision for the forward pass: ``bf16`` is ~1.3x faster again on top of channels-last
    where oneDNN has bf16 kernels (AVX512-BF16/AMX) and is the usual choice on recent GPUs; ``auto``
    picks it where supported; ``fp32`` turns it off. Losses are computed in float32 either way."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision == "auto":
        cuda = device.type == "cuda" and torch.cuda.is_bf16_supported()
        cpu = device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        precision = "bf16" if cuda or cpu else "fp32"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
