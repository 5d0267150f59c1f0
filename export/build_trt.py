"""Build the GPU profile's TensorRT plans: ``<repo>/<model>/<version>/model.plan`` from ``model.onnx``.

A plan is specific to the GPU model and TensorRT version it was built with, so plans are built on the
target GPU host, never shipped from elsewhere: ``python -m cxrmesh.export.build_trt <repository>``.
FP16 kernels are allowed (inputs and outputs stay FP32, as the config says); each model gets one
optimisation profile covering batch 1..max batch (tuned for batch 8) with the spec's other dims fixed.
Where TensorRT or a CUDA GPU is missing the command says so in one line and exits non-zero.
TensorRT is imported inside functions so this module imports anywhere.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from collections.abc import Sequence
from pathlib import Path

from cxrmesh.contracts.tensors import ONNX_MODELS, ModelSpec
from cxrmesh.ml.repository import ONNX_FILE, PLAN_FILE

OPT_BATCH = 8
NOT_INSTALLED = (
    "TensorRT is not installed (pip install tensorrt on the GPU host) — plans must be built on the target GPU"
)


class PlanBuildError(RuntimeError):
    """TensorRT is unusable here or refused a model; the message is the one line to show."""


def _cuda_device_count() -> tuple[int, str]:
    """Visible CUDA devices via the driver API (no torch or CUDA toolkit needed), with why there are none."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    status = cuda.cuInit(0)
    if status != 0:
        return 0, f"the CUDA driver found no usable GPU (cuInit error {status})"
    count = ctypes.c_int(0)
    status = cuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return 0, "the CUDA driver reports no GPU (check CUDA_VISIBLE_DEVICES)"
    return count.value, ""


def unavailable_reason() -> str | None:
    """Why plans cannot be built on this machine, or None when TensorRT and a CUDA GPU are both present."""
    try:
        import tensorrt  # noqa: F401
    except ModuleNotFoundError:
        return NOT_INSTALLED
    except (ImportError, OSError) as error:  # installed but its libraries (libnvinfer, CUDA) do not load
        return f"TensorRT cannot be imported ({error}) — plans must be built on the target GPU"
    count, why = _cuda_device_count()
    if count == 0:
        return f"no CUDA GPU is visible ({why}) — plans must be built on the target GPU"
    return None


def build_plan(
    onnx_path: Path, plan_path: Path, spec: ModelSpec, *, fp16: bool = True, opt_batch: int = OPT_BATCH
) -> Path:
    """Parse ``onnx_path``, build an engine for ``spec``'s batch range and write it to ``plan_path``."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PlanBuildError(f"{spec.name}: TensorRT cannot parse {onnx_path}: {errors}")

    found = {network.get_input(i).name for i in range(network.num_inputs)}
    expected = {t.name for t in spec.inputs}
    if found != expected:
        raise PlanBuildError(
            f"{spec.name}: ONNX inputs {sorted(found)} differ from the spec's {sorted(expected)}"
        )

    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    opt = min(opt_batch, spec.max_batch_size)
    for tensor in spec.inputs:
        if any(d < 0 for d in tensor.dims):
            raise PlanBuildError(
                f"{spec.name}: input {tensor.name} has a dynamic non-batch dim {tensor.dims}"
            )
        profile.set_shape(
            tensor.name, (1, *tensor.dims), (opt, *tensor.dims), (spec.max_batch_size, *tensor.dims)
        )
    config.add_optimization_profile(profile)

    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise PlanBuildError(f"{spec.name}: TensorRT failed to build an engine (see its log above)")
    plan_path.write_bytes(bytes(engine))
    return plan_path


def build_repository(
    repo: Path, *, models: Sequence[str] | None = None, version: int = 1, fp16: bool = True
) -> list[Path]:
    """Build ``model.plan`` beside ``model.onnx`` for the chosen (default: all) ONNX models of ``repo``."""
    reason = unavailable_reason()
    if reason:
        raise PlanBuildError(reason)
    specs = [s for s in ONNX_MODELS if models is None or s.name in models]
    unknown = set(models or ()) - {s.name for s in ONNX_MODELS}
    if unknown:
        raise PlanBuildError(f"not ONNX models of the spec: {', '.join(sorted(unknown))}")
    plans = []
    for spec in specs:
        onnx_path = repo / spec.name / str(version) / ONNX_FILE
        if not onnx_path.is_file():
            raise PlanBuildError(f"{spec.name}: {onnx_path} not found (write the repository first)")
        plans.append(build_plan(onnx_path, onnx_path.with_name(PLAN_FILE), spec, fp16=fp16))
        print(f"built {plans[-1]}", file=sys.stderr)
    return plans


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 0 with all plans built, else 1 with a one-line reason on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m cxrmesh.export.build_trt", description=__doc__.splitlines()[0]
    )
    parser.add_argument("repository", type=Path, help="model repository written by cxrmesh.export.repository")
    parser.add_argument("--model", action="append", dest="models", help="build only this model (repeatable)")
    parser.add_argument("--version", type=int, default=1, help="model version directory (default 1)")
    parser.add_argument("--fp32", action="store_true", help="disallow FP16 kernels")
    args = parser.parse_args(argv)
    try:
        build_repository(args.repository, models=args.models, version=args.version, fp16=not args.fp32)
    except PlanBuildError as error:
        print(f"build_trt: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
