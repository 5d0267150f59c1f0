"""Ingest-to-searchable latency and throughput of the local mesh (a benchmark, not a test).

Starts a mesh (free ports, a temporary home), streams N synthetic DICOM studies to ingestion
from ``--clients`` threads, and polls search until each study is answerable by its study key.
Prints the ingest acknowledgement latency, the ingest-to-searchable latency (p50/p95) and
studies per minute end to end. Example (500 studies, corpus generated first if missing):

    python benchmarks/mesh_throughput.py --n 500 --corpus data/bench-500

``--tls both`` runs the same studies twice in one run, on a fresh mesh each time, with mutual TLS
(the default) and with ``--insecure`` plaintext, and prints the throughput ratio (TLS / plaintext).
An insecure mesh runs without authorization; ``--auth-off`` turns it off in the TLS run too, so the
ratio is the cost of TLS alone.

``--scale`` runs the same studies through three fresh meshes with every service started: one
replica on SQLite (the baseline), two replicas on SQLite, one replica on PostgreSQL, each until
every study's view is complete, and prints two ratios against the baseline: what a second replica
of every service buys on this machine, and what PostgreSQL costs against SQLite:

    python benchmarks/mesh_throughput.py --scale --n 200 --corpus data/bench-500
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from cxrmesh.client import ingest_bytes, manifest_headers
from cxrmesh.local.mesh import SERVICES, Mesh
from cxrmesh.synth.corpus import generate
from cxrmesh.v1 import ingestion_pb2_grpc, search_pb2, search_pb2_grpc, studyview_pb2, studyview_pb2_grpc


@dataclass(frozen=True)
class Setup:
    """One mesh configuration of a run."""

    label: str
    insecure: bool = False
    replicas: int = 1
    database: str = "sqlite"
    services: tuple[str, ...] = ()  # empty: --services
    until: str = "searchable"  # or "complete" (every stage of the study view done)


def run_mesh(headers: list, args: argparse.Namespace, setup: Setup) -> float:
    """One mesh, all ``headers`` ingested and polled until searchable (or complete); studies per minute."""
    home = Path(tempfile.mkdtemp(prefix="cxrmesh-bench-"))
    os.chmod(home, 0o711)  # the postgres user must enter it (--scale's PostgreSQL run); inside stays 0700
    env = {"CXRMESH_AUTH_MODE": "off"} if args.auth_off else {}
    services = setup.services or tuple(args.services.split(","))
    mesh = Mesh(
        home,
        ports="auto",
        services=services,
        insecure=setup.insecure,
        env=env,
        replicas=setup.replicas,
        database=setup.database,
    )
    state = mesh.up(timeout_s=300)
    acked: dict[str, float] = {}
    ack_latency: list[float] = []
    searchable: dict[str, float] = {}
    lock = threading.Lock()
    done_sending = threading.Event()
    try:
        # clients spread over the ingestion replicas, as a load balancer would
        ings = [state.channel("ingestion", r) for r in range(setup.replicas)]
        sea = state.channel("studyview" if setup.until == "complete" else "search")
        ingest = [ingestion_pb2_grpc.IngestionServiceStub(ch) for ch in ings]
        search = search_pb2_grpc.SearchServiceStub(sea)
        view = studyview_pb2_grpc.StudyViewServiceStub(sea)

        def reached(key: str) -> bool:
            if setup.until == "complete":
                got = view.GetStudy(studyview_pb2.GetStudyRequest(study_key=key, similar_k=1), timeout=10)
                return got.complete
            search.FindSimilar(search_pb2.FindSimilarRequest(study_key=key, k=1), timeout=10)
            return True

        def send(item: tuple[int, tuple[Path, object]]) -> None:
            i, (path, header) = item
            data = path.read_bytes()
            t0 = time.monotonic()
            reply = ingest_bytes(ingest[i % len(ingest)], data, header)
            t1 = time.monotonic()
            with lock:
                acked[reply.study_key] = t0
                ack_latency.append(t1 - t0)

        def poll() -> None:
            while not (done_sending.is_set() and len(searchable) >= len(acked)):
                with lock:
                    pending = [k for k in acked if k not in searchable]
                for key in pending:
                    try:
                        if reached(key):
                            searchable[key] = time.monotonic()
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.NOT_FOUND:
                            raise
                time.sleep(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        start = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(send, enumerate(headers)))
        done_sending.set()
        poller.join(timeout=args.timeout)
        end = max(searchable.values())
        lat = np.array([searchable[k] - acked[k] for k in acked if k in searchable])
        ack = np.array(ack_latency)
        rate = len(searchable) / (end - start) * 60
        print(f"[{setup.label}]")
        print(f"studies: {len(acked)} acknowledged, {len(searchable)} {setup.until}")
        p50, p95 = np.percentile(ack, [50, 95]) * 1000
        print(f"ingest ack latency: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
        p50, p95 = np.percentile(lat, [50, 95])
        print(f"ingest-to-{setup.until}: p50 {p50:.2f} s, p95 {p95:.2f} s")
        print(f"throughput: {rate:.1f} studies/min end to end", flush=True)
        for ch in (*ings, sea):
            ch.close()
        return rate
    finally:
        mesh.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--corpus", type=Path, default=Path("data/bench-500"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument(
        "--services",
        default="ingestion,embedding,search",
        help="which services to start (default: the retrieval path)",
    )
    ap.add_argument(
        "--tls",
        choices=("on", "off", "both"),
        default="on",
        help="mutual TLS (default), plaintext (--insecure), or both in one run with their ratio",
    )
    ap.add_argument(
        "--auth-off",
        action="store_true",
        help="authorization off in every run too, so that --tls both measures TLS alone",
    )
    ap.add_argument(
        "--scale",
        action="store_true",
        help="every service, until complete: 1 vs 2 replicas and SQLite vs PostgreSQL, as ratios",
    )
    args = ap.parse_args()
    if not (args.corpus / "manifest.jsonl").is_file():
        print(f"generating {args.n} studies with DICOM into {args.corpus} ...", flush=True)
        generate(args.corpus, n=args.n, seed=23, write_dicom=True)
    headers = sorted(manifest_headers(args.corpus / "manifest.jsonl").items())[: args.n]
    if args.scale:
        scale(headers, args)
        return
    modes = {"on": (False,), "off": (True,), "both": (True, False)}[args.tls]
    setups = {insecure: Setup("plaintext" if insecure else "mutual TLS", insecure) for insecure in modes}
    rates = {insecure: run_mesh(headers, args, setup) for insecure, setup in setups.items()}
    if len(rates) == 2:
        ratio = rates[False] / rates[True]
        print(
            f"mutual TLS / plaintext throughput: {ratio:.3f} "
            f"({rates[False]:.1f} vs {rates[True]:.1f} studies/min; TLS costs {(1 - ratio) * 100:.1f}%)"
        )


def scale(headers: list, args: argparse.Namespace) -> None:
    """The three meshes of ``--scale`` and their ratios against the one-replica SQLite baseline."""
    common = {"services": SERVICES, "until": "complete"}
    base = run_mesh(headers, args, Setup("1 replica, SQLite (baseline)", **common))
    two = run_mesh(headers, args, Setup("2 replicas, SQLite", replicas=2, **common))
    pg = run_mesh(headers, args, Setup("1 replica, PostgreSQL", database="postgres", **common))
    print(f"2 replicas / 1 replica: {two / base:.3f} ({two:.1f} vs {base:.1f} studies/min)")
    print(f"PostgreSQL / SQLite: {pg / base:.3f} ({pg:.1f} vs {base:.1f} studies/min)")


if __name__ == "__main__":
    main()
