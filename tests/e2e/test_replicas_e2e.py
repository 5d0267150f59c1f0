"""Two replicas of every service on PostgreSQL and the Milvus server: 200 studies, one replica of each
service stopped halfway, nothing lost, nothing doubled, and any replica answers for any study.

Real processes throughout (Tansu, PostgreSQL, the standalone Milvus server, tritonserver, 14 service
processes). The 200 studies are the session corpus' DICOM files written again under new study, series
and instance UIDs (distinct studies to the mesh, cheap to make). The first half is sent to both
ingestion replicas and checked on every replica of every service; while the second half is being
sent, replica 1 of every service is stopped (SIGTERM: Kafka hands its partitions to replica 0, its
outbox rows are relayed by the other ingestion replica), and the clients fall back to replica 0 as a
load balancer would.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pydicom
import pytest
from plugins.postgres import cluster_home
from pydicom.uid import generate_uid

from cxrmesh.client import ingest_bytes, manifest_headers
from cxrmesh.local.mesh import SERVICES, SINGLE, Mesh, MeshState
from cxrmesh.runtime.db.schema import stage_results
from cxrmesh.search.store import CaseStore
from cxrmesh.services.studyview.store import study_keys
from cxrmesh.v1 import (
    embedding_pb2,
    embedding_pb2_grpc,
    ingestion_pb2_grpc,
    prognosis_pb2,
    prognosis_pb2_grpc,
    quantification_pb2,
    quantification_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    studyview_pb2,
    studyview_pb2_grpc,
)

pytestmark = pytest.mark.mesh
STUDIES = 200


def _studies(corpus: Path, n: int) -> list[tuple[bytes, object]]:
    """``n`` distinct studies (new UIDs) from the corpus files, each with its file's manifest header."""
    base = sorted(manifest_headers(corpus / "manifest.jsonl").items())
    out = []
    for i in range(n):
        path, header = base[i % len(base)]
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((buf.getvalue(), header))
    return out


REPLICATED = tuple(n for n in SERVICES if n not in SINGLE)  # the gateway runs once (one DICOM address)


class Replicated:
    def __init__(self, mesh: Mesh, state: MeshState):
        self.mesh, self.state = mesh, state
        self.channels = {(n, r): state.channel(n, r) for n in REPLICATED for r in range(state.replicas)}
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def stub(self, cls: type, name: str, replica: int):
        return cls(self.channels[(name, replica)])

    def ingest(self, data: bytes, header: object, replica: int) -> str:
        """Ingest through ``replica``, falling back to the others when it is gone (a load balancer).

        A call cut off by the replica's graceful stop (CANCELLED once its grace ran out under load)
        has an unknown outcome, so it is sent again elsewhere, as a modality would: the answer may
        then be "duplicate" (the first attempt had committed), and the study counts once.
        """
        retried = False
        for r in (replica, *(x for x in range(self.state.replicas) if x != replica)):
            try:
                stub = self.stub(ingestion_pb2_grpc.IngestionServiceStub, "ingestion", r)
                reply = ingest_bytes(stub, data, header)
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
                retried = True
                continue
            assert retried or not reply.duplicate
            with self.lock:
                if reply.study_key not in self.keys:
                    self.keys.append(reply.study_key)
            return reply.study_key
        raise AssertionError("no ingestion replica answered")

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


@pytest.fixture(scope="module")
def mesh(corpus: Path) -> Iterator[Replicated]:
    home = cluster_home()  # PostgreSQL runs as its own user: pytest's tmp root is closed to it
    m = Mesh(
        home,
        ports="auto",
        replicas=2,
        database="postgres",
        milvus="server",
        env={"CXRMESH_KAFKA_SESSION_TIMEOUT_MS": "3000", "CXRMESH_KAFKA_HEARTBEAT_MS": "500"},
    )
    run = Replicated(m, m.up(timeout_s=300))
    try:
        yield run
    finally:
        run.close()
        m.down()
        shutil.rmtree(home, ignore_errors=True)


def _complete(run: Replicated, keys: list[str], replica: int, timeout_s: float) -> None:
    view = run.stub(studyview_pb2_grpc.StudyViewServiceStub, "studyview", replica)
    pending, deadline = set(keys), time.monotonic() + timeout_s
    while pending:
        for key in sorted(pending):
            try:
                got = view.GetStudy(studyview_pb2.GetStudyRequest(study_key=key, similar_k=1), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
                continue
            if got.complete:
                states = {s.name: s.state for s in got.stages}
                assert set(states.values()) == {studyview_pb2.STAGE_DONE}, (key, got.stages)
                pending.discard(key)
        assert time.monotonic() < deadline, f"{len(pending)} of {len(keys)} studies never completed"
        time.sleep(1)


GETS = (
    ("embedding", embedding_pb2_grpc.EmbeddingServiceStub, "GetEmbedding", embedding_pb2.GetEmbeddingRequest),
    (
        "segmentation",
        segmentation_pb2_grpc.SegmentationServiceStub,
        "GetMasks",
        segmentation_pb2.GetMasksRequest,
    ),
    (
        "quantification",
        quantification_pb2_grpc.QuantificationServiceStub,
        "GetQuantification",
        quantification_pb2.GetQuantificationRequest,
    ),
    ("prognosis", prognosis_pb2_grpc.PrognosisServiceStub, "GetPrognosis", prognosis_pb2.GetPrognosisRequest),
    ("studyview", studyview_pb2_grpc.StudyViewServiceStub, "GetStudy", studyview_pb2.GetStudyRequest),
)


def _every_get_answers(run: Replicated, keys: list[str], replicas: tuple[int, ...]) -> None:
    for name, stub_cls, method, request in GETS:
        for r in replicas:
            call = getattr(run.stub(stub_cls, name, r), method)
            for key in keys:
                reply = call(request(study_key=key), timeout=30)
                assert reply.study_key == key, (name, r)


def test_two_hundred_studies_on_two_replicas_with_one_of_each_stopped_halfway(
    mesh: Replicated, corpus: Path
) -> None:
    studies = _studies(corpus, STUDIES)
    half = STUDIES // 2

    # first half: both replicas of everything; every Get answered by every replica
    for i, (data, header) in enumerate(studies[:half]):
        mesh.ingest(data, header, i % 2)
    first = list(mesh.keys)
    _complete(mesh, first, replica=1, timeout_s=600)
    _every_get_answers(mesh, first, replicas=(0, 1))

    # second half: replica 1 of every service stops once a quarter of it has been accepted
    stopping = threading.Event()

    def send() -> None:
        for i, (data, header) in enumerate(studies[half:]):
            if i == half // 4:
                stopping.set()
            mesh.ingest(data, header, i % 2)

    sender = threading.Thread(target=send)
    sender.start()
    assert stopping.wait(300)
    stopped = [name for name in REPLICATED if mesh.mesh.stop_replica(name, 1, grace_s=30)]
    sender.join(timeout=600)
    assert stopped == list(REPLICATED), f"replicas that had already died on their own: {stopped}"
    assert len(mesh.keys) == len(set(mesh.keys)) == STUDIES

    _complete(mesh, mesh.keys, replica=0, timeout_s=900)
    _every_get_answers(mesh, mesh.keys, replicas=(0,))

    # exactly once: one view per study, one Milvus entity per study, one result row per stage
    db = mesh.state.database()
    try:
        assert sorted(study_keys(db)) == sorted(mesh.keys)
        with db.read() as conn:
            rows = conn.execute(stage_results.select().with_only_columns(stage_results.c.service)).scalars()
            per_service: dict[str, int] = {}
            for service in rows:
                per_service[service] = per_service.get(service, 0) + 1
    finally:
        db.close()
    assert per_service == dict.fromkeys(("embedding", "segmentation", "quantification", "prognosis"), STUDIES)
    token = mesh.state.milvus_token()
    with CaseStore(mesh.state.milvus, token=token, index="HNSW", tls=mesh.state.milvus_tls()) as store:
        assert store.count() == STUDIES
        assert set(store.get(mesh.keys)) == set(mesh.keys)
