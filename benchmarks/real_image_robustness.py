"""Before/after on clean and real-looking films: Dice, islands, holes, landmarks, of two model repositories.

Issue 16 asks that robustness to real images not cost in-distribution accuracy. For each model
repository given (``--repo NAME=PATH``, e.g. the committed one and a candidate) this runs the
served models in-process (ONNX Runtime, ``cxrmesh.ml.onnx_models``, the same lung-map function as
the services) on ``--n`` test-split studies of a corpus, twice: as synthesised, and with the
real-world artefacts of training (``cxrmesh.ml.artefacts.real_world``: arms, leads and tubes,
burned-in text, collimation, blur; a fixed seed per study, the labels following collimation).
It prints, as JSON, per repository and per condition:

- ``dice_argmax``: the ensemble's plain argmax; ``dice_served``: the lung map as served
  (``analysis.lung_map``: argmax plus the anatomy rules);
- ``islands``: studies whose argmax map has more than one piece on a side; ``holes``: studies with
  a hole in a lung (both before the rules; after them there are none by construction);
- ``landmark_error_mm`` (clean films) and ``landmarks_implausible``: studies whose detector
  landmarks fail ``regions.landmark_problems`` on the served lung map;
- and on the real radiograph (pydicom-data RG1): the same counts and the landmark problems.

Slow on a CPU (~1.3 s per film and repository on 2 cores):

    python benchmarks/real_image_robustness.py --n 100 \
        --repo committed=model_repository --repo robust=runs/robust/repo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from cxrmesh.analysis.pixels import model_input
from cxrmesh.analysis.quantify import lung_dice
from cxrmesh.analysis.regions import Lung, landmark_problems
from cxrmesh.ml.artefacts import real_world
from cxrmesh.ml.data import load_data, mm_per_input_pixel
from cxrmesh.ml.onnx_models import OnnxModels
from cxrmesh.synth.contact import real_radiograph


def map_faults(labels: np.ndarray) -> tuple[bool, bool]:
    """(islands, holes) of a lung map: more than one piece on a side; a hole inside a lung."""
    islands = holes = False
    for side in (Lung.RIGHT, Lung.LEFT):
        m = labels == side
        islands |= ndimage.label(m)[1] > 1
        holes |= bool((ndimage.binary_fill_holes(m) & ~m).any())
    return islands, holes


def films(data, idx: list[int], artefacts: bool):
    for i in idx:
        x, y = data.images[i : i + 1].float(), data.lungs[i : i + 1]
        if artefacts:
            torch.manual_seed(1000 + i)
            x, y = real_world(x, y)
        yield i, x.numpy(), y[0].numpy()


def score(models: OnnxModels, data, idx: list[int], artefacts: bool) -> dict:
    argmax_d, served_d, islands, holes, implausible, errors = [], [], 0, 0, 0, []
    for i, x, truth in films(data, idx, artefacts):
        f = models.run(x.astype(np.float32))
        raw = f.probs.argmax(axis=0)
        argmax_d.append(float(lung_dice(raw, truth)))
        served_d.append(float(lung_dice(f.lungs, truth)))
        isl, hol = map_faults(raw)
        islands, holes = islands + isl, holes + hol
        implausible += bool(landmark_problems(f.lungs, tuple(f.landmarks[0]), tuple(f.landmarks[1])))
        if not artefacts:
            err = np.linalg.norm(f.landmarks - data.landmarks[i].numpy(), axis=1) * mm_per_input_pixel(
                data.rows[i]
            )
            errors.append(err)
    out = {
        "films": len(idx),
        "dice_argmax": round(float(np.mean(argmax_d)), 5),
        "dice_served": round(float(np.mean(served_d)), 5),
        "islands": islands,
        "holes": holes,
        "landmarks_implausible": implausible,
    }
    if errors:
        e = np.array(errors)
        out["landmark_error_mm"] = {
            "mean": round(float(e.mean()), 3),
            "p95": round(float(np.percentile(e, 95)), 3),
        }
    return out


def real(models: OnnxModels) -> dict:
    display, _ = real_radiograph()
    f = models.run(model_input(display))
    isl, hol = map_faults(f.probs.argmax(axis=0))
    return {
        "islands_before_rules": bool(isl),
        "holes_before_rules": bool(hol),
        "faults_after_rules": map_faults(f.lungs),
        "landmarks": np.round(f.landmarks, 1).tolist(),
        "detector_score": np.round(f.landmark_confidence, 3).tolist(),
        "landmark_problems": landmark_problems(f.lungs, tuple(f.landmarks[0]), tuple(f.landmarks[1])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", action="append", required=True, help="NAME=PATH of a model repository")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus-2000"))
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    data = load_data(args.corpus)
    idx = data.index("test")[: args.n]
    report = {}
    for item in args.repo:
        name, path = item.split("=", 1)
        models = OnnxModels(Path(path), threads=2)
        report[name] = {
            "clean": score(models, data, idx, False),
            "artefacts": score(models, data, idx, True),
            "rg1": real(models),
        }
        print(json.dumps({name: report[name]}), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
