"""Search: keeps the Milvus case index and answers similar-case and diagnosis-vote queries.

Consumes StudyEmbedded (upsert by study key: redelivery and re-ingestion leave one entity) and
ClinicalUpdated (labels and clinical data arriving later). Queries by study key, raw embedding
or an uploaded DICOM (validated and normalised in memory with the ingestion domain code, embedded
by Triton, then discarded: nothing of it is stored or logged).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import grpc
import numpy as np
from google.protobuf import json_format

from cxrmesh.contracts import convert, topics
from cxrmesh.contracts.errors import InvalidArgument, NotFound, Unavailable
from cxrmesh.contracts.tensors import EMBED_DIM
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.dicom.validate import DicomRejected
from cxrmesh.runtime.blobs import NPY, array_bytes, open_blob_store
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Consumer, Event, EventProducer
from cxrmesh.runtime.settings import SearchSettings
from cxrmesh.runtime.tables import kafka_config
from cxrmesh.runtime.triton import TritonClient, TritonError
from cxrmesh.search.errors import InvalidQuery, StoreError, StoreUnavailable
from cxrmesh.search.errors import NotFound as StoreNotFound
from cxrmesh.search.store import CaseFilter, CaseRecord, CaseStore, Neighbour
from cxrmesh.search.vote import weighted_vote
from cxrmesh.services import stage
from cxrmesh.v1 import common_pb2, events_pb2, search_pb2, search_pb2_grpc

log = logging.getLogger(__name__)
MAX_K = 1024


def model_version(model: common_pb2.ModelVersion) -> str:
    """How the index names an embedding space: neighbours are only looked up within one."""
    return f"{model.name}:{model.version}"


def record_from_event(event: events_pb2.StudyEmbedded) -> CaseRecord:
    meta = event.metadata
    return CaseRecord(
        study_key=event.study_key,
        patient_key=event.patient_key,
        embedding=np.asarray(event.embedding, dtype=np.float32),
        model_version=model_version(event.model),
        site=meta.site,
        diagnosis=convert.diagnosis_name(event.labels.diagnosis),
        outcome=convert.outcome_value(event.labels.outcome),
        age_band=meta.age_band,
        sex=meta.sex,
        study_date=meta.study_date,
        attention_ref=json_format.MessageToJson(event.attention_map, indent=None),
        clinical=_clinical_json(event.clinical) if event.HasField("clinical") else "",
    )


class SearchWorker:
    """Kafka handler for StudyEmbedded and ClinicalUpdated."""

    def __init__(self, store: CaseStore):
        self.store = store

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        results: list[BaseException | None] = [None] * len(events)
        embedded = [(i, e) for i, e in enumerate(events) if e.topic == topics.STUDY_EMBEDDED]
        if embedded:
            try:
                # labels/clinical data that arrived earlier through ClinicalUpdated are kept by the store
                self.store.upsert([record_from_event(e.message) for _, e in embedded])
            except StoreError as exc:
                for i, _ in embedded:
                    results[i] = exc
        for i, e in enumerate(events):
            if e.topic != topics.STUDY_CLINICAL:
                continue
            msg: events_pb2.ClinicalUpdated = e.message
            changes = {
                "diagnosis": convert.diagnosis_name(msg.labels.diagnosis) or None,
                "outcome": convert.outcome_value(msg.labels.outcome) if msg.labels.outcome else None,
                "clinical": _clinical_json(msg.clinical) if msg.HasField("clinical") else None,
            }
            if all(v is None for v in changes.values()):
                continue
            try:
                found = self.store.update_labels(msg.study_key, **changes)
                if not found:
                    results[i] = LookupError("study not indexed yet; retrying after its embedding arrives")
            except StoreError as exc:
                results[i] = exc
        return results


def _clinical_json(clinical: common_pb2.ClinicalData) -> str:
    return json_format.MessageToJson(clinical, indent=None, preserving_proto_field_name=True)


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, settings: SearchSettings, store: CaseStore, triton: TritonClient):
        self.settings = settings
        self.store = store
        self.triton = triton
        self.blobs = open_blob_store(settings.blob_location)
        self.secret = settings.deid_secret.get_secret_value().encode()

    def FindSimilar(self, request: search_pb2.FindSimilarRequest, context: grpc.ServicerContext):
        neighbours, query_attention, model = self._neighbours(request)
        reply = search_pb2.FindSimilarReply(cases=[self._case(n) for n in neighbours])
        if model:
            reply.model.CopyFrom(model)
        if query_attention is not None:
            reply.query_attention_map.CopyFrom(query_attention)
        return reply

    def Diagnose(self, request: search_pb2.FindSimilarRequest, context: grpc.ServicerContext):
        if not request.filter.labelled_only:
            request.filter.labelled_only = True  # votes count labelled neighbours only
        neighbours, _, _ = self._neighbours(request)
        k = request.k or self.settings.default_k
        vote = weighted_vote(neighbours, k=k)
        return search_pb2.DiagnoseReply(
            diagnosis=convert.diagnosis_enum(vote.label),
            scores=vote.scores,
            neighbours_used=vote.neighbours_used,
            cases=[self._case(n) for n in neighbours[:k]],
        )

    # ------------------------------------------------------------------ helpers
    def _neighbours(
        self, request: search_pb2.FindSimilarRequest
    ) -> tuple[list[Neighbour], common_pb2.BlobRef | None, common_pb2.ModelVersion | None]:
        k = request.k or self.settings.default_k
        if not 1 <= k <= MAX_K:
            raise InvalidArgument("bad_k", f"k = {k} is out of range; ask for 1..{MAX_K} neighbours")
        flt = self._filter(request.filter)
        attention_ref = None
        model = None
        kind = request.WhichOneof("query")
        if kind == "study_key":
            try:
                found = self.store.get([request.study_key])
            except StoreUnavailable as exc:
                raise Unavailable("milvus_unavailable", f"the case index does not answer: {exc}") from exc
            if request.study_key not in found:
                raise NotFound(
                    "unknown_study", "no indexed study with this study_key (not ingested or not embedded yet)"
                )
            rec = found[request.study_key]
            vector = rec.embedding
            flt = dataclasses.replace(
                flt, exclude_study_keys=(request.study_key,), model_version=rec.model_version
            )
            if not request.filter.include_same_patient:
                flt = dataclasses.replace(flt, exclude_patient_key=rec.patient_key)
        elif kind == "embedding":
            vector = np.asarray(request.embedding.values, dtype=np.float32)
            if vector.shape != (EMBED_DIM,) or not np.all(np.isfinite(vector)):
                raise InvalidArgument(
                    "bad_embedding", f"embedding must be {EMBED_DIM} finite floats, got {vector.size} values"
                )
            norm = float(np.linalg.norm(vector))
            if norm == 0 or not math.isfinite(norm):
                raise InvalidArgument(
                    "bad_embedding", "embedding has zero length; send an L2-normalised vector"
                )
            vector = vector / norm
            flt = dataclasses.replace(flt, model_version=model_version(self._current_model()))
        elif kind == "dicom":
            vector, attention_ref, model, patient_key = self._embed_dicom(request.dicom)
            flt = dataclasses.replace(flt, model_version=model_version(model))
            if not request.filter.include_same_patient:
                flt = dataclasses.replace(flt, exclude_patient_key=patient_key)
        else:
            raise InvalidArgument("missing_query", "set one of study_key, dicom or embedding")
        try:
            return self.store.search(vector, k, flt), attention_ref, model
        except InvalidQuery as exc:
            raise InvalidArgument("bad_query", str(exc)) from exc
        except StoreNotFound as exc:
            raise NotFound("unknown_study", str(exc)) from exc
        except StoreUnavailable as exc:
            raise Unavailable("milvus_unavailable", f"the case index does not answer: {exc}") from exc

    def _current_model(self) -> common_pb2.ModelVersion:
        """The embedder Triton serves now: raw embeddings are compared within its space."""
        try:
            version = self.triton.model_version(self.settings.embed_model)
        except TritonError as exc:
            raise Unavailable("triton_unavailable", f"cannot tell the embedder version: {exc}") from exc
        return common_pb2.ModelVersion(name=self.settings.embed_model, version=version)

    def _embed_dicom(self, raw: bytes):
        try:
            deid, norm = process_dicom(raw, self.secret)
        except DicomRejected as exc:
            raise InvalidArgument(exc.code, exc.reason) from exc
        try:
            emb, att = stage.embed_images(
                self.triton, self.settings.embed_model, [norm.display.astype(np.float32)]
            )
        except TritonError as exc:
            raise Unavailable("triton_unavailable", f"the embedder does not answer: {exc}") from exc
        ref = self.blobs.put(array_bytes(att[0, 0].astype(np.float32)), NPY)
        return emb[0], ref, self._current_model(), deid.patient_key

    def _filter(self, f: search_pb2.CaseFilter) -> CaseFilter:
        bad = [d for d in f.diagnoses if d not in convert.DIAGNOSIS_NAMES]
        if bad:
            raise InvalidArgument("bad_filter", f"filter.diagnoses has unknown values {bad}")
        return CaseFilter(
            sites=tuple(f.sites),
            diagnoses=tuple(convert.diagnosis_name(d) for d in f.diagnoses),
            sexes=tuple(f.sexes),
            age_bands=tuple(f.age_bands),
            labelled_only=f.labelled_only,
            study_date_from=f.study_date_from,
            study_date_to=f.study_date_to,
        )

    def _case(self, n: Neighbour) -> search_pb2.SimilarCase:
        r = n.record
        case = search_pb2.SimilarCase(
            study_key=r.study_key,
            similarity=float(n.similarity),
            diagnosis=convert.diagnosis_enum(r.diagnosis),
            outcome=convert.outcome_enum(r.outcome),
            site=r.site,
            age_band=r.age_band,
            sex=r.sex,
            study_date=r.study_date,
        )
        if r.attention_ref:
            json_format.Parse(r.attention_ref, case.attention_map)
        if r.clinical:
            json_format.Parse(r.clinical, case.clinical)
        return case


def build(settings: SearchSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings)
    if not settings.milvus_uri:
        (settings.data_dir / "milvus").mkdir(parents=True, exist_ok=True)
    store = CaseStore(
        settings.milvus_location,
        token=settings.milvus_token.get_secret_value(),
        collection=settings.milvus_collection,
        dim=EMBED_DIM,
        index=settings.milvus_index,
        consistency=settings.milvus_consistency,
    )
    store.ensure_collection()
    triton = TritonClient(settings.triton_url, settings.triton_timeout_s)
    cfg = kafka_config(settings, "cxrmesh-search")
    producer = EventProducer(cfg)  # dead letters
    consumer = Consumer(
        cfg,
        {topics.STUDY_EMBEDDED: events_pb2.StudyEmbedded, topics.STUDY_CLINICAL: events_pb2.ClinicalUpdated},
        SearchWorker(store),
        producer,
        service=settings.service,
    )
    servicer = SearchServicer(settings, store, triton)
    runtime.add_service(
        search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
        search_pb2_grpc.add_SearchServiceServicer_to_server,
        servicer,
    )
    runtime.add_dependency("milvus", store.ping)
    runtime.add_dependency("triton", lambda: triton.ready([settings.embed_model]))
    runtime.add_dependency("kafka", consumer.healthy)
    runtime.add_worker("consumer", consumer.run)
    runtime.on_close(producer.close)
    runtime.on_close(store.close)
    runtime.on_close(triton.close)
    return runtime


def main() -> None:
    build(SearchSettings()).run()


if __name__ == "__main__":
    main()
