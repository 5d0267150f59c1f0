"""A corpus loaded for training: images, lung maps, landmarks and splits in memory at MODEL_INPUT.

Reads the corpus through the corpus contract (``cxrmesh.contracts.corpus``); training never decodes
DICOM. Also the per-row facts the trainers and the evaluation need: the diagnosis class (position
in ``contracts.labels.DIAGNOSES``) and the millimetres per input pixel.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from cxrmesh.analysis.pixels import input_labels, model_input
from cxrmesh.contracts.corpus import read_manifest, read_training_copy
from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import MODEL_INPUT


@dataclass
class Data:
    """A manifest loaded into memory at MODEL_INPUT resolution (training never decodes DICOM)."""

    rows: list[dict[str, Any]]
    images: torch.Tensor  # (N, 1, MODEL_INPUT, MODEL_INPUT) float16, display values
    lungs: torch.Tensor | None  # (N, MODEL_INPUT, MODEL_INPUT) uint8
    landmarks: torch.Tensor | None  # (N, 2, 2) in MODEL_INPUT pixels
    split: np.ndarray

    def index(self, split: str) -> np.ndarray:
        return np.nonzero(self.split == split)[0]


def to_input_frame(xy_model: Iterable[float]) -> list[float]:
    """MODEL_SIZE-frame coordinates -> MODEL_INPUT-frame coordinates (pixel centres at integers)."""
    f = MODEL_SIZE / MODEL_INPUT
    return [(v + 0.5) / f - 0.5 for v in xy_model]


def load_data(corpus: Path, limit: int | None = None) -> Data:
    rows = read_manifest(corpus)[:limit] if limit else read_manifest(corpus)
    n = len(rows)
    images = torch.empty((n, 1, MODEL_INPUT, MODEL_INPUT), dtype=torch.float16)
    has_lungs = all(r.get("paths", {}).get("lungs") for r in rows)
    lungs = torch.empty((n, MODEL_INPUT, MODEL_INPUT), dtype=torch.uint8) if has_lungs else None
    has_lm = all("landmarks" in r for r in rows)
    landmarks = torch.empty((n, 2, 2), dtype=torch.float32) if has_lm else None

    def load(i: int) -> None:
        row = rows[i]
        images[i, 0] = torch.from_numpy(model_input(read_training_copy(corpus / row["paths"]["image"]))[0, 0])
        if lungs is not None:
            lungs[i] = torch.from_numpy(input_labels(np.asarray(Image.open(corpus / row["paths"]["lungs"]))))
        if landmarks is not None:
            for j, key in enumerate(("carina", "left_hilum")):
                landmarks[i, j] = torch.tensor(to_input_frame(row["landmarks"][key]["model"]))

    # PNG decoding releases the GIL: threads fill the preallocated tensors in place
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1))) as pool:
        for _ in tqdm(pool.map(load, range(n)), total=n, desc="loading", unit="img", disable=None):
            pass
    return Data(rows, images, lungs, landmarks, np.array([r.get("split", "train") for r in rows]))


def diagnosis_classes(rows: Iterable[dict[str, Any]]) -> np.ndarray:
    """Each row's diagnosis as its class index (its position in ``DIAGNOSES``)."""
    return np.array([DIAGNOSES.index(r["diagnosis"]) for r in rows])


def mm_per_input_pixel(row: dict[str, Any]) -> float:
    """Millimetres per MODEL_INPUT pixel for a study (from its spacing and letterbox scale)."""
    return row["pixel_spacing_mm"] / row["letterbox"]["scale"] * (MODEL_SIZE / MODEL_INPUT)
