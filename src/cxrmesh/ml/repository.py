"""The Triton model repository on disk: where it is, how its files are laid out, and what its configs say.

The exporter writes the repository, the Triton launcher serves it and the in-process ONNX runner
(``cxrmesh.ml.onnx_models``) reads it; this module is the one place that knows its location (the
``CXRMESH_MODEL_REPOSITORY`` setting), its file names and how to read the served ensemble's member
weights. It sits in ``cxrmesh.ml``, the lowest layer that reads the repository, so that the exporter
and the local stack above use it without the runner importing upwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrmesh.contracts.tensors import SEG_ENSEMBLE, ModelSpec

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2 as mc

ENV_MODEL_REPOSITORY = "CXRMESH_MODEL_REPOSITORY"
DEFAULT_MODEL_REPOSITORY = "model_repository"  # under the working directory (make and tests run at the root)

CONFIG_FILE = "config.pbtxt"  # the GPU profile
CPU_PROFILE = "cpu"  # the --model-config-name of the CPU profile: <model>/configs/cpu.pbtxt
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
CARD_FILE = "model_card.md"
VERSION = 1


def model_repository() -> Path:
    """The model repository to serve and read: ``$CXRMESH_MODEL_REPOSITORY``, else ``./model_repository``."""
    path = Path(os.environ.get(ENV_MODEL_REPOSITORY) or DEFAULT_MODEL_REPOSITORY).resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"no model repository at {path}: set {ENV_MODEL_REPOSITORY} to one, or run from the project "
            "root (`cxrmesh export` writes it)"
        )
    return path


def onnx_path(repository: Path, name: str, version: int = VERSION) -> Path:
    """Where a model's ONNX file lives in ``repository`` (``<name>/<version>/model.onnx``)."""
    return Path(repository) / name / str(version) / ONNX_FILE


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` the way Triton does (protobuf text format)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def member_weights(repository: Path, spec: ModelSpec = SEG_ENSEMBLE) -> np.ndarray:
    """The ensemble's normalised member weights as served from ``repository`` (equal when unset)."""
    config = read_config(Path(repository) / spec.name / CONFIG_FILE)
    raw = config.parameters["member_weights"].string_value if "member_weights" in config.parameters else ""
    weights = np.array([float(w) for w in raw.split(",")]) if raw else np.ones(len(spec.members))
    return weights / weights.sum()
