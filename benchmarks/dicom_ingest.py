"""C-STORE through the DICOM gateway vs gRPC Ingest, on the same files (a benchmark, not a test).

Starts a local mesh with ingestion and the gateway only (mutual TLS on gRPC, as deployed), then, in
alternating rounds, sends the same synthetic full-resolution studies both ways, each round with fresh
UIDs so that neither path meets a duplicate: over gRPC (``cxrmesh.client.ingest_bytes``, one channel,
one study after another) and by C-STORE to the gateway (``cxrmesh.dicom.scu.store``: one association,
one instance after another, each answered only after ingestion acknowledged it). Prints studies per
second of each path per round, the medians, and the ratio C-STORE / gRPC (what the DICOM front door
costs against calling ingestion directly):

    python -m benchmarks.dicom_ingest --n 40 --rounds 3 --corpus data/bench-dicom
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pydicom

from benchmarks.suite.corpus import encoded, fresh_copy
from cxrmesh.client import ingest_bytes
from cxrmesh.dicom.scu import Peer, store
from cxrmesh.local.mesh import Mesh
from cxrmesh.local.pacs import GATEWAY_AE
from cxrmesh.synth.corpus import generate
from cxrmesh.v1 import ingestion_pb2_grpc

SENDER = "BENCH-SCU"


def fresh_copies(files: list[Path], round_no: int) -> list[pydicom.Dataset]:
    """The files as new studies (``benchmarks.suite.corpus``): no duplicate on either path."""
    return [fresh_copy(path, f"{round_no:02d}") for path in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="studies per path per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=None, help="a DICOM corpus (made if missing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxrmesh-dicom-bench-") as tmp:
        corpus = args.corpus or Path(tmp, "corpus")
        if not (corpus / "manifest.jsonl").is_file():
            generate(corpus, n=args.n, seed=11, write_dicom=True)
        files = sorted(corpus.rglob("*.dcm"))[: args.n]
        mesh = Mesh(
            Path(tmp, "mesh"), ports="auto", services=("ingestion", "gateway"), dicom_senders=[SENDER]
        )
        state = mesh.up(progress=lambda m: print(f"starting {m}"))
        try:
            host, port = state.dicom.rsplit(":", 1)
            peer = Peer(GATEWAY_AE, host, int(port))
            grpc_rates, dimse_rates = [], []
            with state.channel("ingestion") as channel:
                stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
                for r in range(args.rounds):
                    via_grpc = [encoded(ds) for ds in fresh_copies(files, 2 * r)]
                    via_dimse = fresh_copies(files, 2 * r + 1)
                    t0 = time.perf_counter()
                    for data in via_grpc:
                        ingest_bytes(stub, data)
                    t1 = time.perf_counter()
                    store(peer, via_dimse, calling_ae=SENDER, timeout_s=120)
                    t2 = time.perf_counter()
                    grpc_rates.append(len(files) / (t1 - t0))
                    dimse_rates.append(len(files) / (t2 - t1))
                    print(
                        f"round {r + 1}: gRPC Ingest {grpc_rates[-1]:.2f} studies/s,"
                        f" C-STORE via gateway {dimse_rates[-1]:.2f} studies/s"
                    )
        finally:
            mesh.down()
    g, d = statistics.median(grpc_rates), statistics.median(dimse_rates)
    spread = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"  # noqa: E731
    print(f"{len(files)} studies x {args.rounds} rounds, full resolution, mutual TLS on gRPC")
    print(f"gRPC Ingest        median {g:.2f} studies/s (range {spread(grpc_rates)})")
    print(f"C-STORE (gateway)  median {d:.2f} studies/s (range {spread(dimse_rates)})")
    print(f"ratio C-STORE / gRPC: {d / g:.2f}")


if __name__ == "__main__":
    main()
