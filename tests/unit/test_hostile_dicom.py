"""The hostile corpus (tests/data/hostile): every file is refused with its own code, fast, never a crash.

Each file breaks one thing a sender (or an attacker) can put in a DICOM: header values no chest
radiograph has, a structure that would cost the parser memory or stack, a compressed stream that lies
about its size. ``manifest.json`` says which code each must get and why; ``make_corpus.py`` rebuilds them.
Files the fuzzer once crashed or hung on live in tests/data/regressions and must now be handled.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from cxrmesh.contracts import limits
from cxrmesh.dicom import DicomRejected, decode_pixels, read_dicom, validate
from cxrmesh.dicom.bounds import check_bounds
from cxrmesh.dicom.rejection import ADMISSION_CODES

DATA = Path(__file__).resolve().parents[1] / "data"
HOSTILE = DATA / "hostile"
REGRESSIONS = DATA / "regressions"
MANIFEST: dict[str, dict[str, str]] = json.loads((HOSTILE / "manifest.json").read_text())
SECONDS_PER_FILE = 2.0


def _admit(raw: bytes) -> None:
    ds = read_dicom(raw)
    validate(ds)
    decode_pixels(ds)


def test_corpus_is_indexed_and_large_enough() -> None:
    on_disk = {p.name for p in HOSTILE.glob("*.dcm")}
    assert on_disk == set(MANIFEST), "rebuild with tests/data/hostile/make_corpus.py"
    assert len(MANIFEST) >= 40
    assert all(row["code"] in ADMISSION_CODES and len(row["why"]) > 5 for row in MANIFEST.values())
    assert all(p.stat().st_size < 256 * 1024 for p in HOSTILE.glob("*.dcm")), "keep the corpus small"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_hostile_file_refused_with_its_code(name: str) -> None:
    raw = (HOSTILE / name).read_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(DicomRejected) as info:
        _admit(raw)
    elapsed = time.perf_counter() - start
    assert info.value.code == MANIFEST[name]["code"], f"{name} ({MANIFEST[name]['why']}): got {info.value}"
    assert len(info.value.reason) > 40
    assert elapsed < SECONDS_PER_FILE, f"{name} took {elapsed:.1f} s"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 512 * 1024, f"{name} grew the process by {grown_kib} KiB"


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.dcm")), ids=lambda p: p.name)
def test_fuzz_regressions_handled(path: Path) -> None:
    """Inputs that once crashed or hung the parse path: now admitted or refused, quickly."""
    start = time.perf_counter()
    with contextlib.suppress(DicomRejected):
        _admit(path.read_bytes())
    assert time.perf_counter() - start < SECONDS_PER_FILE


@pytest.mark.filterwarnings("ignore")
def test_a_real_giant_string_is_refused_before_parsing() -> None:
    """Not a declared-only length: the bytes are there (a 1 MiB + 2 private LT), refused by the bounds."""
    raw = (HOSTILE / "private_ut_1gib.dcm").read_bytes()
    at = raw.index(b"HOSTILE!")
    big = limits.MAX_VALUE_BYTES + 2
    raw = raw[: at - 4] + big.to_bytes(4, "little") + b"A" * big + raw[at + 8 :]
    with pytest.raises(DicomRejected) as info:
        check_bounds(raw)
    assert info.value.code == "element_too_large" and str(big) in info.value.reason


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_bounds_accept_ordinary_files_in_every_encoding(name: str) -> None:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    check_bounds(Path(path).read_bytes())
