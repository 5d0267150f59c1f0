"""Generate the Python code of the cxrmesh.v1 contracts into src/cxrmesh/v1 (``make protos``).

The generated modules are committed so that installing the package needs no protoc; a test
(tests/unit/test_protos.py) regenerates into a temporary folder and fails when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent
PACKAGE = "cxrmesh/v1"
INIT = '"""Generated gRPC/protobuf code of the cxrmesh.v1 contracts (see protos/; do not edit)."""\n'


def generate(out: Path) -> list[Path]:
    """Run protoc for every .proto under protos/cxrmesh/v1 into ``out`` (a source root)."""
    sources = sorted((PROTOS / PACKAGE).glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s.relative_to(PROTOS)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    (out / PACKAGE / "__init__.py").write_text(INIT)
    return sorted((out / PACKAGE).iterdir())


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTOS.parent / "src"
    for path in generate(target):
        print(path)
