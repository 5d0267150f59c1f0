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
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from cxrmesh.client import ingest_bytes, manifest_headers
from cxrmesh.local.mesh import Mesh
from cxrmesh.synth.corpus import generate
from cxrmesh.v1 import ingestion_pb2_grpc, search_pb2, search_pb2_grpc


def run_mesh(headers: list, args: argparse.Namespace, insecure: bool) -> float:
    """One mesh, all ``headers`` ingested and polled until searchable; returns studies per minute."""
    home = Path(tempfile.mkdtemp(prefix="cxrmesh-bench-"))
    env = {"CXRMESH_AUTH_MODE": "off"} if args.auth_off else {}
    mesh = Mesh(home, ports="auto", services=args.services.split(","), insecure=insecure, env=env)
    state = mesh.up(timeout_s=300)
    acked: dict[str, float] = {}
    ack_latency: list[float] = []
    searchable: dict[str, float] = {}
    lock = threading.Lock()
    done_sending = threading.Event()
    try:
        ing = state.channel("ingestion")
        sea = state.channel("search")
        ingest = ingestion_pb2_grpc.IngestionServiceStub(ing)
        search = search_pb2_grpc.SearchServiceStub(sea)

        def send(item: tuple[Path, object]) -> None:
            path, header = item
            data = path.read_bytes()
            t0 = time.monotonic()
            reply = ingest_bytes(ingest, data, header)
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
                        search.FindSimilar(search_pb2.FindSimilarRequest(study_key=key, k=1), timeout=10)
                        searchable[key] = time.monotonic()
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.NOT_FOUND:
                            raise
                time.sleep(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        start = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(send, headers))
        done_sending.set()
        poller.join(timeout=args.timeout)
        end = max(searchable.values())
        lat = np.array([searchable[k] - acked[k] for k in acked if k in searchable])
        ack = np.array(ack_latency)
        rate = len(searchable) / (end - start) * 60
        print(f"[{'plaintext' if insecure else 'mutual TLS'}]")
        print(f"studies: {len(acked)} acknowledged, {len(searchable)} searchable")
        p50, p95 = np.percentile(ack, [50, 95]) * 1000
        print(f"ingest ack latency: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
        print(f"ingest-to-searchable: p50 {np.percentile(lat, 50):.2f} s, p95 {np.percentile(lat, 95):.2f} s")
        print(f"throughput: {rate:.1f} studies/min end to end", flush=True)
        ing.close()
        sea.close()
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
    args = ap.parse_args()
    if not (args.corpus / "manifest.jsonl").is_file():
        print(f"generating {args.n} studies with DICOM into {args.corpus} ...", flush=True)
        generate(args.corpus, n=args.n, seed=23, write_dicom=True)
    headers = sorted(manifest_headers(args.corpus / "manifest.jsonl").items())[: args.n]
    modes = {"on": (False,), "off": (True,), "both": (True, False)}[args.tls]
    rates = {insecure: run_mesh(headers, args, insecure) for insecure in modes}
    if len(rates) == 2:
        ratio = rates[False] / rates[True]
        print(
            f"mutual TLS / plaintext throughput: {ratio:.3f} "
            f"({rates[False]:.1f} vs {rates[True]:.1f} studies/min; TLS costs {(1 - ratio) * 100:.1f}%)"
        )


if __name__ == "__main__":
    main()
