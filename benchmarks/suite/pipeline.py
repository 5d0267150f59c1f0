"""Pipeline: the whole local mesh against the same models in one process, on the same studies.

Why it is measured this way:

* **Closed-loop clients.** Each client sends a study, waits until its study view is complete
  (``WatchStudy``), then sends its next, as a caller that needs the answer does. One client gives the
  mesh's latency; 4 and 16 show what concurrency buys. Throughput is studies completed over the
  wall time of the pass.
* **The baseline** is ``inprocess.InProcessPipeline``: the same admission, models (ONNX Runtime)
  and domain code, one study after another in one process, on the same images, in a process of its
  own (so its peak memory is its own). The ratio mesh / in-process is what the mesh costs (< 1) or
  buys (> 1) in studies per minute on this machine.
* **The mesh** is what ``cxrmesh up`` starts (mutual TLS, authorization on, SQLite, Milvus Lite,
  tritonserver on CPU), the analysis services only: the DICOM gateway and the PACS sender are the
  hospital's front door and way back, measured in docs/pacs.md, and the baseline has no
  counterpart to them. Each pass sends fresh copies (``corpus.fresh_bytes``) so nothing is a
  duplicate.
* **Processes are read** after each pass: resident and peak memory (VmRSS, VmHWM) and CPU seconds
  of each process with its children, so the memory section can show growth with the corpus and
  the cost model can say which process saturates first.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from benchmarks.suite import corpus
from benchmarks.suite.common import ROOT, latency_summary, peak_rss_mib
from benchmarks.suite.procs import mesh_readings
from cxrmesh.client import ingest_bytes
from cxrmesh.local.mesh import SERVICES, Mesh, MeshState
from cxrmesh.v1 import ingestion_pb2_grpc, studyview_pb2, studyview_pb2_grpc

TITLE = "Pipeline: the mesh against the same models in one process"
ANALYSIS = tuple(s for s in SERVICES if s not in ("gateway", "pacs_sender"))


@dataclass(frozen=True)
class Plan:
    """How many studies each part sends: the first ``n`` of the same corpus everywhere.

    Sized to keep ``make bench`` within 30 minutes on 2 cores: the one-client pass and the baseline
    are latency-bound (one study at a time), so they send fewer; 16 clients send all 200.
    """

    studies: int  # distinct images generated
    baseline: int  # studies through the in-process baseline
    passes: tuple[tuple[int, int, int], ...]  # (replicas, clients, studies sent)


FULL = Plan(200, 100, ((1, 1, 20), (1, 4, 60), (1, 16, 200), (2, 16, 120)))
QUICK = Plan(6, 6, ((1, 1, 3), (1, 4, 6)))


def run(quick: bool, work: Path) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    items = corpus.studies(work / "corpus", plan.studies)
    baseline = _in_process(items[: plan.baseline], work)
    passes: list[dict[str, Any]] = []
    for replicas in sorted({p[0] for p in plan.passes}):
        mine = [(c, n) for r, c, n in plan.passes if r == replicas]
        passes += _mesh_passes(items, replicas, mine, work / f"mesh-{replicas}")
    return {
        "studies": plan.studies,
        "baseline": baseline,
        "passes": passes,
        "services": list(ANALYSIS),
        "cores": os.cpu_count() or 1,
    }


def _in_process(items: list[corpus.Study], work: Path) -> dict[str, Any]:
    """The baseline in a process of its own (spawned: its memory is its own, nothing inherited)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths, headers = [str(p) for p, _ in items], [h.SerializeToString() for _, h in items]
        return pool.submit(_in_process_child, paths, headers, str(work)).result()


def _in_process_child(paths: list[str], headers: list[bytes], work: str) -> dict[str, Any]:
    from benchmarks.suite.inprocess import InProcessPipeline
    from cxrmesh.v1 import ingestion_pb2

    heads = [ingestion_pb2.IngestHeader.FromString(h) for h in headers]
    data = [
        (corpus.encoded(corpus.fresh_copy(Path(p), "inproc")), h) for p, h in zip(paths, heads, strict=True)
    ]
    pipe = InProcessPipeline(ROOT / "model_repository", Path(tempfile.mkdtemp(dir=work, prefix="inproc-")))
    try:
        pipe.process(*data[0])  # warm-up (sessions, caches), as the mesh's first study is not timed either
        lat, stages, complete = [], {}, 0
        start = time.perf_counter()
        for blob, header in data:
            t0 = time.perf_counter()
            took = pipe.process(blob, header)
            for stage, seconds in took.items():
                stages[stage] = stages.get(stage, 0.0) + seconds
            lat.append(time.perf_counter() - t0)
            complete += "prognosis" in took  # a study admission refused stops there, as in the mesh
        wall = time.perf_counter() - start
    finally:
        pipe.close()
    return {
        "sent": len(data),
        "complete": complete,
        "refused": len(data) - complete,
        "per_min": len(data) / wall * 60,
        "latency": latency_summary(lat),
        "stage_s": {k: v / len(data) for k, v in stages.items()},
        "peak_rss_mib": peak_rss_mib(),
    }


def _mesh_passes(
    items: list[corpus.Study], replicas: int, passes: list[tuple[int, int]], home: Path
) -> list[dict[str, Any]]:
    mesh = Mesh(home, ports="auto", services=ANALYSIS, replicas=replicas)
    state = mesh.up(timeout_s=600)
    out: list[dict[str, Any]] = []
    try:
        _drive(state, replicas, corpus.fresh_bytes(items[:2], "warm"), clients=2)  # warm-up: not timed
        total = 2
        for clients, n in passes:
            sent = corpus.fresh_bytes(items[:n], f"r{replicas}c{clients}")
            before = mesh_readings(state)
            result = _drive(state, replicas, sent, clients)
            total += n
            result.update(replicas=replicas, clients=clients, corpus=total, before=before)
            result["procs"] = mesh_readings(state)
            result["disk_mib"] = {part: _du_mib(home / part) for part in ("data", "milvus")}
            out.append(result)
    finally:
        mesh.down()
    return out


def _du_mib(folder: Path) -> float:
    """What a folder of the mesh's durable state holds (blobs, database, index), in MiB."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def _drive(state: MeshState, replicas: int, items: list, clients: int) -> dict[str, Any]:
    """``clients`` closed-loop callers over ``items``; studies/min, latencies and verdicts."""
    channels = [state.channel("ingestion", r) for r in range(replicas)]
    view_channel = state.channel("studyview")
    ingest = [ingestion_pb2_grpc.IngestionServiceStub(ch) for ch in channels]
    view = studyview_pb2_grpc.StudyViewServiceStub(view_channel)
    todo = list(enumerate(items))
    lock = threading.Lock()
    lat, ack, failed, refused, errors = [], [], [0], [0], []

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i, (blob, header) = todo.pop(0)
            t0 = time.perf_counter()
            try:
                key = ingest_bytes(ingest[i % replicas], blob, header, timeout_s=120).study_key
                t1 = time.perf_counter()
                done = _watch(view, key)
            except grpc.RpcError as exc:
                with lock:  # a refusal (burned-in text in the synthetic corpus) is an answer too
                    refused[0] += exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                    errors.append(f"{exc.code().name}: {exc.details()}")
                continue
            with lock:
                ack.append(t1 - t0)
                lat.append(time.perf_counter() - t0)
                failed[0] += not done

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for ch in (*channels, view_channel):
        ch.close()
    return {
        "sent": len(items),
        "complete": len(lat) - failed[0],
        "failed": failed[0],
        "refused": refused[0],
        "errors": errors[:5],
        "per_min": (len(lat) + refused[0]) / wall * 60,
        "latency": latency_summary(lat),
        "ack": latency_summary(ack),
    }


def _watch(view: studyview_pb2_grpc.StudyViewServiceStub, key: str) -> bool:
    """Wait for the study's view to be complete; True when every stage is done (none failed)."""
    for snapshot in view.WatchStudy(studyview_pb2.GetStudyRequest(study_key=key, similar_k=1), timeout=900):
        if snapshot.complete:
            return all(s.state == studyview_pb2.STAGE_DONE for s in snapshot.stages)
    return False


def render(results: dict[str, Any], figures: Path) -> str:
    from benchmarks.suite.pipeline_page import page

    return page(results, figures, TITLE)
