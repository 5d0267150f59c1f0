"""Fit the constants of ``cxrmesh.analysis.landmarks``: the lung-map estimate and the confidence calibration.

1. The estimate's fractions (carina between the medial lung borders and down from the apices; left
   hilum out from the left lung's medial border and down from its apex): medians over the training
   truth maps; its error on the test truth maps (mean mm, share within 10 mm).
2. The confidence: the detector (``cxr_landmarks`` ONNX of ``--repo``) on validation films, clean,
   with the training artefacts, and degraded past what it was trained on (inverted, heavy noise,
   extreme gamma, blocks over the chest) so that it fails often enough to fit; a logistic fit of
   "within 10 mm" on ln(detector score). Prints A and B, and the reliability table (predicted vs
   observed rate in score bins) of the fit.

    python benchmarks/landmark_calibration.py --repo model_repository --corpus data/corpus-2000
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize

from cxrmesh.analysis.landmarks import estimate_landmarks, lung_frame
from cxrmesh.contracts.tensors import LANDMARKER
from cxrmesh.ml.artefacts import real_world
from cxrmesh.ml.data import load_data, mm_per_input_pixel
from cxrmesh.ml.repository import onnx_path

WITHIN_MM = 10.0


def fractions(lungs: np.ndarray, lm: np.ndarray) -> list[float] | None:
    """Where the true landmarks sit in the lung map's spans (``landmarks.lung_frame``)."""
    f = lung_frame(lungs)
    if f is None or f.left_border <= f.right_border or f.bottom <= f.top:
        return None
    (cx, cy), (hx, hy) = lm
    (l_top, l_base), (l_medial, l_lateral) = f.left_rows, f.left_columns
    return [
        (cx - f.right_border) / (f.left_border - f.right_border),
        (cy - f.top) / (f.bottom - f.top),
        (hx - l_medial) / (l_lateral - l_medial),
        (hy - l_top) / (l_base - l_top),
    ]


def degrade(x: torch.Tensor, kind: int, g: torch.Generator) -> torch.Tensor:
    if kind == 0:
        return 1 - x
    if kind == 1:
        return (x + 0.25 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if kind == 2:
        return x ** (4.0 if torch.rand((), generator=g) < 0.5 else 0.25)
    out = x.clone()
    h = x.shape[-1]
    y0, x0 = (torch.randint(0, h // 2, (2,), generator=g)).tolist()
    out[..., y0 : y0 + h // 3, x0 : x0 + h // 3] = 1.0
    return out


def detector_runs(repo: Path, data, idx) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path(repo, LANDMARKER.name)), providers=["CPUExecutionProvider"])
    scores, hits = [], []
    g = torch.Generator().manual_seed(0)
    for cond in ("clean", "artefacts", "degraded"):
        for n, i in enumerate(idx):
            x = data.images[i : i + 1].float()
            if cond == "artefacts":
                torch.manual_seed(2000 + int(i))
                x, _ = real_world(x)
            elif cond == "degraded":
                x = degrade(x, n % 4, g)
            xy, conf = sess.run(None, {"image": x.numpy().astype(np.float32)})
            err = np.linalg.norm(xy[0] - data.landmarks[i].numpy(), axis=1) * mm_per_input_pixel(data.rows[i])
            scores.extend(conf[0].tolist())
            hits.extend((err <= WITHIN_MM).tolist())
    return np.array(scores), np.array(hits, dtype=float)


def fit_logistic(score: np.ndarray, hit: np.ndarray) -> tuple[float, float]:
    z = np.log(np.maximum(score, 1e-6))

    def nll(p):
        t = p[0] * z + p[1]
        return float(np.sum(np.logaddexp(0, t) - hit * t))

    res = minimize(nll, x0=[1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-8})
    return float(res.x[0]), float(res.x[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("model_repository"))
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus-2000"))
    args = ap.parse_args()
    data = load_data(args.corpus)
    f = [fractions(data.lungs[i].numpy(), data.landmarks[i].numpy()) for i in data.index("train")]
    med = np.median(np.array([r for r in f if r is not None]), axis=0)
    errs = []
    for i in data.index("test"):
        est = estimate_landmarks(data.lungs[i].numpy())
        errs.append(
            np.linalg.norm(np.array(est) - data.landmarks[i].numpy(), axis=1)
            * mm_per_input_pixel(data.rows[i])
        )
    e = np.array(errs)
    score, hit = detector_runs(args.repo, data, data.index("val"))
    a, b = fit_logistic(score, hit)
    pred = 1 / (1 + np.exp(-(a * np.log(np.maximum(score, 1e-6)) + b)))
    bins = np.quantile(pred, np.linspace(0, 1, 6))
    table = []
    for lo, hi in itertools.pairwise(bins):
        sel = (pred >= lo) & (pred <= hi)
        table.append(
            {
                "predicted": round(float(pred[sel].mean()), 3),
                "observed": round(float(hit[sel].mean()), 3),
                "n": int(sel.sum()),
            }
        )
    print(
        json.dumps(
            {
                "estimate_fractions": {
                    "CARINA_X": med[0],
                    "CARINA_Y": med[1],
                    "HILUM_X": med[2],
                    "HILUM_Y": med[3],
                },
                "estimate_on_test_truth": {
                    "carina_mean_mm": float(e[:, 0].mean()),
                    "hilum_mean_mm": float(e[:, 1].mean()),
                    "within_10mm": float((e <= WITHIN_MM).mean()),
                },
                "calibration": {"A": a, "B": b, "points": int(score.size), "hit_rate": float(hit.mean())},
                "reliability": table,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
