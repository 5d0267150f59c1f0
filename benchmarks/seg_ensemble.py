"""Does the segmentation ensemble beat every member? Members, equal and fitted means, side check.

Issue 3 asks for an ensemble Dice above every member's. This runs the PyTorch members of a weights
directory on the validation and test splits and prints, as JSON:

- each member's mean Dice (right and left lung, argmax) per split;
- the equal-weight mean (what Triton serves without ``member_weights``) and the mean with weights
  fitted on validation as ``cxrmesh train`` fits them (``train.select_ensemble_weights``, every
  member kept), each against the best member of that split: the mean difference, its paired
  bootstrap 95 % interval over studies and the share of studies on which the ensemble is higher;
- other ways of combining the same probabilities, fitted on validation only (``--rules``):
  per-member temperature before the mean, the mean of logits, confidence-weighted mean;
- on the real radiograph (``RG1_UNCR`` from pydicom-data) the share of lung pixels a member or an
  ensemble labels with the lung of the other side of the carina found by the landmark model of the
  same directory (``regions.wrong_side_share``; 0 = sides right).

Slow on a CPU (~8 min for 5 members on 2 cores; ``--limit`` evaluates a prefix of each split):

    python benchmarks/seg_ensemble.py --weights weights --corpus data/corpus-2000 [--rules]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cxrmesh.analysis.pixels import model_input
from cxrmesh.analysis.regions import wrong_side_share
from cxrmesh.contracts.tensors import LANDMARKS, SEG_MEMBERS
from cxrmesh.ml.data import load_data
from cxrmesh.ml.ensemble import ensemble_mean, select_ensemble_weights
from cxrmesh.ml.metrics import dice_scores
from cxrmesh.ml.weights import load_weights, predict
from cxrmesh.synth.contact import real_radiograph

Probs = dict[str, torch.Tensor]


def against_best(ens: np.ndarray, members: dict[str, np.ndarray], seed: int = 0) -> dict[str, object]:
    """Ensemble Dice per study against the best member's: mean difference, bootstrap CI, share higher."""
    best = max(members, key=lambda m: members[m].mean())
    diff = ens - members[best]
    rng = np.random.default_rng(seed)
    boots = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
    return {
        "dice": round(float(ens.mean()), 5),
        "best_member": best,
        "minus_best": round(float(diff.mean()), 5),
        "ci95": [round(float(np.percentile(boots, q)), 5) for q in (2.5, 97.5)],
        "higher_share": round(float((diff > 0).mean()), 3),
    }


def temperatures(logp: Probs, truth: torch.Tensor) -> dict[str, float]:
    """Per-member temperature minimising the validation cross-entropy (a grid; the usual calibration)."""
    out = {}
    for m, lp in logp.items():
        nll = {
            t: float(torch.nn.functional.cross_entropy(lp[:, :, ::2, ::2] / t, truth[:, ::2, ::2].long()))
            for t in (0.5, 0.7, 1.0, 1.4, 2.0, 3.0)
        }
        out[m] = min(nll, key=nll.__getitem__)
    return out


def rules(probs: dict[str, Probs], truth: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Other combinations of the same member probabilities, their Dice per split (fitted on val)."""
    logp = {s: {m: p.float().clamp_min(1e-6).log() for m, p in probs[s].items()} for s in probs}
    temp = temperatures(logp["val"], truth["val"])
    out: dict[str, dict[str, float]] = {"temperatures": temp}
    for s in probs:
        calibrated = sum(torch.softmax(lp / temp[m], 1) for m, lp in logp[s].items())
        logit_mean = sum(logp[s].values())
        conf = [p.float().amax(1, keepdim=True) ** 8 for p in probs[s].values()]
        weighted = sum(c * p.float() for c, p in zip(conf, probs[s].values(), strict=True)) / sum(conf)
        combined = {"calibrated_mean": calibrated, "logit_mean": logit_mean, "confidence_weighted": weighted}
        out[s] = {name: round(float(dice_scores(x, truth[s]).mean()), 5) for name, x in combined.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=Path("weights"))
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus-2000"))
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N studies of each split")
    ap.add_argument("--rules", action="store_true", help="also try other combination rules")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(args.corpus)
    if data.lungs is None:
        ap.error(f"{args.corpus} has no lung masks (manifest paths.lungs): nothing to score against")
    nets = {m: load_weights(m, args.weights) for m in SEG_MEMBERS}
    probs: dict[str, Probs] = {}
    truth: dict[str, torch.Tensor] = {}
    dice: dict[str, dict[str, np.ndarray]] = {}
    for split in ("val", "test"):
        idx = data.index(split)[: args.limit]
        truth[split] = data.lungs[idx]
        probs[split] = {m: predict(net, data.images[idx]).half() for m, net in nets.items()}
        dice[split] = {m: dice_scores(p.float(), truth[split]) for m, p in probs[split].items()}
        print(f"{split}: {len(idx)} studies", file=sys.stderr, flush=True)

    real = torch.from_numpy(model_input(real_radiograph()[0])).float()
    landmarks_xy, _ = predict(load_weights("cxr_landmarks", args.weights), real)
    carina_x = float(landmarks_xy[0, LANDMARKS.index("carina"), 0])
    real_probs = {m: predict(net, real) for m, net in nets.items()}

    def side(p: torch.Tensor) -> float:
        return round(wrong_side_share(p.argmax(1)[0].numpy(), carina_x), 3)

    report: dict[str, object] = {
        "weights": str(args.weights),
        "members": {
            m: {s: round(float(dice[s][m].mean()), 5) for s in dice}
            | {"real_wrong_side": side(real_probs[m])}
            for m in SEG_MEMBERS
        },
    }
    # fitted as `cxrmesh train` fits them (every member kept)
    fitted = select_ensemble_weights(probs["val"], truth["val"], keep_all=True)
    for label, w in (("equal_weights", dict.fromkeys(SEG_MEMBERS, 1.0)), ("val_fitted_weights", fitted)):
        report[label] = {"weights": w, "real_wrong_side": side(ensemble_mean(real_probs, w))} | {
            s: against_best(dice_scores(ensemble_mean(probs[s], w), truth[s]), dice[s]) for s in probs
        }
    if args.rules:
        report["rules"] = rules(probs, truth)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
