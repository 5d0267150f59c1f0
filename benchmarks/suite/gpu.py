"""GPU inference: PyTorch FP32 against PyTorch FP16, ONNX Runtime CUDA and TensorRT, on one card.

Why it looks as it does. The GPU serving profile runs TensorRT plans (``export/build_trt.py``); this
section says what that buys over the plain ways to run the same networks on the same card. The baseline
is PyTorch eager FP32 (``cxrmesh.ml.nets``, default initialisation: the trained ``.pt`` weights are not
in the repository, and compute cost does not depend on weight values); FP16 is the same module under
``torch.autocast``; ONNX Runtime runs the committed ``model.onnx`` with its CUDA provider; TensorRT runs
plans built from the same files by the project's builder (FP16 kernels allowed, FP32 inputs and outputs).
Every call goes host to host - numpy in, results copied back - because that is what a serving process
does, and it makes the four runtimes comparable whatever each keeps on the device.

Each runtime appears only where it works on the machine: ORT CUDA where onnxruntime has the
``CUDAExecutionProvider`` (and really uses it), TensorRT where ``tensorrt`` imports and a GPU is
visible. Without CUDA the section returns at once with the plan and the commands to run it on a GPU host.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite.common import figure_path, fmt_spread, latency_summary, rate_for, spread, table
from benchmarks.suite.inference import torch_net
from cxrmesh.contracts.tensors import (
    BY_NAME,
    EMBEDDER,
    LANDMARKER,
    PROGNOSIS,
    SEG_MEMBERS,
    ModelSpec,
    example_inputs,
)

TITLE = "GPU: PyTorch FP32 vs FP16 vs ONNX Runtime CUDA vs TensorRT"
TORCH32, TORCH16, ORT_CUDA, TRT = "torch_fp32", "torch_fp16", "ort_cuda", "tensorrt"
RUNTIMES = (TORCH32, TORCH16, ORT_CUDA, TRT)
LABELS = {
    TORCH32: "PyTorch eager FP32",
    TORCH16: "PyTorch eager FP16 (autocast)",
    ORT_CUDA: "ONNX Runtime CUDA (FP32)",
    TRT: "TensorRT (FP16 allowed)",
}
FULL_MODELS = (EMBEDDER.name, LANDMARKER.name, *SEG_MEMBERS, PROGNOSIS.name)
QUICK_MODELS = (EMBEDDER.name, "lung_seg_fpn")

PLAN = [
    "detect CUDA (torch.cuda.is_available()) and record the card (torch.cuda.get_device_name)",
    f"models: {', '.join(FULL_MODELS)}; batch 1, 8 and 16; 1.5 s per point, 3 repeats (median and range)",
    "PyTorch eager FP32 (the baseline) and FP16 (torch.autocast) on the cxrmesh.ml.nets modules",
    "ONNX Runtime with CUDAExecutionProvider on model_repository/<name>/1/model.onnx, if onnxruntime has it",
    "TensorRT plans built by cxrmesh.export.build_trt.build_plan (FP16) into the run's scratch folder, "
    "if tensorrt imports; run with the TensorRT runtime",
    "not the segmentation ensemble: on the GPU profile it is the five members' plans plus a mean on the CPU",
    "every call host to host (numpy in, results on the host); samples/s, p50/p99 latency per call, "
    "ratio against PyTorch FP32",
]
COMMANDS = [
    "make install                                      # the project venv (.venv)",
    "# optional, for the ONNX Runtime CUDA and TensorRT columns (onnxruntime-gpu replaces onnxruntime):",
    ".venv/bin/pip uninstall -y onnxruntime && .venv/bin/pip install onnxruntime-gpu tensorrt",
    ".venv/bin/python -m benchmarks.suite --only gpu   # this section; the page keeps the others' results",
    "# TensorRT plans for Triton's GPU profile (model.plan beside each model.onnx), with the same builder:",
    ".venv/bin/python -m cxrmesh.export.build_trt model_repository",
    "# or one model by hand, if only trtexec is there:",
    "trtexec --onnx=model_repository/cxr_embedder/1/model.onnx --fp16 --minShapes=image:1x1x256x256 "
    "--optShapes=image:8x1x256x256 --maxShapes=image:16x1x256x256",
]


def _no_gpu_reason() -> str | None:
    """Why this machine cannot run the section, or None when PyTorch sees a CUDA device."""
    try:
        import torch
    except ImportError as error:
        return f"PyTorch cannot be imported ({error})"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False: no CUDA GPU is visible on this machine"
    return None


# --- the runtimes (each returns a host-to-host call, or a reason it is not available) ----------------


def _torch_call(spec: ModelSpec, fp16: bool) -> Callable[[dict[str, np.ndarray]], Any]:
    import torch

    net = torch_net(spec).cuda()

    def call(feeds: dict[str, np.ndarray]) -> list[Any]:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            out = net(*(torch.from_numpy(feeds[t.name]).cuda() for t in spec.inputs))
        return [t.float().cpu() for t in (out if isinstance(out, tuple) else (out,))]  # .cpu() waits

    return call


def _ort_call(spec: ModelSpec) -> Callable[[dict[str, np.ndarray]], Any] | str:
    import onnxruntime as ort

    from cxrmesh.ml.repository import model_repository, onnx_path

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    session = ort.InferenceSession(
        str(onnx_path(model_repository(), spec.name)),
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":  # ORT falls back silently when CUDA fails
        return f"onnxruntime fell back to {session.get_providers()[0]} (CUDA libraries missing?)"
    return lambda feeds: session.run(None, feeds)


def _trt_call(spec: ModelSpec, plans: Path) -> Callable[[dict[str, np.ndarray]], Any] | str:
    """Build ``spec``'s plan with the project's builder, then run it: inputs and outputs as torch buffers."""
    from cxrmesh.export.build_trt import PlanBuildError, build_plan, unavailable_reason
    from cxrmesh.ml.repository import model_repository, onnx_path

    reason = unavailable_reason()
    if reason:
        return reason
    import tensorrt as trt
    import torch

    if not hasattr(trt.IExecutionContext, "execute_async_v3"):
        return f"TensorRT {trt.__version__} predates the name-based API (execute_async_v3) used here"
    plans.mkdir(parents=True, exist_ok=True)
    try:
        plan = build_plan(onnx_path(model_repository(), spec.name), plans / f"{spec.name}.plan", spec)
    except PlanBuildError as error:
        return str(error)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    dtypes = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
    }
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    stream = torch.cuda.Stream()

    def call(feeds: dict[str, np.ndarray]) -> list[Any]:
        with torch.cuda.stream(stream):
            inputs = {name: torch.from_numpy(array).cuda() for name, array in feeds.items()}
            for name, tensor in inputs.items():
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            results = []
            for name in outputs:
                shape = tuple(context.get_tensor_shape(name))
                results.append(torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device="cuda"))
                context.set_tensor_address(name, results[-1].data_ptr())
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{spec.name}: TensorRT execution failed")
            return [t.cpu() for t in results]  # copies on ``stream`` and waits for it

    return call


def _calls(spec: ModelSpec, plans: Path) -> tuple[dict[str, Callable], dict[str, str]]:
    """The runtimes that work here for ``spec``, and why the others were skipped."""
    calls: dict[str, Callable] = {TORCH32: _torch_call(spec, False), TORCH16: _torch_call(spec, True)}
    skipped: dict[str, str] = {}
    for runtime, made in ((ORT_CUDA, _ort_call(spec)), (TRT, _trt_call(spec, plans))):
        if isinstance(made, str):
            skipped[runtime] = made
        else:
            calls[runtime] = made
    return calls, skipped


# --- the run ------------------------------------------------------------------------------------------


def _point(call: Callable, feeds: dict[str, np.ndarray], window: float) -> tuple[float, list[float]]:
    """Samples/s and per-call latencies of ``call`` on ``feeds`` for about ``window`` seconds."""
    return rate_for(lambda: call(feeds), window, next(iter(feeds.values())).shape[0])


def _measure(name: str, batches: tuple[int, ...], window: float, repeats: int, plans: Path) -> dict[str, Any]:
    spec = BY_NAME[name]
    calls, skipped = _calls(spec, plans)
    rows = []
    for batch in batches:
        feeds = example_inputs(spec, batch)
        got: dict[str, list[tuple[float, list[float]]]] = {r: [] for r in calls}
        for _ in range(repeats):  # interleaved across runtimes
            for runtime, call in calls.items():
                got[runtime].append(_point(call, feeds, window))
        for runtime, points in got.items():
            lat = latency_summary([x for _, lats in points for x in lats])
            rows.append(
                {
                    "model": name,
                    "runtime": runtime,
                    "batch": batch,
                    "samples_per_s": spread(r for r, _ in points),
                    "p50_ms": lat["p50_ms"],
                    "p99_ms": lat["p99_ms"],
                }
            )
    return {"rows": rows, "skipped": skipped}


def run(quick: bool, work: Path) -> dict[str, Any]:
    """Without CUDA: at once, the plan. With it: every model, batch and available runtime."""
    reason = _no_gpu_reason()
    if reason:
        return {"ran": False, "reason": reason, "plan": PLAN, "commands": COMMANDS}
    import onnxruntime as ort
    import torch

    models, batches = (QUICK_MODELS, (1, 8)) if quick else (FULL_MODELS, (1, 8, 16))
    window, repeats = (0.5, 1) if quick else (1.5, 3)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, dict[str, str]] = {}
    for name in models:
        got = _measure(name, batches, window, repeats, work / "plans")
        rows += got["rows"]
        skipped[name] = got["skipped"]
        torch.cuda.empty_cache()
        print(f"  gpu: {name} done", flush=True)
    shutil.rmtree(work / "plans", ignore_errors=True)
    return {
        "ran": True,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "tensorrt": _trt_version(),
        "window_s": window,
        "repeats": repeats,
        "rows": rows,
        "skipped": skipped,
    }


def _trt_version() -> str:
    try:
        import tensorrt as trt
    except (ImportError, OSError):
        return "absent"
    return trt.__version__


# --- the page -----------------------------------------------------------------------------------------


def _not_run(results: dict[str, Any]) -> str:
    plan = "\n".join(f"- {step}" for step in results["plan"])
    commands = "\n".join(results["commands"])
    return (
        f"## {TITLE}\n\n**Not yet run here**: {results['reason']}. The section measures, on a GPU host:\n\n"
        f"{plan}\n\nTo run it there (from the repository root):\n\n```sh\n{commands}\n```"
    )


def _figure(rows: list[dict[str, Any]], figures: Path, batch: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path, link = figure_path(figures, "gpu")
    models = list(dict.fromkeys(r["model"] for r in rows))
    at = {(r["model"], r["runtime"]): r["samples_per_s"]["median"] for r in rows if r["batch"] == batch}
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / len(RUNTIMES)
    for i, runtime in enumerate(RUNTIMES):
        xs = [m + (i - 1.5) * width for m, name in enumerate(models) if (name, runtime) in at]
        if xs:  # a runtime skipped on this host gets no bar and no legend entry
            heights = [at[(n, runtime)] for n in models if (n, runtime) in at]
            ax.bar(xs, heights, width, label=LABELS[runtime], color=f"C{i}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)), [m.replace("lung_seg_", "seg_") for m in models], rotation=20)
    ax.set_ylabel("samples/s (log)")
    ax.set_title(f"GPU throughput at batch {batch}, host to host")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return link


def _verdict(rows: list[dict[str, Any]]) -> str:
    """Where the served runtime (TensorRT) is beaten on this card, by how much, and why that can happen."""
    rate = {(r["model"], r["batch"], r["runtime"]): r["samples_per_s"]["median"] for r in rows}
    if not any(rt == TRT for _, _, rt in rate):
        return (
            "TensorRT, which the GPU serving profile runs, was not available here, so this run says only "
            "what FP16 and ONNX Runtime CUDA give over PyTorch FP32."
        )
    lost = []
    for (model, batch, runtime), value in rate.items():
        trt_rate = rate.get((model, batch, TRT))
        if runtime != TRT and trt_rate and value > 1.05 * trt_rate:
            lost.append(f"`{model}` at batch {batch} ({LABELS[runtime]} {value / trt_rate:.2f}× TensorRT)")
    if not lost:
        return "TensorRT, which the GPU serving profile runs, is fastest (within 5 %) at every point."
    return (
        "**Where TensorRT, the served runtime, is beaten:** " + "; ".join(lost) + ". At small batches "
        "and for the small models every runtime here is bound by the host-to-device copies and the launch "
        "of a call rather than by kernels, so the differences are per-call overheads; CUDA graphs "
        "(TensorRT's or `torch.compile`'s), pinned input buffers and larger dynamic batches would close them."
    )


def render(results: dict[str, Any], figures: Path) -> str:
    if not results.get("ran"):
        return _not_run(results)
    rows = results["rows"]
    base = {(r["model"], r["batch"]): r["samples_per_s"]["median"] for r in rows if r["runtime"] == TORCH32}
    body = [
        (
            f"`{r['model']}`",
            LABELS[r["runtime"]],
            r["batch"],
            fmt_spread(r["samples_per_s"], 0 if r["samples_per_s"]["median"] >= 100 else 1),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            "baseline"
            if r["runtime"] == TORCH32
            else f"{r['samples_per_s']['median'] / base[(r['model'], r['batch'])]:.2f}×",
        )
        for r in rows
    ]
    skipped = sorted({f"{LABELS[k]}: {v}" for s in results["skipped"].values() for k, v in s.items()})
    batches = sorted({r["batch"] for r in rows})
    link = _figure(rows, figures, 8 if 8 in batches else batches[-1])
    return "\n\n".join(
        [
            f"## {TITLE}",
            f"On **{results['device']}** (PyTorch {results['torch']}, CUDA {results['cuda']}, onnxruntime "
            f"{results['onnxruntime']}, TensorRT {results['tensorrt']}). Each model on random inputs, "
            "host to host (numpy in, results copied back), against PyTorch eager FP32 on the same card. "
            "PyTorch runs the networks with default initialisation (the trained weights are not in the "
            "repository; compute cost does not depend on them), ONNX Runtime and TensorRT the committed "
            f"ONNX files. {results['window_s']} s per point, {results['repeats']} repeats interleaved "
            "across runtimes: samples/s median (min–max); latency per call.",
            f"![GPU throughput per model and runtime]({link})",
            table(("model", "runtime", "batch", "samples/s", "p50 ms", "p99 ms", "vs FP32"), body, "lllrrrr"),
            ("Skipped here: " + "; ".join(skipped) + ".") if skipped else "Every runtime ran.",
            _verdict(rows),
        ]
    )
