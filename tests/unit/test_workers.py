"""Each service's Kafka handler driven with events, no servers: the stage logic without a mesh.

Real blob stores, result tables and joins (SQLite; those that touch the shared state on PostgreSQL
too) and Milvus Lite (in a temporary folder); a fake only
where nothing real can run in a unit test: ``FakeTriton`` (no tritonserver), ``FakeProducer`` (no
broker) and ``FakeSearch`` (no search service). The end-to-end test keeps the real mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from cxrmesh.contracts import convert, topics
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import CLINICAL_FEATURES, EMBED_DIM, MODEL_INPUT, SEG_MEMBERS
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.runtime.blobs import NPY, LocalBlobStore, array_bytes, bytes_array
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db.engine import sqlite_url
from cxrmesh.runtime.kafka import DependencyUnavailable, Event, PermanentError, PublishError, PublishFuture
from cxrmesh.runtime.tables import ResultTable
from cxrmesh.runtime.triton import TritonRejected, TritonUnavailable
from cxrmesh.search.store import CaseStore
from cxrmesh.services.embedding.service import EmbeddingWorker
from cxrmesh.services.embedding.settings import EmbeddingSettings
from cxrmesh.services.flow import FLOW
from cxrmesh.services.ingestion.service import dicom_bytes
from cxrmesh.services.model_stage import StageParts
from cxrmesh.services.prognosis.joins import JoinTable
from cxrmesh.services.prognosis.settings import PrognosisSettings
from cxrmesh.services.prognosis.worker import PrognosisWorker
from cxrmesh.services.quantification.service import QuantificationWorker
from cxrmesh.services.quantification.settings import QuantificationSettings
from cxrmesh.services.search.worker import SearchWorker
from cxrmesh.services.segmentation.service import SegmentationWorker
from cxrmesh.services.segmentation.settings import SegmentationSettings
from cxrmesh.services.studyview.service import ViewWorker
from cxrmesh.services.studyview.store import ViewStore
from cxrmesh.v1 import common_pb2, events_pb2, search_pb2, studyview_pb2

SECRET = b"unit-test-pseudonym-key-0123456789abcdef"
Answer = Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class FakeTriton:
    """Stands in for tritonserver: answers ``answer(model, inputs)`` or raises ``fail``; records calls."""

    def __init__(self, answer: Answer, fail: Exception | None = None):
        self.answer, self.fail = answer, fail
        self.calls: list[tuple[str, dict[str, tuple[int, ...]]]] = []

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        self.calls.append((model, {name: value.shape for name, value in inputs.items()}))
        if self.fail:
            raise self.fail
        return self.answer(model, inputs)

    def model_version(self, model: str) -> str:
        return "7"


class FakeProducer:
    """Stands in for the Kafka producer: keeps what was published; ``down``: nothing is confirmed."""

    def __init__(self, down: bool = False):
        self.down = down
        self.sent: list[tuple[str, str, object]] = []

    def publish(self, topic: str, key: str, message: object, headers: object = None) -> PublishFuture:
        fut = PublishFuture()
        fut.set_running_or_notify_cancel()
        if self.down:
            fut.set_exception(PublishError(topic, "broker away"))
        else:
            self.sent.append((topic, key, message))
            fut.set_result(None)  # type: ignore[arg-type]
        return fut


class FakeSearch:
    """Stands in for the search service's stub: the given prior cases for every FindSimilar."""

    def __init__(self, cases: list[search_pb2.SimilarCase]):
        self.cases = cases

    def FindSimilar(
        self, request: search_pb2.FindSimilarRequest, timeout: float
    ) -> search_pb2.FindSimilarReply:
        return search_pb2.FindSimilarReply(cases=self.cases)


def events(topic: str, messages: list) -> list[Event]:
    return [Event(topic, 0, i, m.study_key, m, {}) for i, m in enumerate(messages)]


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def parts(
    tmp_path: Path, settings, service: str, model: str, result_type, triton, producer, blobs
) -> StageParts:
    table = ResultTable(Database(sqlite_url(tmp_path / "state.sqlite")), service, result_type)
    return StageParts(settings, FLOW[service], model, table, triton, producer, blobs)


def ingested(blobs: LocalBlobStore, key: str, image: np.ndarray) -> events_pb2.StudyIngested:
    msg = events_pb2.StudyIngested(study_key=key, patient_key=f"p-{key}")
    msg.display_image.CopyFrom(blobs.put(array_bytes(image.astype(np.float32)), NPY))
    msg.ingested_at.GetCurrentTime()
    return msg


def embedder(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Embedding = the image mean in every dimension: a result the test can tell apart per study."""
    n = len(inputs["image"])
    means = inputs["image"].mean(axis=(1, 2, 3))
    emb = np.repeat(means[:, None], EMBED_DIM, axis=1)
    return {"embedding": emb.astype(np.float32), "attention": np.ones((n, 1, 16, 16), np.float32)}


# ----------------------------------------------------------------------------- embedding


def test_embedding_embeds_a_batch_in_one_request_and_refuses_a_bad_image(tmp_path: Path, blobs) -> None:
    triton, producer = FakeTriton(embedder), FakeProducer()
    p = parts(
        tmp_path,
        EmbeddingSettings(),
        "embedding",
        "cxr_embedder",
        events_pb2.StudyEmbedded,
        triton,
        producer,
        blobs,
    )
    studies = [
        ingested(blobs, "a", np.full((MODEL_SIZE, MODEL_SIZE), 0.25)),
        ingested(blobs, "bad", np.zeros((10, 10))),
        ingested(blobs, "b", np.full((MODEL_SIZE, MODEL_SIZE), 0.75)),
    ]
    studies[0].clinical.age = 61
    results = EmbeddingWorker(p)(events(topics.STUDY_INGESTED, studies))

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], PermanentError)  # content problem: dead-lettered, not retried
    assert [shape["image"][0] for _, shape in triton.calls] == [2]  # one Triton request for the batch
    assert [(t, k) for t, k, _ in producer.sent] == [
        (topics.STUDY_EMBEDDED, "a"),
        (topics.STUDY_EMBEDDED, "b"),
    ]
    a, b = (m for _, _, m in producer.sent)
    assert a.embedding[0] == pytest.approx(0.25) and b.embedding[0] == pytest.approx(0.75)
    assert a.model.name == "cxr_embedder" and a.model.version == "7"
    assert a.clinical.age == 61 and not b.HasField("clinical")
    assert bytes_array(blobs.get(a.attention_map)).shape == (16, 16)
    assert p.table.get("b") == b and p.table.get("bad") is None


@pytest.mark.parametrize(
    ("error", "permanent"), [(TritonRejected("bad shape"), True), (TritonUnavailable("down"), False)]
)
def test_embedding_maps_triton_failures_to_dead_letter_or_retry(
    tmp_path: Path, blobs, error: Exception, permanent: bool
) -> None:
    producer = FakeProducer()
    triton = FakeTriton(embedder, fail=error)
    p = parts(
        tmp_path,
        EmbeddingSettings(),
        "embedding",
        "cxr_embedder",
        events_pb2.StudyEmbedded,
        triton,
        producer,
        blobs,
    )
    image = np.zeros((MODEL_SIZE, MODEL_SIZE))
    results = EmbeddingWorker(p)(events(topics.STUDY_INGESTED, [ingested(blobs, k, image) for k in "xy"]))
    assert all(isinstance(r, PermanentError) == permanent and r is not None for r in results)
    assert producer.sent == []


def test_unconfirmed_publish_is_retried(tmp_path: Path, blobs) -> None:
    p = parts(
        tmp_path,
        EmbeddingSettings(),
        "embedding",
        "cxr_embedder",
        events_pb2.StudyEmbedded,
        FakeTriton(embedder),
        FakeProducer(down=True),
        blobs,
    )
    image = np.zeros((MODEL_SIZE, MODEL_SIZE))
    (result,) = EmbeddingWorker(p)(events(topics.STUDY_INGESTED, [ingested(blobs, "a", image)]))
    # the broker not confirming is an outage: waited out, not spent as an attempt
    assert isinstance(result, DependencyUnavailable) and isinstance(result.__cause__, PublishError)


# ----------------------------------------------------------------------------- segmentation


def two_lungs() -> np.ndarray:
    """A model-input label map: right lung (1) on the image's left, left lung (2) on its right."""
    lungs = np.zeros((MODEL_INPUT, MODEL_INPUT), np.uint8)
    lungs[50:210, 30:115] = 1
    lungs[50:210, 141:226] = 2
    return lungs


def segmenter(disagree: bool) -> Answer:
    def answer(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(inputs["image"])
        probs = np.eye(3, dtype=np.float32)[two_lungs()].transpose(2, 0, 1)  # one-hot (3, H, W)
        members = np.repeat(probs[None], len(SEG_MEMBERS), axis=0)
        if disagree:
            members[0] = np.eye(3, dtype=np.float32)[np.zeros_like(two_lungs())].transpose(2, 0, 1)
        return {"probs": np.repeat(probs[None], n, 0), "member_probs": np.repeat(members[None], n, 0)}

    return answer


@pytest.mark.parametrize("disagree", [False, True])
def test_segmentation_publishes_the_lung_map_and_member_agreement(
    tmp_path: Path, blobs, disagree: bool
) -> None:
    producer = FakeProducer()
    p = parts(
        tmp_path,
        SegmentationSettings(),
        "segmentation",
        "lung_seg_ensemble",
        events_pb2.StudySegmented,
        FakeTriton(segmenter(disagree)),
        producer,
        blobs,
    )
    src = ingested(blobs, "a", np.zeros((MODEL_SIZE, MODEL_SIZE)))
    assert SegmentationWorker(p)(events(topics.STUDY_INGESTED, [src])) == [None]
    ((topic, _, msg),) = producer.sent
    assert topic == topics.STUDY_SEGMENTED and msg.display_image == src.display_image
    assert np.array_equal(bytes_array(blobs.get(msg.lungs)), two_lungs())
    # one member of five seeing no lungs: 4 of the 10 member pairs have Dice 0
    assert msg.member_agreement == pytest.approx(0.6 if disagree else 1.0)


# ----------------------------------------------------------------------------- quantification


@pytest.fixture(scope="module")
def radiograph() -> tuple[bytes, np.ndarray, common_pb2.StudyMetadata]:
    """The pydicom-data radiograph as ingestion leaves it: de-identified DICOM, display image, metadata."""
    deid, norm = process_dicom(Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes(), SECRET)
    return dicom_bytes(deid.dataset), norm.display, convert.metadata_proto(deid.metadata)


def landmarker(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(inputs["image"])
    xy = np.array([[128.0, 70.0], [150.0, 110.0]], np.float32)  # carina, left hilum (model-input frame)
    return {"landmarks": np.repeat(xy[None], n, 0), "confidence": np.full((n, 2), 0.9, np.float32)}


def segmented(
    blobs, key: str, dicom: bytes, display: np.ndarray, meta, lungs: np.ndarray, agreement: float = 0.7
) -> events_pb2.StudySegmented:
    msg = events_pb2.StudySegmented(study_key=key, patient_key="p", member_agreement=agreement, metadata=meta)
    msg.display_image.CopyFrom(blobs.put(array_bytes(display.astype(np.float32)), NPY))
    msg.lungs.CopyFrom(blobs.put(array_bytes(lungs), NPY))
    msg.deidentified_dicom.CopyFrom(blobs.put(dicom, "application/dicom"))
    return msg


def test_quantification_measures_four_regions_and_writes_seg_and_sr(
    tmp_path: Path, blobs, radiograph
) -> None:
    dicom, display, meta = radiograph
    producer = FakeProducer()
    p = parts(
        tmp_path,
        QuantificationSettings(),
        "quantification",
        "cxr_landmarks",
        events_pb2.StudyQuantified,
        FakeTriton(landmarker),
        producer,
        blobs,
    )
    batch = [
        segmented(blobs, "ok", dicom, display, meta, two_lungs()),
        segmented(blobs, "bad-map", dicom, display, meta, np.zeros((8, 8), np.uint8)),
        segmented(blobs, "bad-dicom", b"not a dicom file", display, meta, two_lungs()),
        segmented(blobs, "blank", dicom, np.full_like(display, 0.5), meta, two_lungs()),
    ]
    results = QuantificationWorker(p)(events(topics.STUDY_SEGMENTED, batch))

    assert results[0] is None and results[3] is None
    assert isinstance(results[1], PermanentError) and "lung map" in str(results[1])
    assert isinstance(results[2], PermanentError) and "SEG/SR" in str(results[2])
    (topic, key, msg), (_, blank_key, blank) = producer.sent
    assert (topic, key) == (topics.STUDY_QUANTIFIED, "ok")
    assert len(msg.regions) == 4 and sum(r.area_fraction for r in msg.regions) == pytest.approx(1.0, abs=0.01)
    assert [lm.name for lm in msg.landmarks] == ["carina", "left_hilum"]
    assert any("members disagree" in w for w in msg.warnings)  # agreement 0.7 < 0.9
    assert msg.quality.verdict != events_pb2.QualityGate.VERDICT_REFUSED
    # a blank frame is refused with its reason and not measured: no regions, no SEG/SR
    assert blank_key == "blank" and blank.quality.verdict == events_pb2.QualityGate.VERDICT_REFUSED
    assert blank.quality.reasons and not blank.regions and not blank.HasField("dicom_sr")
    assert blobs.get(msg.dicom_seg)[128:132] == b"DICM" and blobs.get(msg.dicom_sr)[128:132] == b"DICM"
    assert p.table.get("ok") == msg


# ----------------------------------------------------------------------------- search


@pytest.fixture
def case_store(tmp_path: Path) -> Iterator[CaseStore]:
    from milvus_lite.server_manager import server_manager_instance

    db = tmp_path / "cases.db"
    store = CaseStore(str(db), dim=EMBED_DIM, consistency="Strong")
    store.ensure_collection()
    yield store
    store.close()
    server_manager_instance.release_server(str(db))


def embedded(key: str, value: float = 1.0) -> events_pb2.StudyEmbedded:
    vector = np.zeros(EMBED_DIM, np.float32)
    vector[0] = value
    msg = events_pb2.StudyEmbedded(study_key=key, patient_key=f"p-{key}", embedding=vector.tolist())
    msg.model.name, msg.model.version = "cxr_embedder", "7"
    return msg


def test_search_indexes_embeddings_and_applies_later_labels(case_store: CaseStore) -> None:
    worker = SearchWorker(case_store)
    assert worker(events(topics.STUDY_EMBEDDED, [embedded("a"), embedded("a")])) == [None, None]
    labels = common_pb2.KnownLabels(outcome=common_pb2.OUTCOME_INTUBATED_72H)
    late = [events_pb2.ClinicalUpdated(study_key=k, labels=labels) for k in ("a", "unknown")]
    results = worker(events(topics.STUDY_CLINICAL, late))
    assert results[0] is None
    assert isinstance(results[1], LookupError)  # not indexed yet: retried until its embedding arrives
    found = case_store.get(["a"])
    assert list(found) == ["a"] and found["a"].outcome == convert.outcome_value(
        common_pb2.OUTCOME_INTUBATED_72H
    )


# ----------------------------------------------------------------------------- prognosis


def quantified(key: str) -> events_pb2.StudyQuantified:
    regions = [
        events_pb2.RegionMeasurement(region=r, area_fraction=0.25, mean_intensity=0.5, opacity_fraction=0.1)
        for r in ("right_upper", "right_lower", "left_upper", "left_lower")
    ]
    return events_pb2.StudyQuantified(study_key=key, regions=regions)


def complete_clinical() -> common_pb2.ClinicalData:
    clinical = common_pb2.ClinicalData()
    for name in CLINICAL_FEATURES:
        setattr(clinical, name, True if name == "sex_male" else 1)
    return clinical


def test_prognosis_waits_for_both_inputs_and_names_missing_clinical_data(db: Database) -> None:
    head = FakeTriton(lambda m, x: {"probability": np.full((len(x["embedding"]), 1), 0.8, np.float32)})
    producer = FakeProducer()
    prior = search_pb2.SimilarCase(study_key="old", outcome=common_pb2.OUTCOME_INTUBATED_72H)
    results = ResultTable(db, "prognosis", events_pb2.PrognosisResult)
    worker = PrognosisWorker(
        PrognosisSettings(),
        head,
        producer,
        JoinTable(db),
        results,
        FakeSearch([prior]),
    )
    with_clinical = embedded("a")
    with_clinical.clinical.CopyFrom(complete_clinical())

    assert worker(events(topics.STUDY_EMBEDDED, [with_clinical, embedded("b")])) == [None, None]
    assert producer.sent == [] and head.calls == []  # quantification not there yet
    assert worker(events(topics.STUDY_QUANTIFIED, [quantified("a"), quantified("b")])) == [None, None]

    sent = {key: msg for _, key, msg in producer.sent}
    assert sent["a"].status == events_pb2.PrognosisResult.STATUS_DONE
    assert sent["a"].probability_intubation_72h == pytest.approx(0.8)
    assert sent["a"].neighbours_intubated == 1 and sent["a"].neighbours_with_outcome == 1
    assert sent["b"].status == events_pb2.PrognosisResult.STATUS_NO_CLINICAL_DATA
    assert list(sent["b"].missing_clinical) == list(CLINICAL_FEATURES)
    assert [shape["embedding"] for _, shape in head.calls] == [(1, EMBED_DIM)]  # only the complete study
    assert results.get("b") == sent["b"]


# ----------------------------------------------------------------------------- study view


def test_study_view_marks_a_dead_lettered_stage_and_its_dependants_failed(db: Database, blobs) -> None:
    store = ViewStore(db)
    worker = ViewWorker(store)
    src = ingested(blobs, "a", np.zeros((4, 4)))
    assert worker(events(topics.STUDY_INGESTED, [src])) == [None]
    assert worker(events(topics.STUDY_EMBEDDED, [embedded("a")])) == [None]
    dead = events_pb2.DeadLetter(key="a", service="segmentation", reason="model refused the input")
    assert worker([Event(topics.DEAD_LETTER, 0, 0, "a", dead, {})]) == [None]

    stages, payloads = store.load("a")
    state = {name: (value, reason) for name, value, reason, _ in stages}
    assert state["ingested"][0] == state["embedded"][0] == studyview_pb2.STAGE_DONE
    assert state["segmented"] == (studyview_pb2.STAGE_FAILED, "segmentation: model refused the input")
    assert state["quantified"] == (studyview_pb2.STAGE_FAILED, "upstream stage segmented failed")
    assert state["prognosis"][0] == studyview_pb2.STAGE_PENDING  # its own inputs have not failed
    assert events_pb2.StudyIngested.FromString(payloads["ingested"]) == src
    store.close()


def test_implausible_landmarks_are_replaced_by_the_estimate_and_counted(
    tmp_path: Path, blobs, radiograph
) -> None:
    from prometheus_client import REGISTRY

    def swapped(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(inputs["image"])
        xy = np.array([[128.0, 150.0], [150.0, 60.0]], np.float32)  # left hilum above the carina
        return {"landmarks": np.repeat(xy[None], n, 0), "confidence": np.full((n, 2), 0.05, np.float32)}

    dicom, display, meta = radiograph
    producer = FakeProducer()
    p = parts(
        tmp_path,
        QuantificationSettings(),
        "quantification",
        "cxr_landmarks",
        events_pb2.StudyQuantified,
        FakeTriton(swapped),
        producer,
        blobs,
    )
    before = REGISTRY.get_sample_value("cxrmesh_landmark_fallbacks_total") or 0.0
    assert QuantificationWorker(p)(
        events(topics.STUDY_SEGMENTED, [segmented(blobs, "k", dicom, display, meta, two_lungs(), 0.95)])
    ) == [None]
    ((_, _, msg),) = producer.sent
    assert msg.landmarks_estimated and all(lm.estimated for lm in msg.landmarks)
    assert [round(lm.detector_score, 2) for lm in msg.landmarks] == [0.05, 0.05]
    hilum = msg.landmarks[1].model
    assert msg.landmarks[0].model.y < hilum.y  # the estimate is plausible: carina above the hilum
    assert any("estimated" in w and "above" in w for w in msg.warnings)
    assert REGISTRY.get_sample_value("cxrmesh_landmark_fallbacks_total") == before + 1
