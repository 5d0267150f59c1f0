"""Fitting of the prognosis head: logistic regression on frozen embeddings, regions and clinical data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrmesh.analysis.quantify import region_table, region_vector
from cxrmesh.contracts.corpus import manifest_clinical
from cxrmesh.contracts.tensors import CLINICAL_FEATURES
from cxrmesh.ml.data import Data, to_input_frame
from cxrmesh.ml.metrics import auc
from cxrmesh.ml.nets import Embedder, PrognosisHead
from cxrmesh.ml.weights import predict


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
