"""Contact sheets: look at a corpus with its truth drawn on, and beside a real radiograph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cxrmesh.analysis.overlay import draw_overlay, font
from cxrmesh.analysis.pixels import letterbox
from cxrmesh.contracts.corpus import read_manifest, read_training_copy
from cxrmesh.contracts.preprocessing import MODEL_SIZE


def pick_samples(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Spread ``n`` picks over (site, diagnosis, view) so every style shows up."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["site"], row["diagnosis"], row["view"]), []).append(row)
    picks: list[dict] = []
    depth = 0
    while len(picks) < n and any(len(g) > depth for g in groups.values()):
        for key in sorted(groups):
            if len(groups[key]) > depth and len(picks) < n:
                picks.append(groups[key][depth])
        depth += 1
    return picks


def overlay_tile(corpus: Path, row: dict[str, Any], size: int = 320) -> Image.Image:
    """The training copy with lung outlines, opacity tint, zone split and landmarks."""
    img = read_training_copy(corpus / row["paths"]["image"])
    big = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))
    marks = [(name, *row["landmarks"][name]["model"]) for name in ("carina", "left_hilum")]
    tile = draw_overlay(
        big,
        lungs=np.asarray(Image.open(corpus / row["paths"]["lungs"])),
        opacity=np.asarray(Image.open(corpus / row["paths"]["opacity"])),
        landmarks=marks,
        model_size=img.shape[0],
    )
    caption = (
        f"{row['site']} {row['modality']} {row['view']} {row['photometric'][-1]} {row['bits_stored']}b\n"
        f"{row['diagnosis']}  RALE {row['rale_total']}  intub72h={row['outcome']['intubation_72h']}"
    )
    return _with_caption(tile, caption)


def _with_caption(tile: Image.Image, caption: str) -> Image.Image:
    out = Image.new("RGB", (tile.width, tile.height + 40), (20, 20, 20))
    out.paste(tile, (0, 0))
    ImageDraw.Draw(out).multiline_text((6, tile.height + 3), caption, fill=(235, 235, 235), font=font(14))
    return out


def _grid(tiles: list[Image.Image], cols: int, title: str) -> Image.Image:
    w, h = tiles[0].size
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * h + 34), (0, 0, 0))
    ImageDraw.Draw(sheet).text((8, 6), title, fill=(255, 255, 255), font=font(20))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * w, 34 + (i // cols) * h))
    return sheet


def contact_sheet(corpus: Path, out: Path, n: int = 16, cols: int = 4) -> Path:
    """Write a PNG of ``n`` samples across sites and diagnoses with their truth overlaid."""
    corpus = Path(corpus)
    picks = pick_samples(read_manifest(corpus), n)
    if not picks:
        raise ValueError(f"corpus {corpus} has no studies")
    tiles = [overlay_tile(corpus, row) for row in picks]
    title = (
        "cxrmesh synthetic corpus - red: right lung, blue: left lung, orange: opacity truth, "
        "dashed: zone split (left hilum), green: carina, magenta: left hilum"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _grid(tiles, cols, title).save(out)
    return out


def real_radiograph(name: str = "RG1_UNCR.dcm") -> tuple[np.ndarray, dict[str, Any]]:
    """The real chest CR from pydicom-data through the project's preprocessing contract."""
    import pydicom
    from pydicom.data import get_testdata_file

    from cxrmesh.analysis.pixels import to_display

    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found: install pydicom-data (pip install pydicom-data)")
    ds = pydicom.dcmread(path)
    disp = to_display(ds.pixel_array, ds)
    info = {
        "modality": ds.Modality,
        "photometric": ds.PhotometricInterpretation,
        "bits_stored": int(ds.BitsStored),
        "rows": int(ds.Rows),
        "cols": int(ds.Columns),
        "spacing": [float(v) for v in ds.get("PixelSpacing", ds.get("ImagerPixelSpacing", [0, 0]))],
    }
    return letterbox(disp, MODEL_SIZE), info


def real_vs_synthetic(corpus: Path, out: Path, n_synthetic: int = 3, size: int = 384) -> Path:
    """Write the real RG1 radiograph beside synthetic ones, all through the same preprocessing."""
    corpus = Path(corpus)
    real, info = real_radiograph()
    rows = read_manifest(corpus)
    normals = [r for r in rows if r["diagnosis"] == "normal" and r["view"] == "PA"] or rows
    diseased = [r for r in rows if r["diagnosis"] != "normal"]
    picks = (normals[: max(1, n_synthetic - 1)] + diseased[:1])[:n_synthetic]

    def tile(arr: np.ndarray, caption: str) -> Image.Image:
        img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).convert("RGB")
        return _with_caption(img.resize((size, size), Image.Resampling.LANCZOS), caption)

    tiles = [
        tile(
            real,
            f"REAL pydicom-data RG1_UNCR\n{info['modality']} {info['photometric']} {info['bits_stored']}b "
            f"{info['rows']}x{info['cols']}",
        )
    ]
    for row in picks:
        arr = read_training_copy(corpus / row["paths"]["image"])
        tiles.append(
            tile(arr, f"synthetic {row['site']} {row['view']}\n{row['diagnosis']} RALE {row['rale_total']}")
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _grid(tiles, len(tiles), "Real radiograph (left) vs synthetic, same preprocessing contract").save(out)
    return out
