"""The test corpus: one small synthetic corpus with full-resolution DICOM, generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrmesh.contracts.corpus import read_manifest
from cxrmesh.synth.corpus import generate

CORPUS_SEED = 11
CORPUS_N = 18


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    generate(out, n=CORPUS_N, seed=CORPUS_SEED, write_dicom=True, workers=2)
    return out


@pytest.fixture(scope="session")
def manifest(corpus: Path) -> list[dict]:
    return read_manifest(corpus)
