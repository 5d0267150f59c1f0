"""The search service's gRPC API: similar cases and the diagnosis vote, by study key, embedding or DICOM.

An uploaded DICOM is validated and normalised in memory with the ingestion domain code, embedded by
Triton, then discarded: nothing of it is stored or logged. Store errors become gRPC statuses here
(the store's ``NotFound`` is imported as ``StoreNotFound``: a missing entity, not yet an RPC answer).
Every FindSimilar with a hit observes the query's distance to its nearest case (``nearest_distance``).
"""

from __future__ import annotations

import dataclasses
import math

import grpc
import numpy as np
from google.protobuf import json_format

from cxrmesh.contracts import convert
from cxrmesh.contracts.errors import InvalidArgument, NotFound, Unavailable
from cxrmesh.contracts.tensors import EMBED_DIM
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.dicom.rejection import DicomRejected
from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import NPY, array_bytes, open_blob_store
from cxrmesh.runtime.triton import TritonClient, TritonUnavailable
from cxrmesh.search.errors import InvalidQuery, StoreUnavailable
from cxrmesh.search.errors import NotFound as StoreNotFound
from cxrmesh.search.store import CaseFilter, CaseStore, Neighbour
from cxrmesh.search.vote import weighted_vote
from cxrmesh.services import batch
from cxrmesh.services.search.settings import SearchSettings
from cxrmesh.services.search.worker import model_version
from cxrmesh.v1 import common_pb2, search_pb2, search_pb2_grpc

MAX_K = 1024


def nearest_distance(neighbours: list[Neighbour]) -> float | None:
    """Cosine distance (1 - cosine similarity, the index's metric) to the nearest case; None without one.

    A model-health signal: queries drifting away from everything indexed (a new site or scanner, a
    changed embedder) push it up long before anyone reads a similar case and finds it unlike.
    """
    if not neighbours:
        return None
    return 1.0 - max(n.similarity for n in neighbours)


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, settings: SearchSettings, store: CaseStore, triton: TritonClient):
        self.settings = settings
        self.store = store
        self.triton = triton
        self.blobs = open_blob_store(settings.blob_location)
        self.secret = settings.deid_secret.get_secret_value().encode()
        self.pixels = settings.pixel_policy()

    def FindSimilar(self, request: search_pb2.FindSimilarRequest, context: grpc.ServicerContext):
        neighbours, query_attention, model = self._neighbours(request)
        distance = nearest_distance(neighbours)
        if distance is not None:
            metrics.neighbour_distance().observe(distance)
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
        except TritonUnavailable as exc:  # a refusal (TritonRejected) is a bug, answered INTERNAL
            raise Unavailable("triton_unavailable", f"cannot tell the embedder version: {exc}") from exc
        return common_pb2.ModelVersion(name=self.settings.embed_model, version=version)

    def _embed_dicom(self, raw: bytes):
        try:
            deid, norm = process_dicom(raw, self.secret, self.pixels)
        except DicomRejected as exc:
            raise InvalidArgument(exc.code, exc.reason) from exc
        try:
            emb, att = batch.embed_images(
                self.triton, self.settings.embed_model, [norm.display.astype(np.float32)]
            )
        except TritonUnavailable as exc:
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
