"""The before/after figure of docs/real-radiographs.md: lung maps and landmarks on real-looking films.

Rows: the real radiograph (pydicom-data RG1_UNCR) and test-split synthetic films with real-world
artefacts drawn on (``cxrmesh.ml.artefacts.real_world``, a fixed seed per film). Columns:
"before" = a model repository's plain argmax and its detector's landmarks as they are (what was
served before the anatomy rules and the fallback); "after" = another repository's lung map as
served now (``analysis.lung_map``) and the landmarks the split uses (``analysis.landmarks``;
estimated ones are labelled so).

    python benchmarks/real_radiograph_figure.py --before OLD_REPO --after model_repository \\
        --out docs/real-radiographs-before-after.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cxrmesh.analysis.landmarks import choose_landmarks
from cxrmesh.analysis.overlay import draw_overlay, font
from cxrmesh.analysis.pixels import model_input
from cxrmesh.ml.artefacts import real_world
from cxrmesh.ml.data import load_data
from cxrmesh.ml.onnx_models import OnnxModels
from cxrmesh.synth.contact import real_radiograph

SIZE = 384
HEADER = 40


def films(corpus: Path, picks: list[int]) -> list[tuple[str, np.ndarray]]:
    display, _ = real_radiograph()
    out = [("real RG1", model_input(display))]
    data = load_data(corpus)
    test = data.index("test")
    for k in picks:
        i = int(test[k])
        torch.manual_seed(1000 + i)
        x, _ = real_world(data.images[i : i + 1].float())
        out.append((f"synthetic + artefacts #{k}", x.numpy().astype(np.float32)))
    return out


def panel(image: np.ndarray, lungs: np.ndarray, carina, hilum, estimated: bool) -> Image.Image:
    view = np.asarray(
        Image.fromarray(image[0, 0].astype(np.float32)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    )
    suffix = " (estimated)" if estimated else ""
    marks = [("carina" + suffix, *map(float, carina)), ("left_hilum" + suffix, *map(float, hilum))]
    return draw_overlay(view, lungs=lungs, landmarks=marks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=Path("model_repository"))
    ap.add_argument("--candidate", type=Path, help="a third column: another repository, served the same way")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus-2000"))
    ap.add_argument("--picks", type=int, nargs="*", default=[3, 11, 25])
    ap.add_argument("--out", type=Path, default=Path("docs/real-radiographs-before-after.png"))
    args = ap.parse_args()
    served = [OnnxModels(args.after, threads=2)]
    titles = ["before: argmax + detector landmarks", "after: served lung map + landmarks used"]
    if args.candidate:
        served.append(OnnxModels(args.candidate, threads=2))
        titles.append("candidate members (artefact-trained)")
    before = OnnxModels(args.before, threads=2)
    rows = films(args.corpus, args.picks)
    sheet = Image.new("RGB", (len(titles) * SIZE, HEADER + len(rows) * (SIZE + 24)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((c * SIZE + 8, 8), title, fill=(255, 255, 255), font=font(16))
    for r, (name, image) in enumerate(rows):
        y = HEADER + r * (SIZE + 24)
        b = before.run(image)
        sheet.paste(panel(image, b.probs.argmax(axis=0), b.landmarks[0], b.landmarks[1], False), (0, y))
        draw.text((8, y + SIZE + 4), name, fill=(255, 255, 255), font=font(14))
        for c, models in enumerate(served, start=1):
            a = models.run(image)
            lm, score = a.landmarks, tuple(a.landmark_confidence)
            chosen = choose_landmarks(a.lungs, tuple(lm[0]), tuple(lm[1]), score)
            sheet.paste(
                panel(image, a.lungs, chosen.carina, chosen.left_hilum, chosen.estimated), (c * SIZE, y)
            )
            note = (
                "landmarks estimated: " + "; ".join(chosen.problems)
                if chosen.estimated
                else "detector landmarks"
            )
            draw.text((c * SIZE + 8, y + SIZE + 4), note[:60], fill=(255, 255, 255), font=font(14))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
