"""Agreement of the RALE estimator (``cxrmesh.analysis.rale``) with the synthetic truth, and its calibration.

Runs the committed ONNX models in-process (ONNX Runtime, CPU) on every study of a split: the
display image pooled to the model input, the ensemble's lung map and the landmark model's left
hilum, i.e. what the pipeline gives the estimator in production. Then it estimates RALE and prints
Spearman rho and the mean absolute error of the total against the manifest's ``rale_total``, the
per-quadrant extent accuracy and quadratic-weighted kappa, and the density accuracy.

``--fit`` calibrates on the train split first (clear-lung atlas, exposure offset, per-quadrant
extent and density weights, their cut points), prints the ``CALIBRATION`` block to paste into
rale.py (everything between its ``# fmt: off`` and ``# fmt: on`` lines, replacing the one there),
and evaluates the new constants on ``--split``. Examples:

    python benchmarks/rale_agreement.py --corpus data/corpus-2000 --fit
    python benchmarks/rale_agreement.py --corpus /tmp/rale-corpus --split test

``--cache DIR`` keeps the model outputs per split (npz) so that reruns skip inference. The file is
``{corpus name}-{split}-{n}.npz`` with ``image`` (n, 256, 256) float32, ``lungs`` (n, 256, 256)
uint8, ``hilum`` (n, 2) model-input (x, y) and ``uid`` (the rows' sop_instance_uid); any inputs in
that layout are used as they are (e.g. the truth lung maps and hilum, to measure the estimator alone).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import lsq_linear
from scipy.sparse import csr_matrix, hstack
from scipy.sparse.linalg import lsqr
from scipy.stats import spearmanr

from cxrmesh.analysis import rale
from cxrmesh.analysis.pixels import input_labels, model_input
from cxrmesh.analysis.quantify import region_table
from cxrmesh.analysis.regions import REGION_KEYS
from cxrmesh.contracts.corpus import read_manifest, read_training_copy
from cxrmesh.ml.onnx_models import OnnxModels

KEYS = tuple(REGION_KEYS.values())
N_CELLS = 2 * rale.GRID_HEIGHT * rale.GRID_LATERAL


# ----------------------------------------------------------------------------- inputs


def model_outputs(
    corpus: Path, rows: list[dict], repository: Path, threads: int, cache: Path | None, tag: str
):
    """(images, lungs, hilums) in the model-input frame for ``rows``, from the models or the cache."""
    path = cache / f"{tag}.npz" if cache else None
    uids = np.array([r["sop_instance_uid"] for r in rows])
    if path and path.is_file():
        z = np.load(path)
        if z["uid"].shape == uids.shape and (z["uid"] == uids).all():
            return z["image"], z["lungs"], z["hilum"]
    models = OnnxModels(repository, threads=threads)
    images, lungs, hilums = [], [], []
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        x = model_input(read_training_copy(corpus / row["paths"]["image"]))
        found = models.run(x)
        images.append(x[0, 0])
        lungs.append(found.lungs)
        hilums.append(found.landmarks[1])
        if (i + 1) % 200 == 0:
            print(f"  inference {i + 1}/{len(rows)} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    out = np.stack(images), np.stack(lungs), np.stack(hilums).astype(np.float64)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, image=out[0], lungs=out[1], hilum=out[2], uid=uids)
    return out


class Study:
    """One study's measurements and truth."""

    def __init__(self, corpus: Path, row: dict, image: np.ndarray, lungs: np.ndarray, hilum: np.ndarray):
        hxy = (float(hilum[0]), float(hilum[1]))
        self.row = row
        self.px = rale.lung_pixels(image, lungs, hxy)
        self.table = region_table(image, lungs, hxy)
        opacity = input_labels(np.asarray(Image.open(corpus / row["paths"]["opacity"])))
        self.clear = opacity.ravel()[self.px.flat_index] == 0
        self.extent = np.array([row["rale"][k]["extent"] for k in KEYS])
        self.density = np.array([row["rale"][k]["density"] for k in KEYS])
        self.total = int(row["rale_total"])


def load_studies(corpus: Path, split: str, args) -> list[Study]:
    rows = [r for r in read_manifest(corpus) if r["split"] == split][: args.limit]
    print(f"{split}: {len(rows)} studies", file=sys.stderr)
    images, lungs, hilums = model_outputs(
        corpus, rows, args.repository, args.threads, args.cache, f"{corpus.name}-{split}-{len(rows)}"
    )
    return [Study(corpus, r, images[i], lungs[i], hilums[i]) for i, r in enumerate(rows)]


# ----------------------------------------------------------------------------- metrics


def quadratic_kappa(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Cohen's kappa with quadratic weights for labels 0..k-1."""
    observed = np.zeros((k, k))
    np.add.at(observed, (a, b), 1.0)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1.0)
    i, j = np.indices((k, k))
    w = (i - j) ** 2 / (k - 1) ** 2
    den = (w * expected).sum()
    return float(1.0 - (w * observed).sum() / den) if den else 1.0


def agreement(studies: list[Study], estimates: list[rale.RaleEstimate]) -> dict:
    truth = np.array([s.total for s in studies])
    total = np.array([e.total for e in estimates])
    ext_t = np.concatenate([s.extent for s in studies])
    ext_p = np.array([e.regions[k].extent for e in estimates for k in KEYS])
    den_t = np.concatenate([s.density for s in studies])
    den_p = np.array([e.regions[k].density for e in estimates for k in KEYS])
    both = (ext_t > 0) & (ext_p > 0)
    return {
        "n": len(studies),
        "spearman_total": float(spearmanr(total, truth)[0]),
        "spearman_score": float(spearmanr([e.score for e in estimates], truth)[0]),
        "mae_total": float(np.abs(total - truth).mean()),
        "bias_total": float((total - truth).mean()),
        "extent_accuracy": float((ext_p == ext_t).mean()),
        "extent_within_1": float((np.abs(ext_p - ext_t) <= 1).mean()),
        "extent_kappa_quadratic": quadratic_kappa(ext_t, ext_p, 5),
        "extent_per_quadrant": {k: float((ext_p[q::4] == ext_t[q::4]).mean()) for q, k in enumerate(KEYS)},
        "density_accuracy_where_both_opacified": float((den_p[both] == den_t[both]).mean())
        if both.any()
        else None,
    }


def by_diagnosis(studies: list[Study], estimates: list[rale.RaleEstimate]) -> dict:
    out = {}
    for dx in sorted({s.row["diagnosis"] for s in studies}):
        idx = [i for i, s in enumerate(studies) if s.row["diagnosis"] == dx]
        t = np.array([studies[i].total for i in idx])
        p = np.array([estimates[i].total for i in idx])
        rho = float(spearmanr(p, t)[0]) if len(set(t)) > 1 and len(set(p)) > 1 else None
        out[dx] = {"n": len(idx), "spearman_total": rho, "mae_total": float(np.abs(p - t).mean())}
    return out


# ----------------------------------------------------------------------------- fitting


def fit_atlas(studies: list[Study], rng: np.random.Generator) -> tuple[list, list, list]:
    """Least squares on clear (normal) train lungs: cell + dist + body tables plus a nuisance offset
    per image (so the atlas is the shape of a clear lung, the level being the exposure offset's job)."""
    normals = [s for s in studies if s.total == 0]
    if not normals:
        raise SystemExit("no normal studies in the train split to fit the atlas on")
    parts = {"value": [], "cell": [], "dist": [], "body": [], "image": []}
    for j, s in enumerate(normals):
        keep = rng.random(s.px.value.size) < 0.3
        parts["value"].append(s.px.value[keep])
        parts["cell"].append(s.px.cell[keep])
        parts["dist"].append(s.px.dist_bin[keep])
        parts["body"].append(s.px.body_bin[keep])
        parts["image"].append(np.full(int(keep.sum()), j))
    v, c, d, b, im = (np.concatenate(parts[k]) for k in ("value", "cell", "dist", "body", "image"))
    n = v.size
    rows = np.arange(n)

    def onehot(idx: np.ndarray, width: int):
        return csr_matrix((np.ones(n), (rows, idx)), shape=(n, width))

    nd, nb = len(rale.DIST_EDGES), len(rale.BODY_EDGES)
    x = hstack([onehot(c, N_CELLS), onehot(d, nd), onehot(b, nb), onehot(im, len(normals))]).tocsr()
    sol = lsqr(x, v, damp=1e-4, atol=1e-10, btol=1e-10, iter_lim=5000)[0]
    cell, dist, body, nuisance = np.split(sol, np.cumsum([N_CELLS, nd, nb]))
    # fix the free constants: the deepest body bin and the first scored distance bin are 0, the mean
    # image has no offset; the level goes to the cell table
    used_d = np.unique(d)
    dist = np.where(np.isin(np.arange(nd), used_d), dist, 0.0)
    cell = cell + dist[used_d[0]] + body[-1] + nuisance.mean()
    dist = np.where(np.isin(np.arange(nd), used_d), dist - dist[used_d[0]], 0.0)
    body = body - body[-1]
    seen = np.bincount(c, minlength=N_CELLS) > 0
    cell = np.where(seen, cell, np.median(cell[seen]))
    shape = (2, rale.GRID_HEIGHT, rale.GRID_LATERAL)
    return np.round(cell, 4).reshape(shape).tolist(), np.round(dist, 4).tolist(), np.round(body, 4).tolist()


def fit_offset(studies: list[Study], cal: dict) -> dict:
    """Linear model of the median atlas residual of the truly clear pixels from the anchors."""
    xs, ys = [], []
    for s in studies:
        res = rale.atlas_residual(s.px, cal)
        if s.clear.sum() < 50:
            continue
        anchors = rale.anchor_values(s.px, res)
        xs.append([anchors[a] for a in rale.ANCHORS] + [1.0])
        ys.append(float(np.median(res[s.clear])))
    coef, *_ = np.linalg.lstsq(np.array(xs), np.array(ys), rcond=None)
    fitted = dict(zip((*rale.ANCHORS, "bias"), (round(float(c), 4) for c in coef), strict=True))
    err = np.array(ys) - np.array(xs) @ coef
    print(f"  offset model: residual sd {err.std():.4f} over {len(ys)} train studies", file=sys.stderr)
    return fitted


def _fit_cuts(measure: np.ndarray, truth: np.ndarray, levels: int, offset: int) -> list[float]:
    """Increasing cut points on ``measure`` maximising quadratic kappa against ``truth``: quantile
    matching to the truth's level shares, then coordinate search over measure quantiles."""
    shares = np.cumsum([(truth == offset + k).mean() for k in range(levels - 1)])
    cuts = list(np.quantile(measure, np.clip(shares, 0.001, 0.999)))
    grid = np.unique(np.quantile(measure, np.linspace(0.0, 1.0, 201)))

    def score(cs) -> float:
        pred = offset + np.searchsorted(np.asarray(cs), measure, side="right")
        return quadratic_kappa(truth - offset, pred - offset, levels)

    best = score(cuts)
    for _ in range(4):
        improved = False
        for j in range(len(cuts)):
            lo = cuts[j - 1] if j else -np.inf
            hi = cuts[j + 1] if j + 1 < len(cuts) else np.inf
            for g in grid[(grid > lo) & (grid < hi)]:
                trial = [*cuts[:j], float(g), *cuts[j + 1 :]]
                sc = score(trial)
                if sc > best + 1e-9:
                    best, cuts, improved = sc, trial, True
        if not improved:
            break
    return [round(float(c), 4) for c in cuts]


def _fit_monotone_ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge least squares on standardised columns with the first ``rale.N_MONOTONE`` weights
    non-negative (more or denser opacity never lowers the measure); the weights on the raw columns,
    the last being the intercept (the design's constant column)."""
    mu, sd = x[:, :-1].mean(axis=0), x[:, :-1].std(axis=0) + 1e-9
    z = np.hstack([(x[:, :-1] - mu) / sd, np.ones((len(x), 1))])
    p = z.shape[1]
    a = np.vstack([z, np.sqrt(ridge) * np.eye(p)[:-1]])
    lower = np.full(p, -np.inf)
    lower[: rale.N_MONOTONE] = 0.0
    w = lsq_linear(a, np.concatenate([y, np.zeros(p - 1)]), bounds=(lower, np.inf)).x
    raw = w[:-1] / sd
    return np.append(raw, w[-1] - (mu * raw).sum())


def _significant(w: np.ndarray) -> list[float]:
    """Five significant digits; weights the solver left at its bound (~1e-20) become 0."""
    return [float(f"{v:.5g}") if abs(v) > 1e-8 else 0.0 for v in w]


def fit_quadrant_models(studies: list[Study], cal: dict, ridge: float) -> dict:
    """Per quadrant, linear extent and density measures from ``rale.quadrant_design`` (density on
    the truly opacified quadrants only), then the cut points that turn them into scores."""
    design = np.stack([rale.quadrant_design(rale.region_features(s.px, cal)) for s in studies])
    ext_t = np.stack([s.extent for s in studies])
    den_t = np.stack([s.density for s in studies])
    cal = {**cal, "extent_weights": [], "density_weights": []}
    for q in range(len(KEYS)):
        sick = ext_t[:, q] > 0
        cal["extent_weights"].append(_significant(_fit_monotone_ridge(design[:, q], ext_t[:, q], ridge)))
        cal["density_weights"].append(
            _significant(_fit_monotone_ridge(design[sick, q], den_t[sick, q].astype(float), ridge))
        )
    ext_m = (design * np.asarray(cal["extent_weights"])).sum(axis=2).ravel()
    den_m = (design * np.asarray(cal["density_weights"])).sum(axis=2).ravel()
    cal["extent_cuts"] = _fit_cuts(ext_m, ext_t.ravel(), 5, 0)
    ext_p = np.searchsorted(np.asarray(cal["extent_cuts"]), ext_m, side="right")
    both = (ext_t.ravel() > 0) & (ext_p > 0)
    cal["density_cuts"] = _fit_cuts(den_m[both], den_t.ravel()[both], 3, 1)
    return cal


def fit(studies: list[Study], ridge: float) -> dict:
    rng = np.random.default_rng(0)
    cal = json.loads(json.dumps(rale.CALIBRATION))
    print("fitting the clear-lung atlas on the normal train studies", file=sys.stderr)
    cal["cell"], cal["dist"], cal["body"] = fit_atlas(studies, rng)
    cal["offset"] = fit_offset(studies, cal)
    cal = fit_quadrant_models(studies, rounded(cal), ridge)
    est = [rale.rale_from_measurements(rale.region_measurements(s.px, cal), cal) for s in studies]
    truth = np.array([s.total for s in studies])
    print(
        f"  train Spearman: total {spearmanr([e.total for e in est], truth)[0]:.3f}"
        f"  score {spearmanr([e.score for e in est], truth)[0]:.3f}",
        file=sys.stderr,
    )
    # table-only fallback: the table's opacity_fraction through quantile-matched cuts, modal density
    tfrac = np.array([s.table[k]["opacity_fraction"] for s in studies for k in KEYS])
    ext_t = np.concatenate([s.extent for s in studies])
    den_t = np.concatenate([s.density for s in studies])
    cal["table_extent_cuts"] = _fit_cuts(tfrac, ext_t, 5, 0)
    cal["table_density"] = int(np.bincount(den_t[den_t > 0]).argmax())
    return cal


def literal(cal: dict, provenance: str) -> str:
    """The CALIBRATION dict as Python source for rale.py: the block between the fmt markers (kept
    out of ruff format, which would put each weight on its own line) replaces the one there."""
    lines = ["# fmt: off", f"# {provenance}", "CALIBRATION: dict[str, Any] = {"]
    lines.append('    "cell": [')
    for side in cal["cell"]:
        lines.append("        [")
        lines.extend(f"            {[round(v, 3) for v in row]}," for row in side)
        lines.append("        ],")
    lines.append("    ],")
    for key in ("dist", "body"):
        lines.append(f'    "{key}": {[round(v, 3) for v in cal[key]]},')
    lines.append(f'    "offset": {json.dumps(cal["offset"])},')
    for key in ("extent_weights", "density_weights"):
        lines.append(f'    "{key}": [')
        for row in cal[key]:  # one quadrant per block, 7 weights a line
            chunks = [", ".join(repr(v) for v in row[i : i + 7]) for i in range(0, len(row), 7)]
            lines.append("        [\n" + ",\n".join(f"            {c}" for c in chunks) + ",\n        ],")
        lines.append("    ],")
    for key in ("extent_cuts", "density_cuts", "table_extent_cuts", "table_density"):
        lines.append(f'    "{key}": {json.dumps(cal[key])},')
    lines.extend(["}", "# fmt: on"])
    return "\n".join(lines)


def rounded(cal: dict) -> dict:
    """The calibration as printed (so the evaluation uses exactly what gets pasted)."""
    out = json.loads(json.dumps(cal))
    out["cell"] = [[[round(v, 3) for v in row] for row in side] for side in cal["cell"]]
    out["dist"] = [round(v, 3) for v in cal["dist"]]
    out["body"] = [round(v, 3) for v in cal["body"]]
    return out


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--split", default="test")
    p.add_argument("--fit", action="store_true", help="calibrate on the train split first")
    p.add_argument("--limit", type=int, default=None, help="first N studies of each split")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    p.add_argument("--cache", type=Path, default=None, help="directory for cached model outputs")
    p.add_argument("--ridge", type=float, default=1.0, help="ridge penalty of the quadrant models (--fit)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = p.parse_args(argv)

    cal = rale.CALIBRATION
    if args.fit:
        train = load_studies(args.corpus, "train", args)
        cal = rounded(fit(train, args.ridge))
        inputs = (
            f"the cached inputs in {args.cache}" if args.cache else f"the ONNX models in {args.repository}"
        )
        print(
            literal(
                cal,
                f"Fitted on {args.corpus.name} train ({len(train)} studies), {inputs}, ridge {args.ridge}",
            )
        )
    studies = load_studies(args.corpus, args.split, args)
    est = [rale.rale_from_measurements(rale.region_measurements(s.px, cal), cal) for s in studies]
    table_only = [rale.estimate_rale(s.table, calibration=cal) for s in studies]
    report = {
        "corpus": str(args.corpus),
        "split": args.split,
        "inputs": f"lungs + left hilum from {args.cache or 'the committed ONNX models'}, model-input frame",
        "estimator": agreement(studies, est),
        "by_diagnosis": by_diagnosis(studies, est),
        "table_only_fallback": agreement(studies, table_only),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    e, t = report["estimator"], report["table_only_fallback"]
    print(f"{args.corpus} [{args.split}] n={e['n']} ({report['inputs']})")
    print(
        f"  total: Spearman rho {e['spearman_total']:.3f} (unrounded score {e['spearman_score']:.3f})"
        f"  MAE {e['mae_total']:.2f}",
        f" bias {e['bias_total']:+.2f}",
        sep="",
    )
    print(
        f"  extent: accuracy {e['extent_accuracy']:.3f}  within 1 {e['extent_within_1']:.3f}"
        f"  quadratic kappa {e['extent_kappa_quadratic']:.3f}"
    )
    print(
        "  extent accuracy per quadrant: "
        + "  ".join(f"{k} {v:.3f}" for k, v in e["extent_per_quadrant"].items())
    )
    d = e["density_accuracy_where_both_opacified"]
    print(f"  density accuracy (both opacified): {d:.3f}" if d is not None else "  density: n/a")
    for dx, v in report["by_diagnosis"].items():
        rho = f"{v['spearman_total']:.3f}" if v["spearman_total"] is not None else "n/a"
        print(f"  {dx}: n={v['n']} Spearman {rho} MAE {v['mae_total']:.2f}")
    print(
        f"  table-only fallback: Spearman {t['spearman_total']:.3f}  MAE {t['mae_total']:.2f}"
        f"  extent kappa {t['extent_kappa_quadratic']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
