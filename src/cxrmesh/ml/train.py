"""Training and evaluation of the four models on a corpus manifest (synthetic or a user's own).

Input layout (what ``cxrmesh synth`` writes; a real dataset supplies the same): ``manifest.jsonl``
with per row ``paths.image`` (16-bit PNG, MODEL_SIZE^2 display values after the preprocessing
contract), ``split``, and whichever labels exist: ``paths.lungs`` (lung label map), ``landmarks``
(``carina``/``left_hilum`` ``model`` coordinates), ``diagnosis``, ``clinical``/``demographics`` and
``outcome.intubation_72h``. Rows without a label are skipped by the steps that need it.

Each model trains in its own run directory with a resumable checkpoint after every epoch; final
weights go to ``weights/<model>.pt``; evaluation on the test split goes to ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from cxrmesh.analysis.pixels import input_labels, model_input
from cxrmesh.analysis.quantify import lung_dice, region_table, region_vector
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import (
    CLINICAL_FEATURES,
    EMBED_DIM,
    ENSEMBLE_WEIGHTS_FILE,
    MODEL_INPUT,
    SEG_MEMBERS,
)
from cxrmesh.ml.nets import SEG_WORK, WORK, Embedder, Landmarker, PrognosisHead, Segmenter, soft_argmax
from cxrmesh.synth.corpus import manifest_clinical, read_manifest, read_training_copy

log = logging.getLogger(__name__)
CPU = torch.device("cpu")
DIAGNOSIS_INDEX = {"normal": 0, "covid19": 1, "other_pneumonia": 2}


@dataclass
class Data:
    """A manifest loaded into memory at MODEL_INPUT resolution (training never decodes DICOM)."""

    rows: list[dict[str, Any]]
    images: torch.Tensor  # (N, 1, MODEL_INPUT, MODEL_INPUT) float16, display values
    lungs: torch.Tensor | None  # (N, MODEL_INPUT, MODEL_INPUT) uint8
    landmarks: torch.Tensor | None  # (N, 2, 2) in MODEL_INPUT pixels
    split: np.ndarray

    def index(self, split: str) -> np.ndarray:
        return np.nonzero(self.split == split)[0]


def to_input_frame(xy_model: Iterable[float]) -> list[float]:
    """MODEL_SIZE-frame coordinates -> MODEL_INPUT-frame coordinates (pixel centres at integers)."""
    f = MODEL_SIZE / MODEL_INPUT
    return [(v + 0.5) / f - 0.5 for v in xy_model]


def load_data(corpus: Path, limit: int | None = None) -> Data:
    rows = read_manifest(corpus)[:limit] if limit else read_manifest(corpus)
    n = len(rows)
    images = torch.empty((n, 1, MODEL_INPUT, MODEL_INPUT), dtype=torch.float16)
    has_lungs = all(r.get("paths", {}).get("lungs") for r in rows)
    lungs = torch.empty((n, MODEL_INPUT, MODEL_INPUT), dtype=torch.uint8) if has_lungs else None
    has_lm = all("landmarks" in r for r in rows)
    landmarks = torch.empty((n, 2, 2), dtype=torch.float32) if has_lm else None

    def load(i: int) -> None:
        row = rows[i]
        images[i, 0] = torch.from_numpy(model_input(read_training_copy(corpus / row["paths"]["image"]))[0, 0])
        if lungs is not None:
            lungs[i] = torch.from_numpy(input_labels(np.asarray(Image.open(corpus / row["paths"]["lungs"]))))
        if landmarks is not None:
            for j, key in enumerate(("carina", "left_hilum")):
                landmarks[i, j] = torch.tensor(to_input_frame(row["landmarks"][key]["model"]))

    # PNG decoding releases the GIL: threads fill the preallocated tensors in place
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1))) as pool:
        for _ in tqdm(pool.map(load, range(n)), total=n, desc="loading", unit="img", disable=None):
            pass
    return Data(rows, images, lungs, landmarks, np.array([r.get("split", "train") for r in rows]))


# ----------------------------------------------------------------------------- checkpointing


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run(
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


def _batches(idx: np.ndarray, batch: int, shuffle: bool = True) -> Iterable[np.ndarray]:
    """Shuffled training batches; a last batch of one is dropped (batch norm cannot train on it)."""
    order = np.random.permutation(idx) if shuffle else idx
    for i in range(0, len(order), batch):
        if len(order) - i > 1 or i == 0:
            yield order[i : i + batch]


def _augment(images: torch.Tensor) -> torch.Tensor:
    """Exposure and contrast jitter: the sites already vary geometry; keep labels exact."""
    n, dev = images.shape[0], images.device
    gain = 1.0 + 0.12 * (torch.rand(n, 1, 1, 1, device=dev) - 0.5)
    gamma = torch.exp(0.2 * (torch.rand(n, 1, 1, 1, device=dev) - 0.5))
    return (images.clamp(0, 1) ** gamma * gain).clamp(0, 1)


def _affine(
    n: int, dev: torch.device, degrees: float, scale: tuple[float, float], shift: float
) -> torch.Tensor:
    """Random affine ``theta`` per image for ``affine_grid``: rotation, zoom (>1 = in) and shift."""
    ang = (torch.rand(n, device=dev) - 0.5) * math.radians(degrees)
    zoom = scale[0] + torch.rand(n, device=dev) * (scale[1] - scale[0])
    move = (torch.rand(n, 2, device=dev) - 0.5) * shift
    cos, sin = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    rows = [torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)]
    return torch.stack(rows, 1)


def _resample(images: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _warp(images: torch.Tensor) -> torch.Tensor:
    """Small random affine (scale, rotation, shift) for label-free training (the embedder).

    Positioning varies between acquisitions; without this the embedder memorises where each
    training image sits in the frame instead of what its lungs look like.
    """
    return _resample(images, _affine(images.shape[0], images.device, 10, (0.92, 1.08), 0.1))


_SWAP_SIDES = torch.tensor([0, 2, 1])  # background, right, left -> background, left, right


def _augment_seg(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint geometric and stronger exposure jitter for the segmentation members.

    Synthetic films show the whole torso on black; real ones are often collimated tighter (the
    body fills the frame) and washed out (lifted blacks). Labels move with the image (nearest
    neighbour); a third of the batch stays unwarped so the synthetic geometry is kept.

    Half the films are mirrored with the labels re-assigned by position: in a film displayed in
    standard orientation the patient's right lung is the one on the image's left, whatever its
    texture or the heart's shadow. Members trained without this learnt side from such cues, which
    did not carry over to real film (the real test radiograph came out with swapped sides, a coin
    toss from one training run to the next). With it and the coordinate channel the members get
    (``nets.Segmenter``), position is the one cue that holds; on the real radiograph it lowered the
    wrong-side share for four members of five (docs/models.md).
    """
    n, dev = images.shape[0], images.device
    theta = _affine(n, dev, 12, (0.95, 1.35), 0.12)
    keep = torch.rand(n, device=dev) < 1 / 3
    theta[keep] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=dev)
    x = _resample(_augment(images), theta)
    y = _resample(labels[:, None].float(), theta, mode="nearest")[:, 0].long()
    mirror = torch.rand(n, device=dev) < 0.5
    x[mirror] = x[mirror].flip(-1)
    y[mirror] = _SWAP_SIDES.to(dev)[y[mirror].flip(-1)]
    lift = torch.rand(n, 1, 1, 1, device=dev) * 0.4 * (torch.rand(n, 1, 1, 1, device=dev) < 0.5)
    gamma = torch.exp(0.8 * (torch.rand(n, 1, 1, 1, device=dev) - 0.5))
    noise = torch.randn_like(x) * 0.02 * torch.rand(n, 1, 1, 1, device=dev)
    return ((lift + (1 - lift) * x.clamp(0, 1) ** gamma) + noise).clamp(0, 1), y


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


# ----------------------------------------------------------------------------- segmentation


def train_segmenter(
    name: str,
    data: Data,
    epochs: int,
    run_dir: Path,
    weights_dir: Path,
    resume: bool,
    limit: int | None,
    device: torch.device = CPU,
    budget_s: float | None = None,
    init: Path | None = None,
    precision: str = "auto",
    lr: float = 3e-3,
) -> Segmenter:
    """One ensemble member; ``init`` = a weights directory to fine-tune from (own data, new resolution)."""
    from segmentation_models_pytorch.losses import DiceLoss

    assert data.lungs is not None, "segmentation needs lung masks (paths.lungs)"
    if init is not None and (init / f"{name}.pt").is_file():
        model = load_weights(name, init)
        log.info("%s: fine-tuning from %s", name, init / f"{name}.pt")
    else:
        model = Segmenter(name)
    # channels-last: ~1.6x faster convolutions on CPU (oneDNN) and on tensor cores, same numbers
    model = model.to(device, memory_format=torch.channels_last)
    dice = DiceLoss(mode="multiclass")
    train_idx = data.index("train")[:limit]
    f = MODEL_INPUT // SEG_WORK

    def steps(epoch: int) -> Iterable[torch.Tensor]:
        for b in _batches(train_idx, 16):
            x, y = _augment_seg(data.images[b].to(device).float(), data.lungs[b].to(device))
            y = y[:, f // 2 :: f, f // 2 :: f]
            with autocast(device, precision):
                logits = model.logits(x.contiguous(memory_format=torch.channels_last))
            logits = logits.float()
            yield F.cross_entropy(logits, y) + dice(logits, y)

    model = _run(name, model, epochs, steps, run_dir, weights_dir, lr, resume, budget_s)
    return model.to(memory_format=torch.contiguous_format)


def dice_scores(probs: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Mean of right- and left-lung Dice per image (argmax of the probabilities)."""
    return lung_dice(probs.argmax(dim=1).numpy(), truth.numpy())


def select_ensemble_weights(
    member_probs: dict[str, torch.Tensor], truth: torch.Tensor, rounds: int = 20, keep_all: bool = False
) -> dict[str, float]:
    """Member weights for the ensemble mean by greedy forward selection with replacement.

    Caruana et al. (ICML 2004): start from the best member, then ``rounds`` times add (again, if it
    helps most) the member whose inclusion gives the highest mean Dice on ``truth``; a member's
    weight is the share of picks it got. Fit on the validation split, never on test. Plain
    averaging weighs a weak member like a strong one; this keeps every member that helps.
    ``keep_all`` starts from one pick of every member instead (Caruana's initialisation with the
    whole library): the served ensemble then averages all five, none computed only to be dropped.
    """
    names = list(member_probs)
    counts = dict.fromkeys(names, int(keep_all))
    total = sum(counts[m] * member_probs[m].float() for m in names)  # the picks so far, summed
    for _ in range(rounds):
        n = sum(counts.values()) + 1
        scores = {m: float(dice_scores((total + member_probs[m].float()) / n, truth).mean()) for m in names}
        best = max(names, key=lambda m: (scores[m], -names.index(m)))
        counts[best] += 1
        total += member_probs[best].float()
    picks = sum(counts.values())
    return {m: counts[m] / picks for m in names}


def ensemble_mean(member_probs: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """The members' probabilities averaged with ``weights`` (normalised; zero-weight members skipped)."""
    used = {m: w for m, w in weights.items() if w}
    return sum(w * member_probs[m].float() for m, w in used.items()) / sum(used.values())


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 32) -> Any:
    """Run ``model`` on the device its weights live on; results come back on the CPU."""
    dev = next(model.parameters()).device
    outs = [model(images[i : i + batch].to(dev).float()) for i in range(0, len(images), batch)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts).cpu() for parts in zip(*outs, strict=True))
    return torch.cat(outs).cpu()


# ----------------------------------------------------------------------------- landmarks


def _gaussian_targets(xy: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    grid = torch.arange(size, dtype=torch.float32, device=xy.device)
    gx = torch.exp(-((grid[None, None, None, :] - xy[..., 0, None, None]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((grid[None, None, :, None] - xy[..., 1, None, None]) ** 2) / (2 * sigma**2))
    g = gx * gy
    return g / g.sum(dim=(2, 3), keepdim=True).clamp(min=1e-8)


def train_landmarker(
    data: Data, epochs: int, run_dir: Path, weights_dir: Path, resume: bool, device: torch.device = CPU
) -> Landmarker:
    assert data.landmarks is not None, "landmark training needs landmarks"
    model = Landmarker().to(device)
    train_idx = data.index("train")
    f = MODEL_INPUT / WORK

    def steps(epoch: int) -> Iterable[torch.Tensor]:
        for b in _batches(train_idx, 16):
            x = _augment(data.images[b].to(device).float())
            target = (data.landmarks[b].to(device) + 0.5) / f - 0.5  # in WORK pixels
            heat = model.heatmaps(x)
            logp = F.log_softmax(heat.flatten(2) * model.beta, dim=-1)
            gauss = _gaussian_targets(target, WORK, 1.5).flatten(2)
            xy, _ = soft_argmax(heat, model.beta)
            yield -(gauss * logp).sum(-1).mean() + 0.5 * F.smooth_l1_loss(xy, target)

    return _run("cxr_landmarks", model, epochs, steps, run_dir, weights_dir, 3e-3, resume)


def mm_per_input_pixel(row: dict[str, Any]) -> float:
    """Millimetres per MODEL_INPUT pixel for a study (from its spacing and letterbox scale)."""
    return row["pixel_spacing_mm"] / row["letterbox"]["scale"] * (MODEL_SIZE / MODEL_INPUT)


# ----------------------------------------------------------------------------- embedder


def train_embedder(
    data: Data,
    epochs: int,
    run_dir: Path,
    weights_dir: Path,
    resume: bool,
    aux_weight: float = 0.0,
    device: torch.device = CPU,
    batch: int = 30,
) -> Embedder:
    """Multi-similarity loss with its hard-pair miner over class-balanced batches.

    ``aux_weight`` > 0 adds a cross-entropy term from a linear probe on the embedding (the probe is
    discarded after training); 0 trains with the metric loss alone, as the retrieval paper does.
    """
    from pytorch_metric_learning import losses, miners, samplers

    model = Embedder().to(device)
    probe = torch.nn.Linear(EMBED_DIM, len(DIAGNOSIS_INDEX)).to(device)
    train_idx = data.index("train")
    labels = np.array([DIAGNOSIS_INDEX[data.rows[i]["diagnosis"]] for i in train_idx])
    loss_fn = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    batch -= batch % 3  # m per class must divide the batch
    sampler = samplers.MPerClassSampler(
        labels, m=batch // 3, batch_size=batch, length_before_new_iter=max(len(labels), batch)
    )

    def steps(epoch: int) -> Iterable[torch.Tensor]:
        order = np.array(list(iter(sampler)))
        for i in range(0, len(order) - batch + 1, batch):
            b = train_idx[order[i : i + batch]]
            y = torch.as_tensor(labels[order[i : i + batch]], device=device)
            emb, _ = model(_warp(_augment(data.images[b].to(device).float())))
            loss = loss_fn(emb, y, miner(emb, y))
            if aux_weight:
                loss = loss + aux_weight * F.cross_entropy(probe(emb) * 10.0, y)
            yield loss

    trained = torch.nn.ModuleDict({"model": model, "probe": probe})
    _run("cxr_embedder", trained, epochs, steps, run_dir, weights_dir, 1e-3, resume)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, weights_dir / "cxr_embedder.pt")
    return model.eval()


def retrieval_metrics(
    query: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray, g_labels: np.ndarray
) -> dict[str, float]:
    """Precision@1/5/10, mAP@R and similarity-weighted top-10 vote accuracy (cosine similarity)."""
    sims = query @ gallery.T
    order = np.argsort(-sims, axis=1)
    hits = g_labels[order] == q_labels[:, None]
    out = {f"precision_at_{k}": float(hits[:, :k].mean()) for k in (1, 5, 10)}
    aps = []
    for i in range(len(query)):
        r = int((g_labels == q_labels[i]).sum())
        rel = hits[i, :r]
        aps.append(float((np.cumsum(rel) / np.arange(1, r + 1) * rel).sum() / r) if r else 0.0)
    out["map_at_r"] = float(np.mean(aps))
    votes = np.zeros((len(query), 3))
    for i in range(len(query)):
        for j in order[i, :10]:
            votes[i, g_labels[j]] += max(sims[i, j], 0.0)
    out["vote_accuracy_at_10"] = float((votes.argmax(axis=1) == q_labels).mean())
    return out


# ----------------------------------------------------------------------------- prognosis


def clinical_vector(row: dict[str, Any]) -> np.ndarray | None:
    """Raw clinical features in ``spec.CLINICAL_FEATURES`` order, or None without clinical data."""
    values = manifest_clinical(row)
    if values is None:
        return None
    return np.array([values[k] for k in CLINICAL_FEATURES], dtype=np.float32)


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float = 1e-2
) -> tuple[np.ndarray, np.ndarray, torch.nn.Linear]:
    """Standardise and fit an L2-regularised logistic regression with LBFGS."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy((x - mean) / std).float()
    yt = torch.from_numpy(y).float()[:, None]
    lin = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(lin(xt), yt) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, lin


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged)."""
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def prognosis_features(
    data: Data, embedder: Embedder
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frozen embeddings, region features (from the truth maps), clinical vectors, labels."""
    emb = predict(embedder, data.images)[0].numpy()
    regions, clinical, labels, keep = [], [], [], []
    for i, row in enumerate(data.rows):
        clin = clinical_vector(row)
        if clin is None or "outcome" not in row or data.lungs is None:
            continue
        img = data.images[i, 0].float().numpy()
        hilum = to_input_frame(row["landmarks"]["left_hilum"]["model"])
        regions.append(region_vector(region_table(img, data.lungs[i].numpy(), hilum)))
        clinical.append(clin)
        labels.append(row["outcome"]["intubation_72h"])
        keep.append(i)
    keep_idx = np.array(keep)
    return emb[keep_idx], np.stack(regions), np.stack(clinical), np.array(labels), keep_idx


def train_prognosis(
    data: Data, embedder: Embedder, weights_dir: Path
) -> tuple[PrognosisHead, dict[str, float]]:
    """Fit the head on frozen features; report test AUC for clinical-only, image-only and both."""
    emb, reg, clin, y, keep = prognosis_features(data, embedder)
    split = data.split[keep]
    tr, te = split == "train", split == "test"
    sets = {
        "clinical_only": clin,
        "image_only": np.concatenate([emb, reg], axis=1),
        "image_and_clinical": np.concatenate([emb, reg, clin], axis=1),
    }
    metrics = {}
    fitted = {}
    for name, x in sets.items():
        mean, std, lin = _fit_logistic(x[tr], y[tr])
        with torch.no_grad():
            scores = lin(torch.from_numpy((x[te] - mean) / std).float()).numpy().ravel()
        metrics[f"auc_{name}"] = auc(scores, y[te])
        fitted[name] = (mean, std, lin)
    metrics["test_positives"] = int(y[te].sum())
    metrics["test_n"] = int(te.sum())
    mean, std, lin = fitted["image_and_clinical"]
    head = PrognosisHead()
    with torch.no_grad():
        head.mean.copy_(torch.from_numpy(mean))
        head.std.copy_(torch.from_numpy(std))
        head.linear.weight.copy_(lin.weight)
        head.linear.bias.copy_(lin.bias)
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), weights_dir / "prognosis_head.pt")
    return head.eval(), metrics


# ----------------------------------------------------------------------------- orchestration


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


def fit_ensemble(data: Data, weights_dir: Path, device: torch.device = CPU) -> dict[str, float]:
    """Fit the members' weights on the validation split and write them beside the weights."""
    assert data.lungs is not None, "fitting the ensemble needs lung masks (paths.lungs)"
    va = data.index("val")
    probs = {m: predict(load_weights(m, weights_dir, device), data.images[va]).half() for m in SEG_MEMBERS}
    weights = select_ensemble_weights(probs, data.lungs[va], keep_all=True)
    mean = ensemble_mean(probs, weights)
    record = {
        "weights": weights,
        "fitted_on": f"val split, {len(va)} studies",
        "method": "greedy forward selection with replacement (Caruana et al. 2004), "
        "from one pick of every member, 20 rounds",
        "val_dice": {m: float(dice_scores(p.float(), data.lungs[va]).mean()) for m, p in probs.items()},
        "val_dice_ensemble": float(dice_scores(mean, data.lungs[va]).mean()),
    }
    (weights_dir / ENSEMBLE_WEIGHTS_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    log.info("ensemble weights %s (val Dice %.4f)", weights, record["val_dice_ensemble"])
    return weights


def ensemble_weights(weights_dir: Path) -> dict[str, float]:
    """The fitted member weights, or equal weights when none were fitted."""
    path = weights_dir / ENSEMBLE_WEIGHTS_FILE
    if path.is_file():
        return json.loads(path.read_text())["weights"]
    return dict.fromkeys(SEG_MEMBERS, 1.0 / len(SEG_MEMBERS))


def evaluate(data: Data, weights_dir: Path, device: torch.device = CPU) -> dict[str, Any]:
    """Test-split metrics of every model present in ``weights_dir``."""
    te = data.index("test")
    tr = data.index("train")
    metrics: dict[str, Any] = {"test_studies": len(te)}
    truth = data.lungs[te] if data.lungs is not None else None
    if truth is not None and all((weights_dir / f"{m}.pt").exists() for m in SEG_MEMBERS):
        weights = ensemble_weights(weights_dir)
        weighted, plain = torch.zeros(()), torch.zeros(())  # running sums (broadcast on first add)
        members = {}
        for name in SEG_MEMBERS:
            probs = predict(load_weights(name, weights_dir, device), data.images[te])
            members[name] = float(dice_scores(probs, truth).mean())
            weighted = weighted + weights[name] * probs
            plain = plain + probs
        metrics["dice_members"] = members
        metrics["ensemble_weights"] = weights
        metrics["dice_ensemble"] = float(dice_scores(weighted / sum(weights.values()), truth).mean())
        metrics["dice_ensemble_unweighted"] = float(dice_scores(plain / len(SEG_MEMBERS), truth).mean())
    if data.landmarks is not None and (weights_dir / "cxr_landmarks.pt").exists():
        xy, _ = predict(load_weights("cxr_landmarks", weights_dir, device), data.images[te])
        err_px = (xy - data.landmarks[te]).norm(dim=-1).numpy()
        mm = np.array([mm_per_input_pixel(data.rows[i]) for i in te])[:, None]
        err = err_px * mm
        metrics["landmark_error_mm"] = {
            "carina_mean": float(err[:, 0].mean()),
            "left_hilum_mean": float(err[:, 1].mean()),
            "mean": float(err.mean()),
            "p95": float(np.percentile(err, 95)),
        }
    if (weights_dir / "cxr_embedder.pt").exists():
        emb_model = load_weights("cxr_embedder", weights_dir, device)
        g = predict(emb_model, data.images[tr])[0].numpy()
        q = predict(emb_model, data.images[te])[0].numpy()
        labels = np.array([DIAGNOSIS_INDEX[r["diagnosis"]] for r in data.rows])
        metrics["retrieval"] = retrieval_metrics(q, labels[te], g, labels[tr])
    return metrics


def train_all(cfg: TrainConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    _seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_data(cfg.corpus)
    # "ensemble" fits the member weights on val (every member keeps a share); check the real-film
    # sides after it (benchmarks/seg_ensemble.py): it optimises in-distribution only
    todo = set(cfg.only) or {"seg", "ensemble", "landmarks", "embedder", "prognosis"}
    if "embedder" in todo:
        _seed(cfg.seed + 20)
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
        _seed(cfg.seed + 10)
        train_landmarker(data, cfg.landmark_epochs, cfg.out, cfg.weights, cfg.resume, device)
    if "seg" in todo:
        for i, name in enumerate(SEG_MEMBERS):
            if cfg.seg_members and name not in cfg.seg_members:
                continue
            _seed(cfg.seed + i)
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
