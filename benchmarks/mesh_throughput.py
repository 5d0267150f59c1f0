"""Ingest-to-searchable latency and throughput of the local mesh (a benchmark, not a test).

Starts a mesh (free ports, a temporary home), streams N synthetic DICOM studies to ingestion
from ``--clients`` threads, and polls search until each study is answerable by its study key.
Prints the ingest acknowledgement latency, the ingest-to-searchable latency (p50/p95) and
studies per minute end to end. Example (500 studies, corpus generated first if missing):

    python benchmarks/mesh_throughput.py --n 500 --corpus data/bench-500
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
    args = ap.parse_args()
    if not (args.corpus / "manifest.jsonl").is_file():
        print(f"generating {args.n} studies with DICOM into {args.corpus} ...", flush=True)
        generate(args.corpus, n=args.n, seed=23, write_dicom=True)
    headers = sorted(manifest_headers(args.corpus / "manifest.jsonl").items())[: args.n]
    home = Path(tempfile.mkdtemp(prefix="cxrmesh-bench-"))
    mesh = Mesh(home, ports="auto", services=args.services.split(","))
    state = mesh.up(timeout_s=300)
    acked: dict[str, float] = {}
    ack_latency: list[float] = []
    searchable: dict[str, float] = {}
    lock = threading.Lock()
    done_sending = threading.Event()
    try:
        ing = grpc.insecure_channel(state.endpoint("ingestion"))
        sea = grpc.insecure_channel(state.endpoint("search"))
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
        print(f"studies: {len(acked)} acknowledged, {len(searchable)} searchable")
        p50, p95 = np.percentile(ack, [50, 95]) * 1000
        print(f"ingest ack latency: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
        print(f"ingest-to-searchable: p50 {np.percentile(lat, 50):.2f} s, p95 {np.percentile(lat, 95):.2f} s")
        print(f"throughput: {len(searchable) / (end - start) * 60:.1f} studies/min end to end")
        ing.close()
        sea.close()
    finally:
        mesh.down()


if __name__ == "__main__":
    main()
