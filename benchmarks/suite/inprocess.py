"""The pipeline benchmark's baseline: the mesh's work on one study, in one process, stage after stage.

``pipeline.py`` streams studies through the whole local mesh; this runs the same studies through the
same domain code, one after another, with the models in ONNX Runtime in this process: the runtime
the mesh's Triton CPU profile serves them with too (its ``cxrmesh_onnxruntime`` backend, default
intra-op threads), so the inference engine is not what differs. The ratio mesh / in-process is
then what the mesh's distribution costs (or buys, through overlap), not a difference in the work.

Included, per study, with the functions the services call:

* ingestion: the header checks (``convert.validate_clinical`` / ``validate_labels``), the admission
  (``cxrmesh.dicom.admit.process_dicom``: bounded read, validation, burned-in flag, decode,
  de-identification, normalisation, tesseract OCR of the burned-in text, with the mesh's default
  policy), the de-identified DICOM serialised (``dicom_bytes``: the SEG/SR source) and the original
  identity captured and sealed (``IdentityVault.seal``);
* embedding: ``cxr_embedder`` on ``model_input`` of the display image, the StudyEmbedded message;
* search: ``record_from_event`` and ``CaseStore.upsert`` into Milvus Lite (a file in ``work``, as
  the local mesh's search service uses). Milvus Lite runs as its own local server process that
  pymilvus starts and talks to over a socket, as in the mesh: this stage is not purely in-process;
* segmentation: the five members and their served weighted mean (``OnnxModels.member_weights``),
  ``lung_map``, ``member_agreement`` and ``lung_area_fractions``;
* quantification: ``cxr_landmarks``, the quality gate (``assess_quality``), ``choose_landmarks``,
  ``landmark_messages``, ``quantify_study`` (regions, measurements, RALE) and ``dicom_outputs``
  (the DICOM SEG and SR, serialised);
* prognosis: the head (``prognosis_head`` ONNX) on embedding + ``region_features`` + clinical
  vector, and the labelled nearest neighbours from the case store (as prognosis asks search).

Deliberately left out, so that the ratio measures them: gRPC (the Ingest upload, the Get and
FindSimilar calls), Kafka (publish, confirm, consume, the five hops), Triton (its scheduler and
batching), the durable writes (blob store files, the outbox, result and join tables, identity rows,
the study view projection), TLS and authorization, and the Prometheus metrics. The stages run one
after another; the mesh overlaps embedding and segmentation and consecutive studies.

Where a stage's code lives in its Kafka handler rather than a pure function (the quantification
worker's gate -> landmarks -> measure sequence, the segmentation worker's message, search's
neighbour filter in its servicer), this module repeats the handler's short sequence of calls to the
same functions; moving each sequence into a pure function both call would remove the repetition.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrmesh.analysis.landmarks import choose_landmarks
from cxrmesh.analysis.lung_map import lung_map
from cxrmesh.analysis.pixels import Letterbox, model_input
from cxrmesh.analysis.quality import assess_quality
from cxrmesh.contracts import convert
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import EMBED_DIM, EMBEDDER, LANDMARKER, MODEL_INPUT, PROGNOSIS, SEG_MEMBERS
from cxrmesh.dicom.admit import DEFAULT_PIXEL_POLICY, process_dicom
from cxrmesh.dicom.deid import Deidentified
from cxrmesh.dicom.normalise import Normalised
from cxrmesh.dicom.reidentify import capture
from cxrmesh.dicom.rejection import DicomRejected
from cxrmesh.ml.onnx_models import OnnxModels
from cxrmesh.ml.repository import VERSION, onnx_path
from cxrmesh.runtime.db.identities import IdentityVault
from cxrmesh.search.records import CaseFilter
from cxrmesh.search.store import CaseStore
from cxrmesh.services.ingestion.service import dicom_bytes, original_header
from cxrmesh.services.prognosis.worker import refused, region_features
from cxrmesh.services.quantification.measure import dicom_outputs, quantify_study
from cxrmesh.services.quantification.service import landmark_messages
from cxrmesh.services.search.worker import record_from_event
from cxrmesh.services.segmentation.service import lung_area_fractions, member_agreement
from cxrmesh.v1 import common_pb2, events_pb2, ingestion_pb2

STAGES = ("ingestion", "embedding", "search", "segmentation", "quantification", "prognosis")
NEIGHBOURS = 10  # PrognosisSettings.neighbours' default
MIN_MEMBER_AGREEMENT = 0.9  # QuantificationSettings.min_member_agreement's default


@dataclass
class Admitted:
    """What ingestion hands on: the de-identified study, its display image and the header's data."""

    deid: Deidentified
    norm: Normalised
    dicom: bytes  # the de-identified DICOM, as ingestion stores it
    metadata: common_pb2.StudyMetadata
    header: ingestion_pb2.IngestHeader


@dataclass
class Segmented:
    lungs: np.ndarray
    agreement: float


class InProcessPipeline:
    """The mesh's per-study work without the mesh: ``process`` one study, get seconds per stage."""

    def __init__(self, repository: Path, work: Path, threads: int = 0):
        import onnxruntime as ort

        self.models = OnnxModels(repository, threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        path = str(onnx_path(repository, PROGNOSIS.name))
        self.head = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        work.mkdir(parents=True, exist_ok=True)
        self.store = CaseStore(str((work / "inprocess-cases.db").resolve()), dim=EMBED_DIM, index="FLAT")
        self.store.ensure_collection()
        self.secret = secrets.token_hex(32).encode()  # a fresh key: pseudonyms of this run only
        self.vault = IdentityVault(self.secret)

    def process(self, dicom: bytes, header: ingestion_pb2.IngestHeader) -> dict[str, float]:
        """One study through every stage, one after another: seconds per stage (``STAGES``).

        A study the admission refuses (the synthetic corpus plants burned-in identifiers in some) gets
        ``ingestion`` only, as in the mesh, where Ingest answers INVALID_ARGUMENT and nothing follows.
        """
        seconds: dict[str, float] = {}
        with _timed(seconds, "ingestion"):
            try:
                study = self.ingest(dicom, header)
            except DicomRejected:
                study = None
        if study is None:
            return seconds
        with _timed(seconds, "embedding"):
            embedded = self.embed(study)
        with _timed(seconds, "search"):
            self.store.upsert([record_from_event(embedded)])
        with _timed(seconds, "segmentation"):
            seg = self.segment(study)
        with _timed(seconds, "quantification"):
            quantified = self.quantify(study, seg)
        with _timed(seconds, "prognosis"):
            self.prognosis(embedded, quantified, header.clinical)
        return seconds

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ stages
    def ingest(self, raw: bytes, header: ingestion_pb2.IngestHeader) -> Admitted:
        """IngestionServicer.Ingest less the upload, the blobs, the outbox and the reply."""
        if header.HasField("clinical"):
            convert.validate_clinical(header.clinical)
        convert.validate_labels(header.labels)
        deid, norm = process_dicom(raw, self.secret, DEFAULT_PIXEL_POLICY)
        deid_dicom = dicom_bytes(deid.dataset)
        self.vault.seal(capture(original_header(raw), deid.dataset))
        return Admitted(deid, norm, deid_dicom, convert.metadata_proto(deid.metadata), header)

    def embed(self, study: Admitted) -> events_pb2.StudyEmbedded:
        """EmbeddingWorker: the embedder on the model input, the StudyEmbedded search indexes."""
        emb, _att = self.models.sessions[EMBEDDER.name].run(None, {"image": _image(study)})
        msg = events_pb2.StudyEmbedded(
            study_key=study.deid.study_key,
            patient_key=study.deid.patient_key,
            embedding=emb[0].astype(np.float32).tolist(),
            model=common_pb2.ModelVersion(name=EMBEDDER.name, version=str(VERSION)),
            metadata=study.metadata,
            labels=study.header.labels,
        )
        if study.header.HasField("clinical"):
            msg.clinical.CopyFrom(study.header.clinical)
        return msg

    def segment(self, study: Admitted) -> Segmented:
        """The served ensemble (members, weighted mean) and SegmentationWorker's lung map."""
        image = _image(study)
        members = np.stack(
            [self.models.sessions[m].run(["probs"], {"image": image})[0][0] for m in SEG_MEMBERS]
        )
        probs = np.tensordot(self.models.member_weights, members, axes=1).astype(np.float32)
        lungs = lung_map(probs, model_input(study.norm.display)[0, 0])
        lung_area_fractions(lungs)
        return Segmented(lungs, member_agreement(members))

    def quantify(self, study: Admitted, seg: Segmented) -> events_pb2.StudyQuantified:
        """QuantificationWorker.result: landmarks, gate, regions, RALE, DICOM SEG and SR."""
        xy, conf = self.models.sessions[LANDMARKER.name].run(None, {"image": _image(study)})
        xy, conf = xy[0], conf[0]
        image = model_input(study.norm.display)[0, 0]
        rows, cols = study.metadata.rows or MODEL_SIZE, study.metadata.columns or MODEL_SIZE
        gate = assess_quality(image, seg.lungs, seg.agreement)
        chosen = choose_landmarks(seg.lungs, tuple(map(float, xy[0])), tuple(map(float, xy[1])), tuple(conf))
        msg = events_pb2.StudyQuantified(
            study_key=study.deid.study_key,
            landmarks=landmark_messages(chosen, conf, Letterbox(rows, cols, MODEL_INPUT)),
            quality=events_pb2.QualityGate(verdict=convert.VERDICT_ENUMS[gate.verdict]),
        )
        if gate.verdict == "refused":
            return msg
        q = quantify_study(image, seg.lungs, chosen)
        dicom_outputs(study.dicom, q, rows, cols)
        msg.regions.extend(q.measurements)
        msg.rale_total = q.rale_total
        return msg

    def prognosis(
        self, emb: events_pb2.StudyEmbedded, q: events_pb2.StudyQuantified, clinical: common_pb2.ClinicalData
    ) -> float | None:
        """PrognosisWorker: the head when the data are complete, and the labelled neighbours' outcomes."""
        prob = None
        clin = convert.clinical_vector(clinical)  # None exactly when ``missing_clinical`` names a field
        if clin is not None and not refused(q):
            inputs = {
                "embedding": np.asarray([emb.embedding], dtype=np.float32),
                "regions": region_features(q)[None].astype(np.float32),
                "clinical": clin[None].astype(np.float32),
            }
            prob = float(self.head.run(["probability"], inputs)[0][0, 0])
        self.neighbours(emb)
        return prob

    def neighbours(self, emb: events_pb2.StudyEmbedded) -> int:
        """SearchServicer.FindSimilar by study key (labelled only, other patients, same embedder)."""
        rec = self.store.get([emb.study_key])[emb.study_key]
        flt = CaseFilter(
            labelled_only=True,
            exclude_study_keys=(emb.study_key,),
            exclude_patient_key=rec.patient_key,
            model_version=rec.model_version,
        )
        return len(self.store.search(rec.embedding, NEIGHBOURS, flt))


def _image(study: Admitted) -> np.ndarray:
    """The image models' input, as ``batch.infer_images`` makes it for a batch of one."""
    return np.ascontiguousarray(model_input(study.norm.display), dtype=np.float32)


@contextmanager
def _timed(into: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    into[stage] = time.perf_counter() - t0
