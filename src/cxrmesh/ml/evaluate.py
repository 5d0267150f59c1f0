"""Test-split metrics of every trained model found in a weights directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrmesh.contracts.tensors import SEG_MEMBERS
from cxrmesh.ml.data import Data, diagnosis_classes, mm_per_input_pixel
from cxrmesh.ml.ensemble import ensemble_weights
from cxrmesh.ml.loop import CPU
from cxrmesh.ml.metrics import dice_scores, landmark_error_mm, retrieval_metrics, served_dice_scores
from cxrmesh.ml.weights import load_weights, predict


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
        served = weighted / sum(weights.values())
        metrics["dice_ensemble"] = float(served_dice_scores(served, data.images[te], truth).mean())
        metrics["dice_ensemble_argmax"] = float(dice_scores(served, truth).mean())  # before the anatomy rules
        metrics["dice_ensemble_unweighted"] = float(dice_scores(plain / len(SEG_MEMBERS), truth).mean())
    if data.landmarks is not None and (weights_dir / "cxr_landmarks.pt").exists():
        xy, _ = predict(load_weights("cxr_landmarks", weights_dir, device), data.images[te])
        mm = np.array([mm_per_input_pixel(data.rows[i]) for i in te])
        metrics["landmark_error_mm"] = landmark_error_mm(xy, data.landmarks[te], mm)
    if (weights_dir / "cxr_embedder.pt").exists():
        emb_model = load_weights("cxr_embedder", weights_dir, device)
        g = predict(emb_model, data.images[tr])[0].numpy()
        q = predict(emb_model, data.images[te])[0].numpy()
        labels = diagnosis_classes(data.rows)
        metrics["retrieval"] = retrieval_metrics(q, labels[te], g, labels[tr])
    return metrics
