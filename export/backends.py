"""cxrmesh's Triton python-based backends: their names (what configs say) and their source folders.

A python-based backend is a folder ``<backend directory>/<name>/model.py`` that Triton runs, through the
python backend's stub, for every model whose config says ``backend: "<name>"``; so the model repository
holds configs, ONNX files and model cards only, and each implementation is written once, in
``export/triton_backends/<name>/model.py``. The Triton launcher (``cxrmesh.local.triton_server``) and
``docker/Dockerfile.triton`` install these folders beside the python backend.
"""

from __future__ import annotations

from pathlib import Path

ONNX_RUNTIME_BACKEND = "cxrmesh_onnxruntime"  # every ONNX model on the CPU profile
SEG_ENSEMBLE_BACKEND = "cxrmesh_seg_ensemble"  # the segmentation ensemble (BLS), both profiles
BACKENDS: tuple[str, ...] = (ONNX_RUNTIME_BACKEND, SEG_ENSEMBLE_BACKEND)
SOURCES = Path(__file__).resolve().parent / "triton_backends"


def backend_folders() -> dict[str, Path]:
    """Backend name -> the folder to install as ``<backend directory>/<name>`` (it holds ``model.py``)."""
    folders = {name: SOURCES / name for name in BACKENDS}
    missing = [str(folder) for folder in folders.values() if not (folder / "model.py").is_file()]
    if missing:
        raise FileNotFoundError(f"Triton backend sources missing (a broken install?): {', '.join(missing)}")
    return folders
