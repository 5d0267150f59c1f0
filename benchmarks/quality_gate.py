"""Does the quality gate pass chests and stop everything else? Verdict counts per group.

Runs the committed ONNX models in-process (ONNX Runtime, CPU) as the pipeline would: display image
-> model input -> ensemble lung map and the five members' agreement (mean pairwise lung Dice of
their label maps, as the segmentation service computes it) -> ``cxrmesh.analysis.quality``. Groups:

- synthetic chests: the first ``--n`` studies of ``--split`` of ``--corpus`` (``all`` takes every
  split, for a small corpus none of whose studies the models were trained on);
- RG1: the real radiograph RG1_UNCR from pydicom-data;
- the negatives of ``tests/support/not_chest.py`` (blank, noise, screen photo, hand, knee, lateral,
  RG1 turned 90 and 180 degrees).

Prints the verdict counts per group, the false-refusal rate over the chests (synthetic and RG1),
and each cue's range over the chests (where the thresholds in quality.py come from). Exits 1 if a
synthetic chest is refused. About 0.3 s per image on 2 cores:

    python benchmarks/quality_gate.py --corpus data/bench-500 --n 100 [--split all]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from cxrmesh.analysis.pixels import model_input
from cxrmesh.analysis.quality import Cue, chest_cues, verdict_of
from cxrmesh.analysis.quantify import lung_dice
from cxrmesh.contracts.corpus import read_manifest, read_training_copy
from cxrmesh.ml.onnx_models import OnnxModels
from cxrmesh.synth.contact import real_radiograph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the negatives' builders
from support.not_chest import not_chest_images

VERDICTS = ("pass", "flagged", "refused")


def member_agreement(member_probs: np.ndarray) -> float:
    """Mean pairwise lung Dice between the members' label maps (as services/segmentation does)."""
    labels = member_probs.argmax(axis=1)
    return float(
        np.mean([lung_dice(labels[a], labels[b]) for a, b in itertools.combinations(range(len(labels)), 2)])
    )


def gate(models: OnnxModels, display_512: np.ndarray) -> tuple[Cue, ...]:
    x = model_input(display_512)
    f = models.run(x)
    return chest_cues(x[0, 0], f.lungs, member_agreement(f.member_probs))


def default_corpus() -> Path:
    big = Path("data/corpus-2000")
    return big if (big / "manifest.jsonl").is_file() else Path("data/bench-500")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=default_corpus())
    ap.add_argument("--n", type=int, default=100, help="synthetic studies (first n of the split)")
    ap.add_argument("--split", default="test", help="test, val, train or all")
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reasons", action="store_true", help="print every flagged or refused image's reasons")
    args = ap.parse_args()

    rows = [r for r in read_manifest(args.corpus) if args.split == "all" or r["split"] == args.split][
        : args.n
    ]
    models = OnnxModels(args.repository, threads=args.threads)
    rg1, _ = real_radiograph()
    groups: dict[str, list[tuple[str, tuple[Cue, ...]]]] = {"synthetic": [], "RG1": [], "negatives": []}
    start = time.perf_counter()
    for i, row in enumerate(rows):
        groups["synthetic"].append(
            (f"synthetic #{i}", gate(models, read_training_copy(args.corpus / row["paths"]["image"])))
        )
    groups["RG1"].append(("RG1", gate(models, rg1)))
    for name, image in not_chest_images(rg1).items():
        groups["negatives"].append((name, gate(models, image)))
    elapsed = time.perf_counter() - start
    n_images = sum(len(g) for g in groups.values())

    print(
        f"corpus {args.corpus} split {args.split}: {len(rows)} synthetic studies; {n_images} images in "
        f"{elapsed:.0f} s ({elapsed / n_images:.2f} s/image)\n"
    )
    print(f"{'group':<26}{'n':>5}" + "".join(f"{v:>9}" for v in VERDICTS) + "   min score")
    verdicts = {g: [(name, verdict_of(cues)) for name, cues in items] for g, items in groups.items()}
    for g in ("synthetic", "RG1"):
        _row(g, [v for _, v in verdicts[g]])
    for name, v in verdicts["negatives"]:
        _row(f"  {name}", [v])
    _row("negatives (all)", [v for _, v in verdicts["negatives"]])

    chests = [v for g in ("synthetic", "RG1") for _, v in verdicts[g]]
    refused = sum(v.verdict == "refused" for v in chests)
    flagged = sum(v.verdict == "flagged" for v in chests)
    stopped = sum(v.verdict != "pass" for _, v in verdicts["negatives"])
    print(
        f"\nfalse-refusal rate on chests: {refused}/{len(chests)} = {refused / len(chests):.1%}"
        f"  (flagged {flagged}/{len(chests)} = {flagged / len(chests):.1%})"
    )
    print(f"negatives stopped (flagged or refused): {stopped}/{len(verdicts['negatives'])}")

    print("\ncue ranges over the chests (value: synthetic min / median / max; RG1)")
    rg1_cues = {c.name: c.value for c in groups["RG1"][0][1]}
    names = dict.fromkeys(c.name for _, cues in groups["synthetic"] for c in cues)
    for cue in names:
        vals = np.array([c.value for _, cues in groups["synthetic"] for c in cues if c.name == cue])
        rg1_value = rg1_cues.get(cue, float("nan"))
        print(f"  {cue:<13} {vals.min():7.3f} {np.median(vals):7.3f} {vals.max():7.3f}   {rg1_value:7.3f}")

    if args.reasons:
        for g, items in verdicts.items():
            for name, v in items:
                if v.verdict != "pass":
                    print(f"\n[{g}] {name}: {v.verdict} (score {v.chest_score:.2f})")
                    for reason in v.reasons:
                        print(f"    - {reason}")
    if any(v.verdict == "refused" for _, v in verdicts["synthetic"]):
        sys.exit(1)


def _row(label: str, verdicts: list) -> None:
    counts = Counter(v.verdict for v in verdicts)
    score = min(v.chest_score for v in verdicts)
    print(
        f"{label:<26}{len(verdicts):>5}" + "".join(f"{counts[v]:>9}" for v in VERDICTS) + f"   {score:9.2f}"
    )


if __name__ == "__main__":
    main()
