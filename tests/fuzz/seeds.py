"""The seed corpus: valid files in every encoding ingestion accepts, and the hostile corpus.

The valid files come from the hostile corpus's own builder (``tests/data/hostile/make_corpus.py``),
so fuzzing starts from both sides of every check.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

TESTS = Path(__file__).resolve().parents[1]
HOSTILE = TESTS / "data" / "hostile"
REGRESSIONS = TESTS / "data" / "regressions"


def _make_corpus():
    spec = importlib.util.spec_from_file_location("make_corpus", HOSTILE / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def valid_seeds() -> dict[str, bytes]:
    """One valid radiograph per accepted encoding (each admitted by the target)."""
    corpus = _make_corpus()
    out = {}
    for syntax in (RLELossless, JPEG2000Lossless, JPEGBaseline8Bit):
        out[f"valid_{syntax.name}"] = corpus.write(corpus.base(syntax))
    for syntax in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ):
        out[f"valid_{syntax.name}"] = corpus.write(corpus._as_native(corpus.base(), syntax))
    return {name.replace(" ", "_").lower(): raw for name, raw in out.items()}


def all_seeds() -> dict[str, bytes]:
    """Valid seeds, every hostile file and every regression file."""
    seeds = valid_seeds()
    for folder in (HOSTILE, REGRESSIONS):
        seeds |= {p.name: p.read_bytes() for p in sorted(folder.glob("*.dcm"))}
    return seeds
