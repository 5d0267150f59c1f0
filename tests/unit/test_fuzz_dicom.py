"""A short fuzz run inside the test suite: a few thousand mutated files through read -> validate -> decode.

The full run is ``make fuzz`` (100,000 inputs, atheris when installed); this one uses the built-in
deterministic mutator so it needs no extra package and always tries the same inputs. Any exception
other than DicomRejected, or an input over the per-input time bound, fails with the input saved.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from fuzz.mutate import mutate
from fuzz.seeds import all_seeds, valid_seeds
from fuzz.target import admit_or_refuse

RUNS = 3000


def test_seeds_are_valid_in_every_encoding() -> None:
    seeds = valid_seeds()
    assert len(seeds) >= 7
    assert {name: admit_or_refuse(raw) for name, raw in seeds.items()} == dict.fromkeys(seeds, "admitted")


def test_mutator_is_deterministic() -> None:
    seed = next(iter(valid_seeds().values()))
    first = [mutate(random.Random(3), seed, seed) for _ in range(5)]
    assert first == [mutate(random.Random(3), seed, seed) for _ in range(5)]


def test_short_fuzz_run_finds_no_crash_or_hang(tmp_path: Path) -> None:
    from fuzz.fuzz_dicom import run_mutator

    args = argparse.Namespace(runs=RUNS, seed=15, timeout=5, out=tmp_path)
    summary = run_mutator(args, list(all_seeds().values()), log=None)
    assert summary["failure"] is None, summary["failure"]
    assert summary["inputs"] == RUNS
    assert len(summary["outcomes"]) > 10, "the mutations reach many checks"
