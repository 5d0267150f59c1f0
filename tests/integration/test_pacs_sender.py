"""The PACS sender against a real PACS (Debian's Orthanc) with inputs made by the mesh's own parts.

RG1 (a real CR) goes through the admission's de-identification, quantification's DICOM SEG and
measurement SR are made from the de-identified source, the original identity is captured and sealed
into a SQLite mesh database the way ingestion keeps it, and a StudyView proto is built from them.
The delivery is called directly (no Kafka); the handler is called with an event, against a real gRPC
study view server. Retry waits are recorded, not slept: no test depends on timing.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest
from prometheus_client import REGISTRY
from pydicom import Dataset
from pydicom.data import get_testdata_file

from cxrmesh.analysis.landmarks import choose_landmarks
from cxrmesh.analysis.pixels import model_input
from cxrmesh.analysis.regions import Lung
from cxrmesh.contracts import convert, topics
from cxrmesh.contracts.tensors import MODEL_INPUT
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.dicom.burned_in import PixelPolicy
from cxrmesh.dicom.reidentify import capture
from cxrmesh.dicom.scu import Peer, RetryPolicy
from cxrmesh.local.orthanc import LocalOrthanc, OrthancAPI
from cxrmesh.local.pki import LocalCA, server_identity
from cxrmesh.local.ports import free_port
from cxrmesh.runtime.blobs import BlobStore, open_blob_store
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db.identities import IdentityStore, IdentityVault, add_identity
from cxrmesh.runtime.kafka import DependencyUnavailable, Event, PermanentError
from cxrmesh.runtime.tls import TlsFiles, open_channel, server_credentials
from cxrmesh.services.flow import FLOW
from cxrmesh.services.pacs_sender.assemble import NoIdentity
from cxrmesh.services.pacs_sender.deliver import DeliveryFailed, Sender, Target
from cxrmesh.services.pacs_sender.service import PacsSenderWorker, StudyNotReady, complete_view, deliver_study
from cxrmesh.services.quantification.measure import dicom_outputs, quantify_study
from cxrmesh.v1 import common_pb2, events_pb2, search_pb2, studyview_pb2, studyview_pb2_grpc

SECRET = b"pacs-sender-test-key-0123456789abcdef"
CALLING_AE = "CXRMESH"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SENT = "cxrmesh_pacs_sent_total"
ORIGINAL_ATTRIBUTES = (  # RG1 has each of them, so the check cannot pass on empty values
    "PatientID",
    "PatientName",
    "PatientSex",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyID",
    "StudyDate",  # the de-identification's date shift undone
)


def sent(destination: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(SENT, {"destination": destination, "outcome": outcome}) or 0.0


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def two_lungs() -> np.ndarray:
    lungs = np.zeros((MODEL_INPUT, MODEL_INPUT), np.uint8)
    lungs[50:210, 30:115] = Lung.RIGHT
    lungs[50:210, 141:221] = Lung.LEFT
    return lungs


@dataclass
class Study:
    """One study as the mesh holds it when its prognosis is out."""

    original: Dataset
    deidentified: Dataset
    patient_key: str
    view: studyview_pb2.StudyView
    blobs: BlobStore
    identities: IdentityStore


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    home = tmp_path_factory.mktemp("mesh")
    raw = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    original = pydicom.dcmread(io.BytesIO(raw))
    deid, norm = process_dicom(raw, SECRET, PixelPolicy(ocr=False))  # pixels: not what this test is about
    blobs = open_blob_store((home / "blobs").as_uri())
    source = blobs.put(dicom_bytes(deid.dataset), "application/dicom")

    lungs = two_lungs()
    chosen = choose_landmarks(lungs, (128.0, 60.0), (150.0, 120.0), (0.9, 0.9))
    q = quantify_study(model_input(norm.display)[0, 0], lungs, chosen)
    rows, cols = int(original.Rows), int(original.Columns)
    seg, sr = dicom_outputs(blobs.get(source), q, rows, cols)

    db = Database(f"sqlite:///{home}/state.sqlite")  # migrated: study_identities included
    vault = IdentityVault(SECRET)
    with db.transaction() as conn:  # as ingestion does, next to its outbox row
        add_identity(conn, deid.study_key, vault.seal(capture(original, deid.dataset)))

    view = studyview_pb2.StudyView(study_key=deid.study_key, complete=True)
    view.metadata.CopyFrom(convert.metadata_proto(deid.metadata))
    view.segmentation.CopyFrom(events_pb2.StudySegmented(study_key=deid.study_key, deidentified_dicom=source))
    view.quantification.CopyFrom(
        events_pb2.StudyQuantified(
            study_key=deid.study_key,
            regions=q.measurements,
            rale_total=q.rale_total,
            dicom_seg=blobs.put(seg, "application/dicom"),
            dicom_sr=blobs.put(sr, "application/dicom"),
            quality=events_pb2.QualityGate(verdict=events_pb2.QualityGate.VERDICT_PASS),
        )
    )
    view.similar_cases.append(
        search_pb2.SimilarCase(
            study_key="prior-study", similarity=0.91, diagnosis=common_pb2.DIAGNOSIS_COVID19
        )
    )
    view.diagnosis.CopyFrom(
        search_pb2.DiagnoseReply(
            diagnosis=common_pb2.DIAGNOSIS_COVID19, scores={"covid19": 0.6, "normal": 0.4}, neighbours_used=5
        )
    )
    view.prognosis.CopyFrom(
        events_pb2.PrognosisResult(
            study_key=deid.study_key,
            status=events_pb2.PrognosisResult.STATUS_DONE,
            probability_intubation_72h=0.42,
            neighbours_with_outcome=3,
            neighbours_intubated=1,
        )
    )
    try:
        yield Study(original, deid.dataset, deid.patient_key, view, blobs, IdentityStore(db, vault))
    finally:
        db.close()


def orthanc(folder: Path, allowed_ae: str = CALLING_AE) -> LocalOrthanc:
    """A stand-in PACS that admits ``allowed_ae`` from loopback (C-ECHO and C-STORE only)."""
    return LocalOrthanc(folder, modalities={"cxrmesh": (allowed_ae, "127.0.0.1", free_port())})


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[LocalOrthanc]:
    with orthanc(tmp_path / "pacs") as server:
        yield server


class Waits:
    """Records the retry waits instead of sleeping them."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, s: float) -> None:
        self.seconds.append(s)


def sender(targets: list[Target], waits: Waits, attempts: int = 3) -> Sender:
    policy = RetryPolicy(attempts=attempts, first_wait_s=0.5, max_wait_s=2.0, jitter=0.0)
    return Sender(targets, calling_ae=CALLING_AE, timeout_s=10, policy=policy, sleep=waits)


def target(name: str, server: LocalOrthanc) -> Target:
    return Target(name, Peer(server.ae_title, "127.0.0.1", server.dicom_port))


def stored(api: OrthancAPI, study_uid: str) -> list[tuple[dict, bytes]]:
    """(tags, file) of each instance Orthanc files under ``study_uid``; [] when it has no such study."""
    found = api.find_study(study_uid)
    if found is None:
        return []
    return [(api.instance_tags(i["ID"]), api.instance_file(i["ID"])) for i in api.study_instances(found)]


def deidentified_values(s: Study) -> list[str]:
    uids = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    return [str(s.deidentified[kw]) for kw in uids if kw in s.deidentified] + [s.patient_key]


def assert_no_identifiers(text: str, s: Study) -> None:
    """Neither the original's identifiers nor the de-identified UIDs and pseudonym appear in ``text``."""
    original = [
        str(s.original[kw].value) for kw in (*ORIGINAL_ATTRIBUTES, "SOPInstanceUID", "StudyInstanceUID")
    ]
    for value in [*original, *deidentified_values(s)]:
        if len(value) > 1:  # PatientSex "F" is a letter, not an identifier
            assert value not in text


# --------------------------------------------------------------------------------------------- tests


def test_the_flow_declares_the_sender_on_the_prognosis_topic() -> None:
    assert FLOW["pacs_sender"].consumes == (topics.STUDY_PROGNOSIS,)
    assert FLOW["pacs_sender"].produces == ()


def test_results_file_under_the_original_study_with_the_original_patient(
    study: Study, pacs: LocalOrthanc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    waits, before = Waits(), sent("pacs", "sent")
    deliver_study(study.view, study.blobs, study.identities, sender([target("pacs", pacs)], waits))
    api = pacs.api()
    instances = stored(api, str(study.original.StudyInstanceUID))
    assert sorted(tags["Modality"] for tags, _ in instances) == ["SEG", "SR", "SR"]
    assert sum(tags["SOPClassUID"] == SEG_STORAGE for tags, _ in instances) == 1
    for tags, data in instances:
        assert tags["StudyInstanceUID"] == study.original.StudyInstanceUID
        for kw in ORIGINAL_ATTRIBUTES:
            assert tags[kw] == str(study.original[kw].value), kw
        for value in deidentified_values(study):  # not one de-identified UID or pseudonym left anywhere
            assert value.encode() not in data
        ds = pydicom.dcmread(io.BytesIO(data))
        assert "PatientIdentityRemoved" not in ds and "DeidentificationMethod" not in ds
    assert api.find_study(str(study.deidentified.StudyInstanceUID)) is None
    assert len(api.studies()) == 1
    assert waits.seconds == [] and sent("pacs", "sent") == before + 1

    assert_no_identifiers(caplog.text, study)
    assert "pacs" in caplog.text  # the destination's name is what the log says

    # again (a replayed dead letter, a re-delivery): the same instances, nothing added
    deliver_study(study.view, study.blobs, study.identities, sender([target("pacs", pacs)], Waits()))
    assert len(stored(api, str(study.original.StudyInstanceUID))) == 3


def test_every_destination_is_counted_from_zero() -> None:
    Sender(
        [Target("fresh", Peer("X", "127.0.0.1", 1))], calling_ae=CALLING_AE, timeout_s=1, policy=RetryPolicy()
    )
    for outcome in ("sent", "retried", "failed"):
        assert REGISTRY.get_sample_value(SENT, {"destination": "fresh", "outcome": outcome}) == 0.0
    assert REGISTRY.get_sample_value("cxrmesh_pacs_send_seconds_count", {"destination": "fresh"}) == 0.0


def test_a_stopped_pacs_is_retried_then_dead_lettered_and_counted(
    study: Study, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = orthanc(tmp_path / "pacs")
    server.start()
    server.stop()  # it was there; it is gone now
    waits = Waits()
    before = {o: sent("stopped", o) for o in ("sent", "retried", "failed")}
    with pytest.raises(DeliveryFailed) as caught:
        deliver_study(study.view, study.blobs, study.identities, sender([target("stopped", server)], waits))
    assert isinstance(caught.value, PermanentError)  # the consumer dead-letters it at once
    assert waits.seconds == [0.5, 1.0]  # three attempts, two waits, doubling
    assert sent("stopped", "retried") == before["retried"] + 2
    assert sent("stopped", "failed") == before["failed"] + 1
    assert sent("stopped", "sent") == before["sent"]
    reason = str(caught.value)
    assert "stopped:" in reason and "could not be reached" in reason
    assert_no_identifiers(reason, study)
    assert_no_identifiers(caplog.text, study)


def test_a_pacs_that_refuses_our_ae_title_fails_at_once(study: Study, tmp_path: Path) -> None:
    waits, before = Waits(), sent("strict", "failed")
    with orthanc(tmp_path / "strict", allowed_ae="SOMEONEELSE") as strict:
        with pytest.raises(DeliveryFailed, match="rejected the association"):
            deliver_study(
                study.view, study.blobs, study.identities, sender([target("strict", strict)], waits)
            )
        assert strict.api().studies() == []
    assert waits.seconds == []  # permanent: no retry
    assert sent("strict", "failed") == before + 1
    assert sent("strict", "retried") == 0


def test_one_destination_down_does_not_keep_the_results_from_the_other(
    study: Study, pacs: LocalOrthanc, tmp_path: Path
) -> None:
    down = orthanc(tmp_path / "down")  # never started: nothing listens on its port
    waits = Waits()
    both = sender([target("down", down), target("viewer", pacs)], waits, attempts=2)
    with pytest.raises(DeliveryFailed) as caught:
        deliver_study(study.view, study.blobs, study.identities, both)
    assert "down:" in str(caught.value) and "viewer" not in str(caught.value)
    assert len(stored(pacs.api(), str(study.original.StudyInstanceUID))) == 3
    assert waits.seconds == [0.5]


def test_a_study_without_a_kept_identity_is_dead_lettered_and_nothing_sent(
    study: Study, pacs: LocalOrthanc
) -> None:
    view = studyview_pb2.StudyView()
    view.CopyFrom(study.view)
    view.study_key = "a-study-ingested-before-identities-were-kept"
    with pytest.raises(NoIdentity, match="no original identity kept for this study"):
        deliver_study(view, study.blobs, study.identities, sender([target("pacs", pacs)], Waits()))
    assert isinstance(NoIdentity("x"), PermanentError)
    assert pacs.api().studies() == []


# ------------------------------------------------------------------- the handler, with a real study view


class StudyViews(studyview_pb2_grpc.StudyViewServiceServicer):
    """A study view that streams the given views for every study (the real one's WatchStudy ends on
    a complete view)."""

    def __init__(self, views: list[studyview_pb2.StudyView]):
        self.views = views

    def WatchStudy(self, request: studyview_pb2.GetStudyRequest, context: grpc.ServicerContext):
        yield from self.views


@dataclass
class ViewServer:
    views: StudyViews
    url: str
    client: TlsFiles  # the PACS sender's identity (mesh + clinical-read), from the same CA


@pytest.fixture
def studyview_server(tmp_path: Path) -> Iterator[ViewServer]:
    """A gRPC study view on loopback behind mutual TLS, as every mesh port is."""
    ca = LocalCA(tmp_path / "pki")
    views = StudyViews([])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    studyview_pb2_grpc.add_StudyViewServiceServicer_to_server(views, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(ca.issue(server_identity("studyview"))))
    server.start()
    try:
        yield ViewServer(views, f"localhost:{port}", ca.issue(server_identity("pacs_sender")))
    finally:
        server.stop(None)


def prognosis_event(key: str) -> Event:
    msg = events_pb2.PrognosisResult(study_key=key, status=events_pb2.PrognosisResult.STATUS_DONE)
    return Event(topics.STUDY_PROGNOSIS, 0, 0, key, msg, {})


def test_the_handler_waits_for_the_complete_view_then_delivers(
    study: Study, pacs: LocalOrthanc, studyview_server: ViewServer
) -> None:
    views = studyview_server.views
    pending = studyview_pb2.StudyView(study_key=study.view.study_key, complete=False)
    views.views = [pending, study.view]
    channel = open_channel(studyview_server.url, studyview_server.client)
    try:
        stub = studyview_pb2_grpc.StudyViewServiceStub(channel)
        worker = PacsSenderWorker(
            stub, study.blobs, study.identities, sender([target("pacs", pacs)], Waits())
        )
        assert worker([prognosis_event(study.view.study_key)]) == [None]
        assert len(stored(pacs.api(), str(study.original.StudyInstanceUID))) == 3

        views.views = [pending]  # the stream ends before the study is complete: retried later
        with pytest.raises(StudyNotReady):
            complete_view(stub, study.view.study_key, deadline_s=30)
        (result,) = worker([prognosis_event(study.view.study_key)])
        assert isinstance(result, StudyNotReady) and not isinstance(result, PermanentError)

        nowhere = PacsSenderWorker(stub, study.blobs, study.identities, sender([], Waits()))
        assert nowhere([prognosis_event("any")]) == [None]  # no destination: nothing to do
    finally:
        channel.close()


def test_a_study_view_that_is_down_is_waited_for(
    study: Study, pacs: LocalOrthanc, studyview_server: ViewServer
) -> None:
    channel = open_channel(f"localhost:{free_port()}", studyview_server.client)  # nothing listens there
    try:
        stub = studyview_pb2_grpc.StudyViewServiceStub(channel)
        worker = PacsSenderWorker(
            stub, study.blobs, study.identities, sender([target("pacs", pacs)], Waits())
        )
        (result,) = worker([prognosis_event(study.view.study_key)])
    finally:
        channel.close()
    assert isinstance(result, DependencyUnavailable)
