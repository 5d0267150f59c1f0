"""Training and evaluation of the four models on a corpus manifest (synthetic or a user's own).

Input layout (what ``cxrmesh synth`` writes; a real dataset supplies the same): ``manifest.jsonl``
with per row ``paths.image`` (16-bit PNG, MODEL_SIZE^2 display values after the preprocessing
contract), ``split``, and whichever labels exist: ``paths.lungs`` (lung label map), ``landmarks``
(``carina``/``left_hilum`` ``model`` coordinates), ``diagnosis``, ``clinical``/``demographics`` and
``outcome.intubation_72h``. Rows without a label are skipped by the steps that need it.

Each model trains in its own run directory with a resumable checkpoint after every epoch; final
weights go to ``weights/<model>.pt``; evaluation on the test split goes to ``metrics.json``.

This module only orchestrates; the steps live beside it: ``data`` (loading), ``augment``, ``loop``
(epoch loop, checkpoints), ``trainers/`` (one per model), ``ensemble``, ``metrics``, ``evaluate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cxrmesh.contracts.tensors import SEG_MEMBERS
from cxrmesh.ml.data import load_data
from cxrmesh.ml.ensemble import fit_ensemble
from cxrmesh.ml.evaluate import evaluate
from cxrmesh.ml.loop import resolve_device, seed_everything
from cxrmesh.ml.trainers.embedder import train_embedder
from cxrmesh.ml.trainers.landmarker import train_landmarker
from cxrmesh.ml.trainers.prognosis import train_prognosis
from cxrmesh.ml.trainers.segmenter import train_segmenter
from cxrmesh.ml.weights import load_weights


@dataclass
class TrainConfig:
    corpus: Path
    out: Path = Path("runs")
    weights: Path = Path("weights")
    seed: int = 0
    seg_epochs: int = 5
    seg_limit: int | None = 800  # None = every training image
    seg_seconds: float | None = None  # wall-time budget per segmentation member
    landmark_epochs: int = 8
    embed_epochs: int = 40
    embed_aux_weight: float = 1.0
    embed_batch: int = 30
    resume: bool = True
    only: tuple[str, ...] = ()
    seg_members: tuple[str, ...] = ()  # subset of SEG_MEMBERS to train (empty = all)
    init_weights: Path | None = None  # segmentation members start from these weights when present
    seg_lr: float = 3e-3  # peak of the cosine schedule; ~1e-3 when fine-tuning from init_weights
    precision: str = "auto"  # forward pass of the segmentation members: auto, bf16 or fp32
    device: str = "auto"


def train_all(cfg: TrainConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_data(cfg.corpus)
    # "ensemble" fits the member weights on val (every member keeps a share); check the real-film
    # sides after it (benchmarks/seg_ensemble.py): it optimises in-distribution only
    todo = set(cfg.only) or {"seg", "ensemble", "landmarks", "embedder", "prognosis"}
    if "embedder" in todo:
        seed_everything(cfg.seed + 20)
        train_embedder(
            data,
            cfg.embed_epochs,
            cfg.out,
            cfg.weights,
            cfg.resume,
            cfg.embed_aux_weight,
            device,
            cfg.embed_batch,
        )
    if "landmarks" in todo:
        seed_everything(cfg.seed + 10)
        train_landmarker(data, cfg.landmark_epochs, cfg.out, cfg.weights, cfg.resume, device)
    if "seg" in todo:
        for i, name in enumerate(SEG_MEMBERS):
            if cfg.seg_members and name not in cfg.seg_members:
                continue
            seed_everything(cfg.seed + i)
            train_segmenter(
                name,
                data,
                cfg.seg_epochs,
                cfg.out,
                cfg.weights,
                cfg.resume,
                cfg.seg_limit,
                device,
                cfg.seg_seconds,
                cfg.init_weights,
                cfg.precision,
                cfg.seg_lr,
            )
    if (
        "ensemble" in todo
        and data.lungs is not None
        and all((cfg.weights / f"{m}.pt").exists() for m in SEG_MEMBERS)
    ):
        fit_ensemble(data, cfg.weights, device)
    metrics = evaluate(data, cfg.weights, device)
    if "prognosis" in todo and (cfg.weights / "cxr_embedder.pt").exists():
        _, prog = train_prognosis(data, load_weights("cxr_embedder", cfg.weights, device), cfg.weights)
        metrics["prognosis"] = prog
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics
