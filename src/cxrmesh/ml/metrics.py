"""Evaluation metrics: lung Dice, landmark error in millimetres, retrieval precision/mAP/vote, ROC AUC."""

from __future__ import annotations

import math

import numpy as np
import torch

from cxrmesh.analysis.lung_map import lung_map
from cxrmesh.analysis.quantify import lung_dice
from cxrmesh.contracts.labels import DIAGNOSES


def dice_scores(probs: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Mean of right- and left-lung Dice per image (argmax of the probabilities, no anatomy rules).

    For fitting and comparing the members; what is served is ``served_dice_scores``.
    """
    return lung_dice(probs.argmax(dim=1).numpy(), truth.numpy())


def served_dice_scores(probs: torch.Tensor, images: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Dice of the lung map as served: ``analysis.lung_map`` (argmax plus the anatomy rules)."""
    p, x = probs.float().numpy(), images.float().numpy()
    maps = np.stack([lung_map(p[i], x[i, 0]) for i in range(len(p))])
    return lung_dice(maps, truth.numpy())


def landmark_error_mm(xy: torch.Tensor, truth: torch.Tensor, mm_per_pixel: np.ndarray) -> dict[str, float]:
    """Carina and left-hilum distance to the truth in millimetres (``mm_per_pixel`` per study)."""
    err = (xy - truth).norm(dim=-1).numpy() * mm_per_pixel[:, None]
    return {
        "carina_mean": float(err[:, 0].mean()),
        "left_hilum_mean": float(err[:, 1].mean()),
        "mean": float(err.mean()),
        "p95": float(np.percentile(err, 95)),
    }


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
    votes = np.zeros((len(query), len(DIAGNOSES)))
    for i in range(len(query)):
        for j in order[i, :10]:
            votes[i, g_labels[j]] += max(sims[i, j], 0.0)
    out["vote_accuracy_at_10"] = float((votes.argmax(axis=1) == q_labels).mean())
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged)."""
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
