"""Writes the Triton model repository that serves cxrmesh on GPU (TensorRT) and on CPU (ONNX Runtime).

One repository, two serving profiles chosen at server start:

* ``<model>/config.pbtxt`` - the GPU profile: ``tensorrt_plan`` on ``KIND_GPU`` from ``<version>/model.plan``
  (built on the target GPU by ``python -m cxrmesh.export.build_trt``);
* ``<model>/configs/cpu.pbtxt`` - the CPU profile, picked by ``tritonserver --model-config-name=cpu``:
  the python-based backend ``cxrmesh_onnxruntime`` on ``KIND_CPU`` running ``<version>/model.onnx`` with
  ONNX Runtime.

``lung_seg_ensemble`` is a BLS model on the python-based backend ``cxrmesh_seg_ensemble`` in both
profiles: it holds no weights and calls whichever members the profile serves. The backends' code lives
in ``export/triton_backends/`` (see ``cxrmesh.export.backends``), not in the repository, which holds
configs, ONNX files and model cards only. Every tensor name, dtype and dim
comes from ``cxrmesh.contracts.tensors``; configs are built as ``ModelConfig`` protobuf messages and
printed with ``text_format``, so they always parse and never drift from the spec.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from cxrmesh.contracts.tensors import BY_NAME, ONNX_MODELS, SEG_ENSEMBLE, ModelSpec, Tensor
from cxrmesh.export.backends import ONNX_RUNTIME_BACKEND, SEG_ENSEMBLE_BACKEND
from cxrmesh.ml.repository import (
    CARD_FILE,
    CONFIG_FILE,
    CPU_PROFILE,
    ONNX_FILE,
    PLAN_FILE,
    VERSION,
    onnx_path,
)

COMPOSITE_MODELS: tuple[ModelSpec, ...] = (SEG_ENSEMBLE,)
# Triton serves a model only with a version folder; a composite model's holds no file of its own, and git
# keeps no empty folder, so it gets this empty marker.
VERSION_MARKER = ".gitkeep"


@dataclass(frozen=True)
class Batching:
    """Dynamic-batching policy shared by every model: a short wait buys larger, cheaper batches."""

    preferred: tuple[int, ...] = (4, 8, 16)
    max_queue_delay_us: int = 2000


def _io(
    tensor: Tensor, message: type[mc.ModelInput] | type[mc.ModelOutput]
) -> mc.ModelInput | mc.ModelOutput:
    return message(name=tensor.name, data_type=mc.DataType.Value(tensor.dtype), dims=list(tensor.dims))


def _base(spec: ModelSpec, batching: Batching | None) -> mc.ModelConfig:
    """What both profiles share: name, batch limit, tensors, batching and version policy."""
    batching = batching or Batching()
    return mc.ModelConfig(
        name=spec.name,
        max_batch_size=spec.max_batch_size,
        input=[_io(t, mc.ModelInput) for t in spec.inputs],
        output=[_io(t, mc.ModelOutput) for t in spec.outputs],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=[b for b in batching.preferred if b <= spec.max_batch_size],
            max_queue_delay_microseconds=batching.max_queue_delay_us,
        ),
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
    )


def _parameters(config: mc.ModelConfig, values: Mapping[str, str]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = value


def gpu_config(spec: ModelSpec, batching: Batching | None = None) -> mc.ModelConfig:
    """GPU profile of an ONNX model: the TensorRT plan, one instance on the GPU."""
    config = _base(spec, batching)
    config.platform = "tensorrt_plan"
    config.default_model_filename = PLAN_FILE
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    return config


def cpu_config(
    spec: ModelSpec, batching: Batching | None = None, intra_op_threads: int = 0
) -> mc.ModelConfig:
    """CPU profile of an ONNX model: ONNX Runtime in our python-based backend, one CPU instance."""
    config = _base(spec, batching)
    config.backend = ONNX_RUNTIME_BACKEND
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
    _parameters(config, {"onnx_file": ONNX_FILE, "intra_op_threads": str(intra_op_threads)})
    return config


def ensemble_config(
    spec: ModelSpec = SEG_ENSEMBLE,
    batching: Batching | None = None,
    member_weights: Mapping[str, float] | None = None,
) -> mc.ModelConfig:
    """Both profiles of the segmentation ensemble: a BLS model on the CPU that calls the members.

    ``member_weights`` (member name -> weight, fitted on validation) make the mean a weighted one.
    """
    members = [BY_NAME[name] for name in spec.members]
    (member_input,) = {m.inputs for m in members}  # members must share one contract
    (member_output,) = {m.outputs for m in members}
    if len(member_input) != 1 or len(member_output) != 1 or len(spec.inputs) != 1:
        raise ValueError(f"{spec.name}: the BLS ensemble expects single-input, single-output members")
    (probs,) = member_output
    (mean,) = [t for t in spec.outputs if t.dims == probs.dims]
    (stack,) = [t for t in spec.outputs if t.dims == (len(members), *probs.dims)]
    config = _base(spec, batching)
    config.backend = SEG_ENSEMBLE_BACKEND
    config.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
    _parameters(
        config,
        {
            "members": ",".join(spec.members),
            "member_input": member_input[0].name,
            "member_output": probs.name,
            "mean_output": mean.name,
            "stack_output": stack.name,
            **({"member_weights": format_weights(spec, member_weights)} if member_weights else {}),
        },
    )
    return config


def format_weights(spec: ModelSpec, member_weights: Mapping[str, float]) -> str:
    """The ``member_weights`` parameter: one weight per member, in the members' order."""
    if set(member_weights) != set(spec.members) or any(w < 0 for w in member_weights.values()):
        raise ValueError(f"{spec.name}: member weights must be >= 0 for exactly {list(spec.members)}")
    if sum(member_weights.values()) <= 0:
        raise ValueError(f"{spec.name}: member weights sum to 0")
    return ",".join(f"{member_weights[m]:.6g}" for m in spec.members)


def config_text(config: mc.ModelConfig) -> str:
    """The config in Triton's ``config.pbtxt`` text format."""
    return text_format.MessageToString(config)


def _tensor_rows(direction: str, tensors: Sequence[Tensor], max_batch: int) -> list[str]:
    return [
        f"| {direction} | `{t.name}` | {t.dtype} | [1..{max_batch}, {', '.join(map(str, t.dims))}] |"
        for t in tensors
    ]


def default_card(spec: ModelSpec) -> str:
    """A model card stub with the serving contract; data, training and metrics are left to be filled."""
    lines = [
        f"# {spec.name}",
        "",
        spec.description,
        "",
        "## Serving contract",
        "",
        f"Batched (max batch {spec.max_batch_size}); dims below include the leading batch dimension.",
        "",
        "| direction | tensor | dtype | shape |",
        "| --- | --- | --- | --- |",
        *_tensor_rows("input", spec.inputs, spec.max_batch_size),
        *_tensor_rows("output", spec.outputs, spec.max_batch_size),
        "",
    ]
    if spec.members:
        lines += [f"Members: {', '.join(f'`{m}`' for m in spec.members)}.", ""]
    lines += ["## Training data", "", "_To be filled._", "", "## Metrics", "", "_To be filled._", ""]
    return "\n".join(lines)


def _copy_onnx(source: Path, target: Path) -> None:
    """Copy an ONNX model as one self-contained file; weights the exporter kept outside are pulled in.

    Torch's exporter may write ``<name>.onnx.data`` beside the graph, referenced by that file name,
    which would dangle once the graph is renamed to ``model.onnx``.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    graph_only = onnx.load(str(source), load_external_data=False)
    if not any(uses_external_data(t) for t in graph_only.graph.initializer):
        shutil.copyfile(source, target)
        return
    onnx.save_model(onnx.load(str(source)), str(target), save_as_external_data=False)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_repository(
    onnx_dir: Path,
    out: Path,
    *,
    version: int = VERSION,
    cards: Mapping[str, str] | None = None,
    batching: Batching | None = None,
    intra_op_threads: int = 0,
    ensemble_weights: Mapping[str, float] | None = None,
) -> list[str]:
    """Write every model of ``cxrmesh.contracts.tensors`` into the repository ``out``; returns the names.

    ``onnx_dir`` holds ``<name>.onnx`` for each ONNX model. ``cards`` maps model names to model-card
    Markdown; models without one get ``default_card``. ``ensemble_weights`` are the segmentation
    members' weights (equal when None). ``intra_op_threads`` goes to ONNX Runtime in the
    CPU profile (0 = one per core). Files this function does not write (a ``model.plan`` from
    ``build_trt``) are left alone, so rebuild plans after writing new ONNX files.
    """
    missing = [s.name for s in ONNX_MODELS if not (onnx_dir / f"{s.name}.onnx").is_file()]
    if missing:
        raise FileNotFoundError(
            f"no ONNX file in {onnx_dir} for: {', '.join(missing)} (expected <name>.onnx)"
        )
    cards = dict(cards or {})
    unknown = set(cards) - set(BY_NAME)
    if unknown:
        raise ValueError(f"model cards for unknown models: {sorted(unknown)}")

    for spec in ONNX_MODELS:
        model_dir = out / spec.name
        _write(model_dir / CONFIG_FILE, config_text(gpu_config(spec, batching)))
        _write(
            model_dir / "configs" / f"{CPU_PROFILE}.pbtxt",
            config_text(cpu_config(spec, batching, intra_op_threads)),
        )
        target = onnx_path(out, spec.name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_onnx(onnx_dir / f"{spec.name}.onnx", target)
        _write(model_dir / CARD_FILE, cards.get(spec.name, default_card(spec)))
    for spec in COMPOSITE_MODELS:
        model_dir = out / spec.name
        text = config_text(ensemble_config(spec, batching, ensemble_weights))
        _write(model_dir / CONFIG_FILE, text)
        _write(model_dir / "configs" / f"{CPU_PROFILE}.pbtxt", text)
        _write(model_dir / str(version) / VERSION_MARKER, "")
        _write(model_dir / CARD_FILE, cards.get(spec.name, default_card(spec)))
    return [s.name for s in (*ONNX_MODELS, *COMPOSITE_MODELS)]
