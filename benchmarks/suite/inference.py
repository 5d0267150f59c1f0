"""Inference on the CPU: each model through Triton, through ONNX Runtime in-process and in PyTorch eager.

Why it looks as it does. The question is what serving through Triton costs against the cheapest way
to run the same ONNX file - an ``onnxruntime.InferenceSession`` in the caller's process, the
baseline of every ratio - and what the ONNX export buys against running the PyTorch module as it is.
All three run the same computation on the same random inputs (``contracts.tensors.example_inputs``):

* ONNX Runtime and Triton run the committed, trained ``model_repository/<name>/1/model.onnx``;
* PyTorch runs ``cxrmesh.ml.nets`` built with their default initialisation, because the trained
  ``.pt`` weights are not in the repository; compute cost does not depend on weight values;
* ONNX Runtime (in-process and inside Triton's python backend) and PyTorch get the same intra-op
  thread count, the machine's cores, and ORT does not spin, as the served model does not.

Triton (the real ``tritonserver`` with the CPU profile and its dynamic batcher, started by
``cxrmesh.local.triton_server``) is fed by ``CONCURRENCY`` client threads sending back to back so the
batcher can merge requests, and by one client so the per-call overhead shows on its own. Client,
server and in-process runs share the same cores, so the ratios hold for this host only. Points are
interleaved across runtimes and the batch-8 points repeated, so drift from other load hits every
runtime alike; the page prints the median and the range of the repeats.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite.common import (
    figure_path,
    fmt_spread,
    latency_summary,
    rate_for,
    rss_mib,
    spread,
    table,
    tree_pids,
)
from cxrmesh.contracts.tensors import (
    BY_NAME,
    EMBEDDER,
    LANDMARKER,
    PROGNOSIS,
    SEG_ENSEMBLE,
    ModelSpec,
    example_inputs,
)

TITLE = "Inference: Triton vs ONNX Runtime in-process vs PyTorch eager (CPU)"
CONCURRENCY = 4  # client threads feeding Triton: at batch 1 the batcher can merge up to 4, at 8 up to 16
KEY_BATCH = 8  # the repeated point
ORT, TORCH, TRITON_1, TRITON_N = "ort", "torch", "triton_c1", "triton_cN"
RUNTIMES = (ORT, TORCH, TRITON_1, TRITON_N)
LABELS = {
    ORT: "ONNX Runtime in-process",
    TORCH: "PyTorch eager",
    TRITON_1: "Triton, 1 client",
    TRITON_N: f"Triton, {CONCURRENCY} clients",
}
# The lightest (FPN) and the heaviest (UNet++) of the five members stand for them; the ensemble runs all five.
SEG_SAMPLE = ("lung_seg_fpn", "lung_seg_unetplusplus")


@dataclass(frozen=True)
class Plan:
    """What one run measures: models, batches, seconds per point and repeats of the batch-8 points."""

    models: tuple[str, ...]
    batches: tuple[int, ...]
    window_s: float
    repeats: int

    def batches_for(self, name: str) -> tuple[int, ...]:
        # The ensemble at 16 is twice its batch-8 work and ~4 s a call here: it would cost a minute
        # and say nothing the batch-8 point does not.
        return tuple(b for b in self.batches if not (name == SEG_ENSEMBLE.name and b > KEY_BATCH))

    def runtimes_for(self, name: str) -> tuple[str, ...]:
        # PyTorch's ensemble would be five eager members in a row: the members' rows already say it.
        return tuple(r for r in RUNTIMES if not (name == SEG_ENSEMBLE.name and r == TORCH))


QUICK = Plan((EMBEDDER.name, SEG_SAMPLE[0]), (1, 8), 0.5, 1)
FULL = Plan(
    (EMBEDDER.name, LANDMARKER.name, *SEG_SAMPLE, PROGNOSIS.name, SEG_ENSEMBLE.name), (1, 8, 16), 1.2, 3
)


# --- the three runtimes -------------------------------------------------------------------------------


def _ort_session(repo: Path, name: str, threads: int) -> Any:
    import onnxruntime as ort

    from cxrmesh.ml.repository import onnx_path

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the served model
    return ort.InferenceSession(str(onnx_path(repo, name)), options, providers=["CPUExecutionProvider"])


def _ort_call(repo: Path, spec: ModelSpec, threads: int) -> Callable[[dict[str, np.ndarray]], Any]:
    """One in-process call; for the ensemble, every member one after another, then the mean."""
    if spec.members:
        sessions = [_ort_session(repo, m, threads) for m in spec.members]
        return lambda feeds: np.mean([s.run(None, feeds)[0] for s in sessions], axis=0)
    session = _ort_session(repo, spec.name, threads)
    return lambda feeds: session.run(None, feeds)


def torch_net(spec: ModelSpec) -> Any:
    """The ``cxrmesh.ml.nets`` module of a model, default-initialised, in eval mode (also used by gpu)."""
    from cxrmesh.ml import nets

    named = {
        EMBEDDER.name: nets.Embedder,
        LANDMARKER.name: nets.Landmarker,
        PROGNOSIS.name: nets.PrognosisHead,
    }
    return (named[spec.name]() if spec.name in named else nets.Segmenter(spec.name)).eval()


def _torch_call(spec: ModelSpec) -> Callable[[dict[str, np.ndarray]], Any]:
    """The PyTorch module under ``inference_mode``; inputs in spec order."""
    import torch

    net = torch_net(spec)

    def call(feeds: dict[str, np.ndarray]) -> Any:
        with torch.inference_mode():
            return net(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))

    return call


def _triton_rate(
    url: str, spec: ModelSpec, feeds: dict[str, np.ndarray], seconds: float, concurrency: int, warm_up: bool
) -> tuple[float, list[float], float]:
    """``concurrency`` threads each sending back to back for ``seconds``: samples/s, latencies, mean batch.

    Every thread finishes the call it has in flight when time is up, and the clock stops when the last
    one has, so every counted sample lies inside the measured time. The mean batch is what Triton's
    dynamic batcher executed (from the server's statistics). ``warm_up``: each thread first makes one
    uncounted call (needed once per model and batch, not again in the repeats).
    """
    import tritonclient.grpc as grpcclient

    batch = next(iter(feeds.values())).shape[0]
    outputs = [grpcclient.InferRequestedOutput(t.name) for t in spec.outputs[:1]]  # not member_probs
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    warm, go, stop = threading.Barrier(concurrency + 1), threading.Barrier(concurrency + 1), threading.Event()

    def worker(slot: int) -> None:
        with grpcclient.InferenceServerClient(url) as client:
            inputs = []
            for name, array in feeds.items():
                tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            if warm_up:
                client.infer(spec.name, inputs, outputs=outputs)
            warm.wait()
            go.wait()
            try:
                while not stop.is_set() or not latencies[slot]:
                    t0 = time.perf_counter()
                    client.infer(spec.name, inputs, outputs=outputs)
                    latencies[slot].append(time.perf_counter() - t0)
            except grpcclient.InferenceServerException as error:
                errors.append(error)

    with grpcclient.InferenceServerClient(url) as client:
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
        for thread in threads:
            thread.start()
        warm.wait()  # every worker has made its warm-up call
        before = client.get_inference_statistics(spec.name).model_stats[0]
        go.wait()
        start = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        after = client.get_inference_statistics(spec.name).model_stats[0]
    if errors:
        raise RuntimeError(f"{spec.name} through Triton: {errors[0]}")
    calls = [x for lat in latencies for x in lat]
    executions = max(after.execution_count - before.execution_count, 1)
    mean_batch = (after.inference_count - before.inference_count) / executions
    return len(calls) * batch / elapsed, calls, mean_batch


# --- the run ------------------------------------------------------------------------------------------


def _repository(work: Path, threads: int) -> Path:
    """The served repository, written by the project's writer from the committed ONNX files."""
    from cxrmesh.export import onnx_dir_for_tests
    from cxrmesh.export.repository import write_repository

    repo = work / "repository"
    write_repository(onnx_dir_for_tests(work / "onnx"), repo, intra_op_threads=threads)
    return repo


def _to_load(models: Sequence[str]) -> list[str]:
    names = []
    for name in models:
        names += [*BY_NAME[name].members, name]
    return list(dict.fromkeys(names))


# One measurement: (inputs, seconds, first of its model and batch) -> samples/s, per-call latencies and
# (Triton only) the mean batch the server executed.
Measure = Callable[[dict[str, np.ndarray], float, bool], tuple[float, list[float], float | None]]


def _in_process(call: Callable[[dict[str, np.ndarray]], Any]) -> Measure:
    def measure(feeds: dict[str, np.ndarray], seconds: float, first: bool) -> tuple[float, list[float], None]:
        rate, lat = rate_for(lambda: call(feeds), seconds, next(iter(feeds.values())).shape[0])
        return rate, lat, None  # rate_for makes its own uncounted warm-up call

    return measure


def _measures(
    spec: ModelSpec, runtimes: Sequence[str], repo: Path, url: str, threads: int
) -> dict[str, Measure]:
    """How to measure ``spec`` in each runtime; built only for the runtimes asked (sessions, modules)."""
    made: dict[str, Callable[[], Measure]] = {
        ORT: lambda: _in_process(_ort_call(repo, spec, threads)),
        TORCH: lambda: _in_process(_torch_call(spec)),
        TRITON_1: lambda: lambda feeds, s, first: _triton_rate(url, spec, feeds, s, 1, first),
        TRITON_N: lambda: lambda feeds, s, first: _triton_rate(url, spec, feeds, s, CONCURRENCY, first),
    }
    return {r: made[r]() for r in runtimes}


def _measure_model(name: str, plan: Plan, repo: Path, url: str, threads: int) -> list[dict[str, Any]]:
    spec = BY_NAME[name]
    runtimes = plan.runtimes_for(name)
    measures = _measures(spec, runtimes, repo, url, threads)
    rows = []
    for batch in plan.batches_for(name):
        feeds = example_inputs(spec, batch)
        repeats = plan.repeats if batch == KEY_BATCH else 1
        got: dict[str, list[tuple[float, list[float], float | None]]] = {r: [] for r in runtimes}
        for repeat in range(repeats):  # interleaved: runtime after runtime, then again
            for runtime, measure in measures.items():
                got[runtime].append(measure(feeds, plan.window_s, repeat == 0))
        for runtime, points in got.items():
            lat = latency_summary([x for _, lats, _ in points for x in lats])
            mean_batch = [m for _, _, m in points if m is not None]
            rows.append(
                {
                    "model": name,
                    "runtime": runtime,
                    "batch": batch,
                    "samples_per_s": spread(r for r, _, _ in points),
                    "p50_ms": lat["p50_ms"],
                    "p99_ms": lat["p99_ms"],
                    "calls": lat["n"],
                    "mean_executed_batch": float(np.mean(mean_batch)) if mean_batch else None,
                }
            )
        print(f"  inference: {name} batch {batch} done", flush=True)
    return rows


def run(quick: bool, work: Path) -> dict[str, Any]:
    """Start Triton on the models of the plan, then measure every model, batch and runtime."""
    import torch

    from cxrmesh.local.triton_server import running_server

    plan = QUICK if quick else FULL
    threads = os.cpu_count() or 1
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    repo = _repository(work, threads)
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        with running_server(
            repo, explicit=True, load_models=_to_load(plan.models), log_path=work / "tritonserver.log"
        ) as server:
            server_start_s = time.perf_counter() - t0
            server_rss = sum(rss_mib(pid) for pid in tree_pids(server.process.pid))
            for name in plan.models:
                rows += _measure_model(name, plan, repo, server.grpc_url, threads)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "quick": quick,
        "threads": threads,
        "concurrency": CONCURRENCY,
        "window_s": plan.window_s,
        "repeats": plan.repeats,
        "key_batch": KEY_BATCH,
        "models": list(plan.models),
        "seg_members_measured": [m for m in plan.models if m in SEG_SAMPLE],
        "server_start_s": server_start_s,
        "server_rss_mib": server_rss,
        "elapsed_s": time.perf_counter() - started,
        "rows": rows,
    }


# --- the page -----------------------------------------------------------------------------------------


def _baseline(rows: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    return {(r["model"], r["batch"]): r["samples_per_s"]["median"] for r in rows if r["runtime"] == ORT}


def _ratio(row: dict[str, Any], base: dict[tuple[str, int], float]) -> float:
    ref = base.get((row["model"], row["batch"]), 0.0)
    return row["samples_per_s"]["median"] / ref if ref else float("nan")


def _label(row: dict[str, Any]) -> str:
    if row["model"] == SEG_ENSEMBLE.name and row["runtime"] == ORT:
        return LABELS[ORT] + " (5 members in a row, then the mean)"
    if row["runtime"] == TRITON_N and row["mean_executed_batch"] is not None:
        return f"{LABELS[TRITON_N]} (executed batch {row['mean_executed_batch']:.1f})"
    return LABELS[row["runtime"]]


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _times(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×"  # 0.0046×, not 0.00×


def _rate(s: dict[str, float]) -> str:
    return fmt_spread(s, 0 if s["median"] >= 100 else 1)


def _table(rows: list[dict[str, Any]]) -> str:
    base = _baseline(rows)
    body = [
        (
            f"`{r['model']}`",
            _label(r),
            r["batch"],
            _rate(r["samples_per_s"]),
            _ms(r["p50_ms"]),
            _ms(r["p99_ms"]),
            "baseline" if r["runtime"] == ORT else _times(_ratio(r, base)),
        )
        for r in rows
    ]
    return table(("model", "runtime", "batch", "samples/s", "p50 ms", "p99 ms", "vs ORT"), body, "lllrrrr")


def _figure(rows: list[dict[str, Any]], figures: Path, key_batch: int) -> str:
    """Left: samples/s at the key batch per model and runtime (log); right: Triton/ORT against batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    path, link = figure_path(figures, "inference")
    models = list(dict.fromkeys(r["model"] for r in rows))
    key = {(r["model"], r["runtime"]): r["samples_per_s"] for r in rows if r["batch"] == key_batch}
    fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(RUNTIMES)
    for i, runtime in enumerate(RUNTIMES):
        xs = [m + (i - 1.5) * width for m, name in enumerate(models) if (name, runtime) in key]
        got = [key[(name, runtime)] for name in models if (name, runtime) in key]
        err = [[s["median"] - s["min"] for s in got], [s["max"] - s["median"] for s in got]]
        bars.bar(
            xs, [s["median"] for s in got], width, yerr=err, label=LABELS[runtime], capsize=2, color=f"C{i}"
        )
    bars.set_yscale("log")
    bars.set_xticks(range(len(models)), [m.replace("lung_seg_", "seg_") for m in models], rotation=20)
    bars.set_ylabel("samples/s (log)")
    bars.set_title(f"Throughput at batch {key_batch} (bars: median, whiskers: range of repeats)")
    bars.legend(fontsize=8)
    base = _baseline(rows)
    for name in models:
        own = sorted(
            (r["batch"], _ratio(r, base)) for r in rows if r["model"] == name and r["runtime"] == TRITON_N
        )
        lines.plot(*zip(*own, strict=True), marker="o", label=name.replace("lung_seg_", "seg_"))
    lines.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    lines.set_yscale("log")  # the prognosis head sits near 0.05, the image models near 1
    lines.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    lines.set_xticks(sorted({r["batch"] for r in rows}))
    lines.set_xlabel("batch per call")
    lines.set_ylabel(f"Triton ({CONCURRENCY} clients) / ORT in-process")
    lines.set_title("Throughput ratio to the baseline")
    lines.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return link


def _losses(rows: list[dict[str, Any]]) -> str:
    """Where Triton (concurrent) is more than 5 % below in-process ORT, by how much; its per-call cost."""
    base = _baseline(rows)
    lost = [(r, _ratio(r, base)) for r in rows if r["runtime"] == TRITON_N]
    lost = [(r, x) for r, x in lost if x < 0.95]
    if lost:
        parts = [
            f"`{r['model']}` at batch {r['batch']} ({100 * (1 - x):.0f} % fewer samples/s)" for r, x in lost
        ]
        text = f"**Where Triton loses.** With {CONCURRENCY} clients it is behind in-process ORT at " + (
            "; ".join(parts) + "."
        )
    else:
        text = f"With {CONCURRENCY} clients Triton is within 5 % of in-process ORT, or ahead, at every point."
    p50 = {(r["model"], r["batch"], r["runtime"]): r["p50_ms"] for r in rows}
    extra = {
        m: p50[(m, 1, TRITON_1)] - p50[(m, 1, ORT)]
        for m, b, rt in p50
        if b == 1 and rt == ORT and (m, 1, TRITON_1) in p50 and m != SEG_ENSEMBLE.name  # not like for like
    }
    if extra:
        each = ", ".join(f"`{m}` {d:+.1f}" for m, d in extra.items())
        median = float(np.median(list(extra.values())))
        text += (
            f" One client at batch 1 waits a median {median:.1f} ms longer per "
            f"call (p50) than an in-process call ({each} ms): the round trip through gRPC and the python "
            "backend; where it comes out negative, the model's own run-to-run noise is larger than it."
        )
    return text


def _torch_note(rows: list[dict[str, Any]]) -> str:
    base = _baseline(rows)
    ratios = [_ratio(r, base) for r in rows if r["runtime"] == TORCH]
    if not ratios:
        return ""
    return (
        f"**PyTorch eager** reaches {min(ratios):.2f}–{max(ratios):.2f}× the ORT baseline here: ORT runs an "
        "optimised graph (constant folding, batch norm folded into convolutions, fused activations, "
        "memory planned once) without a Python dispatch per operator, which is why cxrmesh serves the "
        "ONNX export and keeps PyTorch for training."
    )


def _why() -> str:
    return (
        "**Why Triton loses where it does.** Every call crosses gRPC twice: the client serialises the "
        "input into protobuf (a 256×256 float32 image is 256 KiB; a segmentation answer, 3×256×256, is "
        "768 KiB per image), the server copies it into the python backend's shared memory, the backend's "
        "stub process wraps it for ONNX Runtime and the answer travels back the same way. That cost is "
        "per byte and per call, not per FLOP, so it is everything for the prognosis head (a few hundred "
        "parameters: its ceiling is the round trip) and a fraction for the image models, largest for the "
        "segmentation members whose outputs are three times their inputs. On this host the client threads, "
        "the server, the python stub and ONNX Runtime's worker threads also share the same few cores, so "
        "serialisation directly takes compute away from the model; the single-client rows show the pure "
        "per-call overhead, the concurrent rows how much the dynamic batcher wins back by merging calls "
        "(its executed batch is in the runtime column). The ensemble can come out ahead because its BLS "
        "backend sends the five member calls at once, where the in-process baseline runs them one after "
        "another.\n\n"
        "**What would close it.** Inputs through Triton's system shared memory (or CUDA IPC on a GPU) "
        "instead of the gRPC body removes the serialisation; on a GPU host the TensorRT profile replaces "
        "the python backend for every model but the ensemble (see the GPU section); a client on another "
        "host gives the server its cores back; and a caller that needs the prognosis head alone is better "
        "served in-process (it is a dot product)."
    )


def _intro(results: dict[str, Any]) -> str:
    members = results["seg_members_measured"]
    which = {
        0: "no segmentation member on its own",
        1: f"one segmentation member on its own ({', '.join(f'`{m}`' for m in members)})",
    }.get(
        len(members),
        f"segmentation members {', '.join(f'`{m}`' for m in members)} (the lightest and "
        "the heaviest of the five)",
    )
    ensemble = "; the ensemble runs all five" if SEG_ENSEMBLE.name in results["models"] else ""
    repeats = (
        f"the batch-{results['key_batch']} points are repeated {results['repeats']}× interleaved across "
        "runtimes (samples/s: median (min–max))"
        if results["repeats"] > 1
        else "no point is repeated (a quick run)"
    )
    return (
        "Each model on the same random inputs through three runtimes: **ONNX Runtime in-process** "
        "(one `InferenceSession` called back to back; the baseline of every ratio), **PyTorch eager** "
        "(the `cxrmesh.ml.nets` module in `inference_mode`) and **Triton** (the real `tritonserver`, "
        "CPU profile, dynamic batching, gRPC on loopback) with one client and with "
        f"{results['concurrency']} concurrent client threads. ONNX Runtime and Triton run the committed "
        "trained ONNX files; PyTorch runs the same networks with their default initialisation, as the "
        "trained `.pt` weights are not in the repository - compute cost does not depend on weight "
        f"values. ONNX Runtime (in-process and in Triton) and PyTorch all get {results['threads']} "
        f"intra-op threads (the machine's cores). Models: {', '.join(f'`{m}`' for m in results['models'])}, "
        f"with {which}{ensemble}. Points last {results['window_s']} s; {repeats}; latency is per call, "
        "over all repeats, and with concurrent clients includes the wait in Triton's queue. The server took "
        f"{results['server_start_s']:.0f} s to start and held {results['server_rss_mib']:.0f} MiB "
        "(all its processes) after loading."
    )


def render(results: dict[str, Any], figures: Path) -> str:
    rows = results["rows"]
    link = _figure(rows, figures, results["key_batch"])
    parts = [f"## {TITLE}", _intro(results), f"![Throughput per model and runtime]({link})", _table(rows)]
    return "\n\n".join(p for p in (*parts, _losses(rows), _torch_note(rows), _why()) if p)
