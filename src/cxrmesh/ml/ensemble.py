"""The segmentation ensemble's member weights: selected on the validation split, stored beside the weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from cxrmesh.contracts.tensors import ENSEMBLE_WEIGHTS_FILE, SEG_MEMBERS
from cxrmesh.ml.data import Data
from cxrmesh.ml.loop import CPU
from cxrmesh.ml.metrics import dice_scores
from cxrmesh.ml.weights import load_weights, predict

log = logging.getLogger(__name__)


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
