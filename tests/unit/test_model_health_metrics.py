"""Model-health and SLI metrics, from what each service computes: the values, their bounded labels, once-only.

The pure parts (the landmark problem vocabulary, the view's verdict, certificate expiry from a real
``LocalCA`` certificate, lung area and nearest-neighbour distance) and each stage handler driven with
events as in test_workers.py: real blob stores and SQLite tables, Triton and the broker stood in for
(``Triton``, ``Producer``). Samples are read from the process's ``prometheus_client.REGISTRY``, as
deltas (other tests share it). The same on PostgreSQL, two view replicas at once, real search and a
real TLS server: tests/integration/test_model_health_metrics.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from prometheus_client import REGISTRY
from pydicom.data import get_testdata_file
from sqlalchemy import delete

from cxrmesh.analysis.landmarks import calibrated_confidence
from cxrmesh.analysis.regions import (
    PROBLEM_TEXT,
    LandmarkProblem,
    Lung,
    landmark_problems,
    problem_code,
)
from cxrmesh.client import chunks
from cxrmesh.contracts import convert, topics
from cxrmesh.contracts.errors import InvalidArgument
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import EMBED_DIM, MODEL_INPUT, SEG_MEMBERS
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.local.pki import LocalCA, server_identity
from cxrmesh.runtime.blobs import NPY, LocalBlobStore, array_bytes
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db.engine import sqlite_url
from cxrmesh.runtime.db.schema import view_payloads
from cxrmesh.runtime.kafka import Event, PublishFuture
from cxrmesh.runtime.tables import ResultTable
from cxrmesh.runtime.tls import TlsConfigError, TlsFiles, certificate_expiry
from cxrmesh.search.records import CaseRecord, Neighbour
from cxrmesh.services.embedding.service import EmbeddingWorker
from cxrmesh.services.embedding.settings import EmbeddingSettings
from cxrmesh.services.flow import FLOW
from cxrmesh.services.ingestion.outbox import Outbox
from cxrmesh.services.ingestion.service import IngestionServicer, dicom_bytes
from cxrmesh.services.ingestion.settings import IngestionSettings
from cxrmesh.services.model_stage import StageParts
from cxrmesh.services.quantification.service import QuantificationWorker
from cxrmesh.services.quantification.settings import QuantificationSettings
from cxrmesh.services.search.servicer import nearest_distance
from cxrmesh.services.segmentation.service import SegmentationWorker, lung_area_fractions
from cxrmesh.services.segmentation.settings import SegmentationSettings
from cxrmesh.services.studyview.service import StudyViewServicer, ViewWorker
from cxrmesh.services.studyview.settings import StudyViewSettings
from cxrmesh.services.studyview.store import VERDICT_ROW, ViewStore, verdict
from cxrmesh.v1 import events_pb2, ingestion_pb2, search_pb2, studyview_pb2

SECRET = "unit-test-pseudonym-key-0123456789abcdef"
DONE, FAILED, PENDING = studyview_pb2.STAGE_DONE, studyview_pb2.STAGE_FAILED, studyview_pb2.STAGE_PENDING


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Triton:
    """Stands in for tritonserver (none runs in a unit test): ``answer(inputs)`` for every request."""

    def __init__(self, answer):
        self.answer = answer

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str]) -> dict:
        return self.answer(inputs)

    def model_version(self, model: str) -> str:
        return "1"


class Producer:
    """Stands in for the Kafka producer: every publish is confirmed at once."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def publish(self, topic: str, key: str, message: object, headers: object = None) -> PublishFuture:
        fut = PublishFuture()
        fut.set_running_or_notify_cancel()
        self.sent.append(message)
        fut.set_result(None)  # type: ignore[arg-type]
        return fut


def parts(tmp_path: Path, settings, service: str, result_type, answer) -> StageParts:
    table = ResultTable(Database(sqlite_url(tmp_path / "state.sqlite")), service, result_type)
    blobs = LocalBlobStore(tmp_path / "blobs")
    return StageParts(settings, FLOW[service], "model", table, Triton(answer), Producer(), blobs)  # type: ignore[arg-type]


def events(topic: str, messages: list) -> list[Event]:
    return [Event(topic, 0, i, getattr(m, "study_key", ""), m, {}) for i, m in enumerate(messages)]


def two_lungs() -> np.ndarray:
    lungs = np.zeros((MODEL_INPUT, MODEL_INPUT), np.uint8)
    lungs[50:210, 30:115] = Lung.RIGHT  # 160 x 85
    lungs[50:210, 141:221] = Lung.LEFT  # 160 x 80
    return lungs


# ----------------------------------------------------------------------------- landmark problem codes


def test_every_problem_sentence_has_one_code_and_unknown_text_is_other() -> None:
    assert set(PROBLEM_TEXT) == set(LandmarkProblem) - {LandmarkProblem.OTHER}
    for code, text in PROBLEM_TEXT.items():
        assert problem_code(text) == code
        assert problem_code(f"{text} (37% of lung pixels)") == code
        assert not any(o.startswith(text) for c, o in PROBLEM_TEXT.items() if c != code)  # unambiguous
        assert code.value.isidentifier() and code.value.islower()  # a Prometheus label value as it is
    assert problem_code("the carina looks odd") == LandmarkProblem.OTHER


def test_what_landmark_problems_finds_maps_to_the_codes_not_other() -> None:
    lungs = two_lungs()
    swapped = np.where(lungs == Lung.RIGHT, Lung.LEFT, np.where(lungs == Lung.LEFT, Lung.RIGHT, 0))
    found = [
        *landmark_problems(lungs, (128.0, 150.0), (100.0, 20.0)),  # hilum above, medial, outside
        *landmark_problems(lungs, (10.0, 60.0), (150.0, 100.0)),  # carina outside the lungs
        *landmark_problems(swapped.astype(np.uint8), (128.0, 60.0), (150.0, 100.0)),
        *landmark_problems(np.zeros_like(lungs), (1.0, 1.0), (2.0, 2.0)),
    ]
    codes = {problem_code(p) for p in found}
    assert codes == set(PROBLEM_TEXT), found  # every check seen, none unclaimed


# ----------------------------------------------------------------------------- certificate expiry


def not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def test_certificate_expiry_is_the_served_certificate_and_the_earliest_ca(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path / "pki")
    files = ca.issue(server_identity("search"))
    got = certificate_expiry(TlsFiles(files.cert, files.key, files.ca))
    assert got["server"] == ca.expiry("search").timestamp()
    assert got["ca"] == not_after(files.ca) and got["ca"] > got["server"]  # the CA outlives its leaves

    # a bundle of two CAs (one being rotated in): the one that expires first
    old = tmp_path / "old-ca.pem"
    old.write_bytes(files.ca.read_bytes())
    later = LocalCA(tmp_path / "other")
    assert not_after(later.ca_cert_path) >= not_after(old)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(later.ca_cert_path.read_bytes() + old.read_bytes())
    assert certificate_expiry(TlsFiles(files.cert, files.key, bundle))["ca"] == not_after(old)
    assert dt.datetime.fromtimestamp(got["server"], dt.UTC) > dt.datetime.now(dt.UTC)


def test_certificate_expiry_names_a_file_without_certificates(tmp_path: Path) -> None:
    files = LocalCA(tmp_path / "pki").issue(server_identity("search"))
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(TlsConfigError, match=r"empty\.pem"):
        certificate_expiry(TlsFiles(files.cert, files.key, empty))


# ----------------------------------------------------------------------------- time to the view's verdict


def test_verdict_is_failed_on_any_failure_and_complete_only_when_every_stage_is_done() -> None:
    stages = ("ingested", "embedded", "segmented", "quantified", "prognosis")
    assert verdict({}) is None
    assert verdict(dict.fromkeys(stages, DONE)) == "complete"
    assert verdict({**dict.fromkeys(stages, DONE), "prognosis": PENDING}) is None
    assert verdict({"segmented": FAILED}) == "failed"  # a dead letter before the study's own event
    assert verdict({**dict.fromkeys(stages, DONE), "quantified": FAILED}) == "failed"


def stage_events(key: str, ingested_at: float) -> list[Event]:
    """A study's five stage events, each carrying its ingestion time as the stages do."""
    ts = events_pb2.StudyIngested(study_key=key).ingested_at
    ts.FromNanoseconds(int(ingested_at * 1e9))
    msgs = {
        topics.STUDY_INGESTED: events_pb2.StudyIngested(study_key=key, ingested_at=ts),
        topics.STUDY_EMBEDDED: events_pb2.StudyEmbedded(study_key=key, ingested_at=ts),
        topics.STUDY_SEGMENTED: events_pb2.StudySegmented(study_key=key, ingested_at=ts),
        topics.STUDY_QUANTIFIED: events_pb2.StudyQuantified(study_key=key, ingested_at=ts),
        topics.STUDY_PROGNOSIS: events_pb2.PrognosisResult(study_key=key),
    }
    return [Event(topic, 0, i, key, m, {}) for i, (topic, m) in enumerate(msgs.items())]


def dead_letter(key: str, service: str, source: Event) -> Event:
    dead = events_pb2.DeadLetter(
        key=key,
        service=service,
        reason="model refused the input",
        source_topic=source.topic,
        payload=source.message.SerializeToString(),
    )
    return Event(topics.DEAD_LETTER, 0, 0, key, dead, {})


@pytest.fixture
def view(tmp_path: Path):
    store = ViewStore(Database(sqlite_url(tmp_path / "view.sqlite")))
    yield ViewWorker(store)
    store.close()
    store.db.close()


def test_completion_is_observed_once_and_never_again_on_redelivery(view: ViewWorker) -> None:
    import time

    name = "cxrmesh_study_complete_seconds"
    count, total = sample(f"{name}_count", outcome="complete"), sample(f"{name}_sum", outcome="complete")
    evs = stage_events("s1", time.time() - 42.0)
    for event in evs[:-1]:
        assert view([event]) == [None]
    assert sample(f"{name}_count", outcome="complete") == count  # no verdict yet
    assert view([evs[-1]]) == [None]
    assert sample(f"{name}_count", outcome="complete") == count + 1
    assert sample(f"{name}_sum", outcome="complete") - total == pytest.approx(42.0, abs=5.0)
    assert sample(f"{name}_bucket", outcome="complete", le="30.0") == sample(
        f"{name}_bucket", outcome="complete", le="20.0"
    )  # 42 s lands above 30 s
    assert view(evs) == [None] * len(evs)  # the whole study re-delivered, in one batch
    assert view([evs[-1]]) == [None]
    assert sample(f"{name}_count", outcome="complete") == count + 1
    # a study the view settled before it kept verdict rows (an upgrade): still not a first verdict
    with view.store.db.transaction() as conn:
        conn.execute(delete(view_payloads).where(view_payloads.c.stage == VERDICT_ROW))
    assert view([evs[-1]]) == [None]
    assert sample(f"{name}_count", outcome="complete") == count + 1


def test_failure_is_observed_once_even_when_it_is_later_undone(view: ViewWorker) -> None:
    import time

    name = "cxrmesh_study_complete_seconds_count"
    failed, complete = sample(name, outcome="failed"), sample(name, outcome="complete")
    evs = stage_events("s2", time.time() - 5.0)
    ingested, embedded, segmented, quantified, prognosis = evs
    # the segmentation dead letter arrives before the study's own ingested event: timed from its payload
    assert view([dead_letter("s2", "segmentation", ingested)]) == [None]
    assert sample(name, outcome="failed") == failed + 1
    assert view([ingested, embedded, dead_letter("s2", "segmentation", ingested)]) == [None] * 3
    # a replayed study succeeds after all: the view loses its verdict and regains one, not a first one
    assert view([segmented, quantified, prognosis]) == [None] * 3
    stages, _ = view.store.load("s2")
    assert {name: state for name, state, _, _ in stages} == dict.fromkeys(
        ("ingested", "embedded", "segmented", "quantified", "prognosis"), DONE
    )
    assert (sample(name, outcome="failed"), sample(name, outcome="complete")) == (failed + 1, complete)


# ----------------------------------------------------------------------------- segmentation


def test_lung_area_fraction_per_side(tmp_path: Path) -> None:
    assert lung_area_fractions(two_lungs()) == {
        "right": 160 * 85 / MODEL_INPUT**2,
        "left": 160 * 80 / MODEL_INPUT**2,
    }
    assert lung_area_fractions(np.zeros((4, 4), np.uint8)) == {"right": 0.0, "left": 0.0}

    def segment(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(inputs["image"])
        probs = np.eye(3, dtype=np.float32)[two_lungs()].transpose(2, 0, 1)
        members = np.repeat(probs[None], len(SEG_MEMBERS), axis=0)
        return {"probs": np.repeat(probs[None], n, 0), "member_probs": np.repeat(members[None], n, 0)}

    p = parts(tmp_path, SegmentationSettings(), "segmentation", events_pb2.StudySegmented, segment)
    src = events_pb2.StudyIngested(study_key="a")
    src.display_image.CopyFrom(p.blobs.put(array_bytes(np.zeros((MODEL_SIZE, MODEL_SIZE), np.float32)), NPY))
    name = "cxrmesh_lung_area_fraction"
    before = {s: (sample(f"{name}_count", side=s), sample(f"{name}_sum", side=s)) for s in ("right", "left")}
    assert SegmentationWorker(p)(events(topics.STUDY_INGESTED, [src])) == [None]
    for side, fraction in lung_area_fractions(two_lungs()).items():
        count, total = before[side]
        assert sample(f"{name}_count", side=side) == count + 1
        assert sample(f"{name}_sum", side=side) - total == pytest.approx(fraction)


# ----------------------------------------------------------------------------- quantification


def test_quantification_observes_the_detector_confidence_and_counts_problems_by_code(
    tmp_path: Path,
) -> None:
    def detect(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(inputs["image"])
        xy = np.array([[128.0, 150.0], [150.0, 60.0]], np.float32)  # left hilum above the carina
        return {"landmarks": np.repeat(xy[None], n, 0), "confidence": np.full((n, 2), 0.05, np.float32)}

    deid, norm = process_dicom(Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes(), SECRET.encode())
    p = parts(tmp_path, QuantificationSettings(), "quantification", events_pb2.StudyQuantified, detect)
    msg = events_pb2.StudySegmented(
        study_key="k", member_agreement=0.95, metadata=convert.metadata_proto(deid.metadata)
    )
    msg.display_image.CopyFrom(p.blobs.put(array_bytes(norm.display.astype(np.float32)), NPY))
    msg.lungs.CopyFrom(p.blobs.put(array_bytes(two_lungs()), NPY))
    msg.deidentified_dicom.CopyFrom(p.blobs.put(dicom_bytes(deid.dataset), "application/dicom"))

    expected = {problem_code(t) for t in landmark_problems(two_lungs(), (128.0, 150.0), (150.0, 60.0))}
    assert LandmarkProblem.CARINA_NOT_ABOVE_HILUM in expected
    conf, imp = "cxrmesh_landmark_confidence", "cxrmesh_landmark_implausible_total"
    before_conf = {lm: sample(f"{conf}_sum", landmark=lm) for lm in ("carina", "left_hilum")}
    before_imp = {c: sample(imp, problem=c.value) for c in LandmarkProblem}
    assert QuantificationWorker(p)(events(topics.STUDY_SEGMENTED, [msg])) == [None]
    assert p.producer.sent[0].landmarks_estimated  # type: ignore[attr-defined]
    for lm, total in before_conf.items():  # the detector's own confidence, not the estimate's 0.82
        assert sample(f"{conf}_sum", landmark=lm) - total == pytest.approx(calibrated_confidence(0.05))
    for code, count in before_imp.items():
        assert sample(imp, problem=code.value) == count + (code in expected), code


# ----------------------------------------------------------------------------- embedding and search


def test_embedding_norm_is_what_the_model_returned(tmp_path: Path) -> None:
    def embed(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(inputs["image"])
        emb = np.zeros((n, EMBED_DIM), np.float32)
        emb[:, 0], emb[:, 1] = 3.0, 4.0  # norm 5: not the normalising model
        return {"embedding": emb, "attention": np.ones((n, 1, 16, 16), np.float32)}

    p = parts(tmp_path, EmbeddingSettings(), "embedding", events_pb2.StudyEmbedded, embed)
    src = events_pb2.StudyIngested(study_key="a")
    src.display_image.CopyFrom(p.blobs.put(array_bytes(np.zeros((MODEL_SIZE, MODEL_SIZE), np.float32)), NPY))
    name = "cxrmesh_embedding_norm"
    count, total = sample(f"{name}_count"), sample(f"{name}_sum")
    assert EmbeddingWorker(p)(events(topics.STUDY_INGESTED, [src])) == [None]
    assert (sample(f"{name}_count"), sample(f"{name}_sum") - total) == (count + 1, pytest.approx(5.0))


def test_nearest_distance_is_one_minus_the_best_cosine_similarity() -> None:
    def hit(similarity: float) -> Neighbour:
        return Neighbour(CaseRecord("s", "p", np.zeros(2, np.float32), "1"), similarity)

    assert nearest_distance([]) is None
    assert nearest_distance([hit(0.5), hit(0.9), hit(-0.2)]) == pytest.approx(0.1)
    assert nearest_distance([hit(-1.0)]) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- refusals at ingestion


def test_accepted_and_rejected_uploads_give_the_refused_share_by_reason(tmp_path: Path) -> None:
    settings = IngestionSettings(data_dir=tmp_path, deid_secret=SECRET)
    servicer = IngestionServicer(settings, Outbox(Database(sqlite_url(tmp_path / "state.sqlite"))))
    raw = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    accepted, rejected = "cxrmesh_ingest_accepted_total", "cxrmesh_ingest_rejected_total"
    a0, r0 = sample(accepted), sample(rejected, reason="not_dicom")
    header = ingestion_pb2.IngestHeader()
    assert not servicer.Ingest(chunks(raw, header), None).duplicate
    assert servicer.Ingest(chunks(raw, header), None).duplicate  # re-sent: accepted again, as a duplicate
    with pytest.raises(InvalidArgument):
        servicer.Ingest(chunks(b"not a DICOM file at all" * 10, header), None)
    da, dr = sample(accepted) - a0, sample(rejected, reason="not_dicom") - r0
    assert (da, dr) == (2, 1) and dr / (da + dr) == pytest.approx(1 / 3)
    # refused before the DICOM checks (the upload's framing): counted by reason too
    empty = sample(rejected, reason="empty_upload")
    with pytest.raises(InvalidArgument):
        servicer.Ingest(iter([ingestion_pb2.IngestChunk(header=header)]), None)
    assert sample(rejected, reason="empty_upload") == empty + 1
    servicer.outbox.db.close()


# ----------------------------------------------------------------------------- the view's search calls


class CountingSearch:
    """Stands in for the search service's stub (as test_workers.FakeSearch): counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def FindSimilar(self, request, timeout: float):
        self.calls += 1
        return search_pb2.FindSimilarReply()

    def Diagnose(self, request, timeout: float):
        return search_pb2.DiagnoseReply()


class ActiveFor:
    """A servicer context that stays active for ``n`` polls."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_active(self) -> bool:
        self.n -= 1
        return self.n >= 0


def test_watch_study_asks_search_only_for_the_views_it_sends(view: ViewWorker) -> None:
    """Each FindSimilar is a Milvus query and a neighbour-distance observation: not one per poll."""
    import time

    evs = stage_events("w", time.time())
    assert view(evs[:2]) == [None, None]  # ingested and embedded: similar cases exist, no verdict yet
    search = CountingSearch()
    servicer = StudyViewServicer(StudyViewSettings(), view.store, search)  # type: ignore[arg-type]
    request = studyview_pb2.GetStudyRequest(study_key="w")
    sent = list(servicer.WatchStudy(request, ActiveFor(3)))  # type: ignore[arg-type]
    assert len(sent) == 1 and search.calls == 1  # three polls, one view sent
    assert view([evs[2]]) == [None]
    assert len(list(servicer.WatchStudy(request, ActiveFor(2)))) == 1 and search.calls == 2  # type: ignore[arg-type]
