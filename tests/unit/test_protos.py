"""The committed generated code matches protos/ (regenerated with the pinned grpcio-tools)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = _generator().generate(tmp_path)
    committed = ROOT / "src" / "cxrmesh" / "v1"
    assert sorted(p.name for p in fresh) == sorted(p.name for p in committed.iterdir() if p.is_file()), (
        "generated files differ from src/cxrmesh/v1: run `make protos`"
    )
    stale = [p.name for p in fresh if p.read_bytes() != (committed / p.name).read_bytes()]
    assert not stale, f"stale generated code {stale}: run `make protos` and commit"


def test_every_topic_has_one_message_type_and_is_documented() -> None:
    from cxrmesh.contracts import topics

    doc = (ROOT / "docs" / "topics.md").read_text()
    for topic, message in topics.MESSAGE_TYPES.items():
        assert f"`{topic}`" in doc, f"{topic} is not documented in docs/topics.md"
        assert message.DESCRIPTOR.full_name in doc, (
            f"{message.DESCRIPTOR.full_name} missing in docs/topics.md"
        )
