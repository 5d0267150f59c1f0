"""The corpus contract: how a corpus on disk is read, by training, benchmarks and ingestion clients.

The synthetic generator (``cxrmesh.synth.corpus``) writes this layout and a user's own dataset can
supply the same; everything else only reads it, through these functions, so the format is stated
once. Layout: ``manifest.jsonl`` (one JSON row per study, see docs/synthetic-data.md) beside the
training copies it points to (16-bit PNG, display values times ``TRAINING_COPY_MAX``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrmesh.contracts.preprocessing import TRAINING_COPY_MAX
from cxrmesh.contracts.tensors import CLINICAL_FEATURES

MANIFEST_FILE = "manifest.jsonl"


def read_manifest(corpus: Path) -> list[dict[str, Any]]:
    """Rows of a corpus manifest, in generation order."""
    with open(Path(corpus) / MANIFEST_FILE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_training_copy(path: Path) -> np.ndarray:
    """A training copy (16-bit PNG) as float32 display values in [0, 1]."""
    return np.asarray(Image.open(path), dtype=np.float32) / TRAINING_COPY_MAX


def manifest_clinical(row: dict[str, Any]) -> dict[str, float] | None:
    """A manifest row's clinical variables by ``CLINICAL_FEATURES`` name, None without them.

    The one reading of the dataset layout's clinical fields, for training and for ingestion clients.
    """
    clin, demo = row.get("clinical"), row.get("demographics")
    if not clin or not demo:
        return None
    values = {
        **clin,
        "age": demo["age"],
        "sex_male": 1.0 if demo["sex"] == "M" else 0.0,
        "comorbidity_count": len(demo.get("comorbidities", [])),
    }
    return {k: float(values[k]) for k in CLINICAL_FEATURES}
