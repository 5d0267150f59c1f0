"""Export: PyTorch -> ONNX -> TensorRT, and the Triton model repository writer (``cxrmesh.export``)."""

from __future__ import annotations

from pathlib import Path

# The committed model repository at the project root (served by `make demo`).
REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def onnx_dir_for_tests(scratch: Path) -> Path:
    """The committed, trained ONNX models as ``<name>.onnx`` links in ``scratch`` (tests serve these)."""
    from cxrmesh.contracts.tensors import ONNX_MODELS

    scratch.mkdir(parents=True, exist_ok=True)
    for spec in ONNX_MODELS:
        source = REPOSITORY / spec.name / "1" / "model.onnx"
        if not source.is_file():
            raise FileNotFoundError(f"{source} missing: run `cxrmesh export` to rebuild the model repository")
        link = scratch / f"{spec.name}.onnx"
        link.unlink(missing_ok=True)
        link.symlink_to(source)
    return scratch
