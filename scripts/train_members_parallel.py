"""Train the segmentation members side by side on one GPU: one process per member.

Small members at batch 16 leave an H100 mostly idle when trained one after another (the Python
side launches kernels slower than the GPU runs them); eight in parallel took ~10 s per epoch each
on 2,070 studies, about as long as one alone. The parent loads the corpus once and forks the
trainings (CUDA is first touched in the children, as fork requires). Used for the committed members
(docs/models.md); ``scripts/train_on_gpu.sh`` runs it when SEG_PARALLEL=1.

usage: python scripts/train_members_parallel.py CORPUS WORK EPOCHS BUDGET_S [--device cuda] [MEMBER ...]
BUDGET_S = wall time per member (the epoch count follows the pace, up to EPOCHS; 0 = none).
``cxr_landmarks`` may be named as a member too: the landmark detector then trains beside them
(``--landmark-epochs``, same budget).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import torch

from cxrmesh.contracts.tensors import LANDMARKER, SEG_MEMBERS
from cxrmesh.ml.data import Data, load_data, mm_per_input_pixel
from cxrmesh.ml.loop import resolve_device, seed_everything
from cxrmesh.ml.metrics import dice_scores, landmark_error_mm
from cxrmesh.ml.trainers.landmarker import train_landmarker
from cxrmesh.ml.trainers.segmenter import train_segmenter
from cxrmesh.ml.weights import predict

log = logging.getLogger("members")


def landmarks(data: Data, work: Path, epochs: int, budget: float | None, device: str) -> None:
    """The landmark detector, seeded like ``train_all`` (seed + 10), then scored on val."""
    torch.set_num_threads(2)
    seed_everything(10)
    dev = resolve_device(device)
    model = train_landmarker(data, epochs, work / "runs", work / "weights", False, dev, budget)
    val = data.index("val")
    xy, _ = predict(model.to(dev), data.images[val])
    mm = np.array([mm_per_input_pixel(data.rows[i]) for i in val])
    log.info("cxr_landmarks: val error %s", landmark_error_mm(xy, data.landmarks[val], mm))


def member(name: str, data: Data, work: Path, epochs: int, budget: float | None, device: str) -> None:
    """One member: seeded like ``train_all`` (seed + index), trained, then scored on val."""
    torch.set_num_threads(2)
    seed_everything(SEG_MEMBERS.index(name))
    dev = resolve_device(device)
    began = time.monotonic()
    model = train_segmenter(name, data, epochs, work / "runs", work / "weights", False, None, dev, budget)
    val = data.index("val")
    dice = float(dice_scores(predict(model.to(dev), data.images[val]), data.lungs[val]).mean())
    log.info("%s: val Dice %.5f after %.0f s", name, dice, time.monotonic() - began)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("epochs", type=int)
    ap.add_argument("budget_s", type=float)
    ap.add_argument("members", nargs="*", default=list(SEG_MEMBERS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--landmark-epochs", type=int, default=20)
    args = ap.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(message)s")
    unknown = set(args.members) - set(SEG_MEMBERS) - {LANDMARKER.name}
    if unknown:
        ap.error(f"unknown member(s) {sorted(unknown)}; choose from {', '.join(SEG_MEMBERS)}")
    data = load_data(args.corpus)
    ctx = mp.get_context("fork")
    budget = args.budget_s or None
    procs = [
        ctx.Process(target=member, name=m, args=(m, data, args.work, args.epochs, budget, args.device))
        if m != LANDMARKER.name
        else ctx.Process(
            target=landmarks, name=m, args=(data, args.work, args.landmark_epochs, budget, args.device)
        )
        for m in args.members
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = {p.name: p.exitcode for p in procs if p.exitcode}
    if failed:
        raise SystemExit(f"member trainings failed: {failed}")


if __name__ == "__main__":
    main()
