"""Steady traffic on a throwaway local mesh with monitoring, for the dashboard figures.

Why: a dashboard drawn from an idle mesh shows flat lines. This starts ``Mesh(monitoring=True)`` in a
temporary folder, sends a study every few seconds (the synthetic corpus' files under new UIDs, so
each is a new study), a similar-case search now and then, a refused file once a minute, and kills one
service halfway for a while before restarting it (the dip and the catch-up are what the dashboards
are for). Used by ``scripts/dashboard_figures.py --drive MINUTES``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pydicom
from pydicom.uid import generate_uid

from cxrmesh.client import ingest_bytes, manifest_headers
from cxrmesh.local.mesh import Mesh, MeshState
from cxrmesh.synth.corpus import generate
from cxrmesh.v1 import ingestion_pb2_grpc, search_pb2, search_pb2_grpc

KILLED = "segmentation"  # stopped for OUTAGE_S halfway: its consumer lag builds up, then drains
OUTAGE_S = 60


def _renamed(path: Path) -> bytes:
    """The file as a new study (new study, series and instance UIDs)."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def drive(mesh: Mesh, state: MeshState, corpus: Path, minutes: float, every_s: float, say: Callable) -> None:
    files = sorted(manifest_headers(corpus / "manifest.jsonl").items())
    end, half = time.monotonic() + minutes * 60, time.monotonic() + minutes * 30
    outage_until = 0.0
    keys: list[str] = []
    with state.channel("ingestion") as ch, state.channel("search") as sch:
        ingest = ingestion_pb2_grpc.IngestionServiceStub(ch)
        search = search_pb2_grpc.SearchServiceStub(sch)
        for i, (path, header) in enumerate(itertools.cycle(files)):
            now = time.monotonic()
            if now >= end:
                break
            if half <= now and not outage_until:
                say(f"killing {KILLED} for {OUTAGE_S} s")
                mesh.kill(KILLED)
                outage_until = now + OUTAGE_S
            if outage_until and now >= outage_until > 0:
                mesh.restart(KILLED)
                say(f"{KILLED} restarted")
                outage_until = -1.0
            keys.append(ingest_bytes(ingest, _renamed(path), header).study_key)
            if i % 5 == 4:
                try:
                    search.FindSimilar(search_pb2.FindSimilarRequest(study_key=keys[-5], k=5), timeout=30)
                except grpc.RpcError as exc:  # not embedded yet (e.g. during the outage)
                    say(f"search: {exc.code().name}")
            if i % 20 == 19:
                with contextlib.suppress(grpc.RpcError):  # refused: cxrmesh_ingest_rejected_total counts it
                    ingest_bytes(ingest, b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
            time.sleep(every_s)
    say(f"{len(keys)} studies sent")


@contextmanager
def mesh_with_traffic(minutes: float, every_s: float = 3.0, say: Callable = print) -> Iterator[MeshState]:
    """A throwaway mesh with monitoring that has had ``minutes`` of traffic; yields its state
    (``state.prometheus()`` is its Prometheus API)."""
    with tempfile.TemporaryDirectory(prefix="cxrmesh-traffic-") as tmp:
        corpus = Path(tmp, "corpus")
        generate(corpus, n=12, seed=11, write_dicom=True, workers=2)
        mesh = Mesh(Path(tmp, "mesh"), ports="auto", monitoring=True)
        try:
            state = mesh.up(timeout_s=300, progress=lambda m: say(f"starting {m}"))
            drive(mesh, state, corpus, minutes, every_s, say)
            time.sleep(20)  # the last studies through the pipeline, and scraped
            yield state
        finally:
            mesh.down()
