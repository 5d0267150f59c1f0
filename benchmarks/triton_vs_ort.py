"""Throughput of each model through Triton (CPU profile, gRPC) against ONNX Runtime in-process.

    python benchmarks/triton_vs_ort.py [--onnx-dir DIR] [--seconds 3] [--concurrency 8] [--threads 0]

For every ONNX model (and the BLS segmentation ensemble) at batch 1 and 8: ORT in this process called
back-to-back (the best a single caller gets without a server) against Triton fed by ``--concurrency``
client threads, so the dynamic batcher can merge requests. Prints samples/s, Triton/ORT ratio and the
mean batch Triton actually executed. Without ``--onnx-dir`` it uses the test suite's stand-in models,
which say something about serving overhead and nothing about the real networks. Client, server and
ORT share this machine's cores, so ratios are for this host only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from cxrmesh.contracts.tensors import BY_NAME, ONNX_MODELS, SEG_ENSEMBLE, ModelSpec
from cxrmesh.export import onnx_dir_for_tests
from cxrmesh.export.repository import write_repository
from cxrmesh.local.triton_server import running_server
from cxrmesh.ml.repository import onnx_path

BATCHES = (1, 8)


def _inputs_for(spec: ModelSpec, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {t.name: rng.random((batch, *t.dims), dtype=np.float32).astype(t.numpy_dtype) for t in spec.inputs}


def _session(repo: Path, name: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the served model does
    return ort.InferenceSession(str(onnx_path(repo, name)), options, providers=["CPUExecutionProvider"])


def _ort_runner(repo: Path, spec: ModelSpec, threads: int) -> Callable[[dict[str, np.ndarray]], object]:
    """One in-process call; for the ensemble, every member then the mean (what the BLS model does)."""
    if spec.members:
        sessions = [_session(repo, m, threads) for m in spec.members]
        return lambda feeds: np.mean([s.run(None, feeds)[0] for s in sessions], axis=0)
    session = _session(repo, spec.name, threads)
    return lambda feeds: session.run(None, feeds)


def _time_loop(call: Callable[[], object], seconds: float) -> int:
    """How many calls fit in ``seconds`` (after one warm-up call)."""
    call()
    calls, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        call()
        calls += 1
    return calls


def _ort_throughput(run: Callable[[dict[str, np.ndarray]], object], feeds: dict, seconds: float) -> float:
    batch = next(iter(feeds.values())).shape[0]
    start = time.perf_counter()
    calls = _time_loop(lambda: run(feeds), seconds)
    return calls * batch / (time.perf_counter() - start)


def _triton_throughput(
    url: str, spec: ModelSpec, feeds: dict[str, np.ndarray], seconds: float, concurrency: int
) -> tuple[float, float]:
    """Samples/s with ``concurrency`` threads each sending back-to-back requests, and Triton's mean batch."""
    batch = next(iter(feeds.values())).shape[0]
    outputs = [grpcclient.InferRequestedOutput(spec.outputs[0].name)]  # the ensemble's stack only on request
    counts = [0] * concurrency
    start_line = threading.Barrier(concurrency + 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        with grpcclient.InferenceServerClient(url) as client:
            inputs = []
            for name, array in feeds.items():
                tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            client.infer(spec.name, inputs, outputs=outputs)  # warm-up
            start_line.wait()
            try:
                while not stop.is_set():
                    client.infer(spec.name, inputs, outputs=outputs)
                    counts[slot] += 1
            except grpcclient.InferenceServerException as error:
                errors.append(error)

    with grpcclient.InferenceServerClient(url) as client:
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
        for thread in threads:
            thread.start()
        start_line.wait()
        before = client.get_inference_statistics(spec.name).model_stats[0]
        start = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        after = client.get_inference_statistics(spec.name).model_stats[0]
    if errors:
        raise RuntimeError(f"{spec.name}: {errors[0]}")
    executions = max(after.execution_count - before.execution_count, 1)
    return sum(counts) * batch / elapsed, (after.inference_count - before.inference_count) / executions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--onnx-dir", type=Path, help="directory of <name>.onnx (default: the committed model repository)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per model and batch")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads sending to Triton")
    parser.add_argument(
        "--threads", type=int, default=0, help="ORT intra-op threads, both sides (0 = ORT default)"
    )
    parser.add_argument("--models", nargs="*", help="only these models")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="triton-vs-ort-") as scratch:
        onnx_dir = args.onnx_dir
        if onnx_dir is None:
            onnx_dir = onnx_dir_for_tests(Path(scratch) / "onnx")
        repo = Path(scratch) / "repository"
        write_repository(onnx_dir, repo, intra_op_threads=args.threads)
        specs = [s for s in (*ONNX_MODELS, SEG_ENSEMBLE) if not args.models or s.name in args.models]
        rng = np.random.default_rng(0)

        print(
            f"{'model':<24}{'batch':>6}{'ORT/s':>10}{'Triton/s':>10}{'ratio':>8}{'mean batch':>12}",
            flush=True,
        )
        started = time.perf_counter()
        with running_server(repo) as server:
            print(f"(server ready in {time.perf_counter() - started:.1f} s)", flush=True)
            for spec in specs:
                run = _ort_runner(repo, BY_NAME[spec.name], args.threads)
                for batch in BATCHES:
                    feeds = _inputs_for(spec, batch, rng)
                    local = _ort_throughput(run, feeds, args.seconds)
                    served, mean_batch = _triton_throughput(
                        server.grpc_url, spec, feeds, args.seconds, args.concurrency
                    )
                    row = (spec.name, batch, local, served, served / local, mean_batch)
                    print("{:<24}{:>6}{:>10.1f}{:>10.1f}{:>8.2f}{:>12.1f}".format(*row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
