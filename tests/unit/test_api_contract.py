"""The protos stay a stable contract: buf lint passes and nothing breaks the released API.

Also checks that docs/api.md matches the protos (protos/gen_api_docs.py). buf comes from npm
(`npm ci --prefix tools/buf`, done by `make test`); its tests are skipped, saying so, only where that
binary is absent. The negative checks show that `buf breaking` would catch a removed or a renumbered
field, so a passing check means something.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
BASELINES = sorted((PROTOS / "releases").glob("*.binpb"))
LOCAL_BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
BUF = str(LOCAL_BUF) if LOCAL_BUF.exists() else shutil.which("buf")

needs_buf = pytest.mark.skipif(
    BUF is None, reason=f"buf is not installed: run `npm ci --prefix tools/buf` (expected at {LOCAL_BUF})"
)


def _buf(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([BUF, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _api_docs():
    spec = importlib.util.spec_from_file_location("protos_gen_api_docs", PROTOS / "gen_api_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_buf
def test_protos_pass_buf_lint() -> None:
    result = _buf("lint", PROTOS)
    assert result.returncode == 0, f"buf lint protos:\n{result.stdout}{result.stderr}"


def test_a_released_baseline_exists() -> None:
    assert PROTOS / "releases" / "cxrmesh-v1.binpb" in BASELINES


@needs_buf
@pytest.mark.parametrize("baseline", BASELINES, ids=lambda p: p.name)
def test_no_breaking_change_since_the_release(baseline: Path) -> None:
    result = _buf("breaking", PROTOS, "--against", baseline)
    assert result.returncode == 0, (
        f"breaking change against {baseline.name} (docs/api.md, Versioning):\n{result.stdout}{result.stderr}"
    )


def _changed_copy(tmp_path: Path, old: str, new: str) -> Path:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("releases", "*.py", "__pycache__"))
    proto = copy / "cxrmesh" / "v1" / "studyview.proto"
    text = proto.read_text()
    assert old in text, f"{old!r} not in studyview.proto: update this test's example"
    proto.write_text(text.replace(old, new, 1))
    return copy


@needs_buf
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("  int32 similar_k = 2;", ""),  # removed
        ("  int32 similar_k = 2;", "  int32 similar_k = 12;"),  # renumbered
    ],
    ids=["removed-field", "renumbered-field"],
)
def test_buf_breaking_catches_a_changed_field(tmp_path: Path, old: str, new: str) -> None:
    changed = _changed_copy(tmp_path, old, new)
    result = _buf("breaking", changed, "--against", PROTOS / "releases" / "cxrmesh-v1.binpb")
    assert result.returncode != 0, "buf breaking missed a removed/renumbered field"
    assert "similar_k" in result.stdout + result.stderr


def test_api_reference_is_current() -> None:
    docs = _api_docs()
    committed = docs.DOC.read_text()
    assert committed == docs.document(committed, docs.descriptor_set()), (
        "docs/api.md is stale: run `.venv/bin/python protos/gen_api_docs.py`"
    )


def test_api_reference_lists_every_service_method_and_message() -> None:
    docs = _api_docs()
    page = docs.DOC.read_text()
    for proto in docs.descriptor_set().file:
        for service in proto.service:
            assert f"### service {service.name}" in page
            for method in service.method:
                assert f"| `{method.name}` |" in page
        for message in proto.message_type:
            assert f"### message {message.name}" in page
