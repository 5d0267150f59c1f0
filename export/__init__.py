"""Export: PyTorch -> ONNX -> TensorRT, the Triton model repository writer and our Triton backends."""

from __future__ import annotations

from pathlib import Path


def onnx_dir_for_tests(scratch: Path) -> Path:
    """The committed, trained ONNX models as ``<name>.onnx`` links in ``scratch`` (tests serve these).

    They come from the model repository of ``cxrmesh.ml.repository.model_repository``
    (``$CXRMESH_MODEL_REPOSITORY``, else ``./model_repository``).
    """
    from cxrmesh.contracts.tensors import ONNX_MODELS
    from cxrmesh.ml.repository import model_repository, onnx_path

    repository = model_repository()
    scratch.mkdir(parents=True, exist_ok=True)
    for spec in ONNX_MODELS:
        source = onnx_path(repository, spec.name)
        if not source.is_file():
            raise FileNotFoundError(f"{source} missing: run `cxrmesh export` to rebuild the model repository")
        link = scratch / f"{spec.name}.onnx"
        link.unlink(missing_ok=True)
        link.symlink_to(source)
    return scratch
