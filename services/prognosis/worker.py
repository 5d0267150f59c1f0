"""The prognosis service's Kafka handler: join the inputs of a study, run the head, publish the result.

Joins StudyEmbedded, StudyQuantified and clinical data (from the embedding event or later
ClinicalUpdated) per study; when embedding and quantification are both there it publishes a
PrognosisResult: the probability of intubation within 72 h when the clinical data are complete,
otherwise STATUS_NO_CLINICAL_DATA naming what is missing (no guessing), or STATUS_IMAGE_REFUSED when
the quality gate refused the image (nothing was measured to score), with the outcomes of the
nearest labelled prior cases from search.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from cxrmesh.analysis.quantify import region_vector
from cxrmesh.contracts import convert, topics
from cxrmesh.contracts.tensors import CLINICAL_FEATURES, EMBED_DIM
from cxrmesh.runtime.kafka import Event, EventProducer
from cxrmesh.runtime.tables import ResultTable
from cxrmesh.runtime.triton import TritonClient
from cxrmesh.services import batch
from cxrmesh.services.prognosis.joins import JoinTable, Row
from cxrmesh.services.prognosis.settings import PrognosisSettings
from cxrmesh.v1 import common_pb2, events_pb2, search_pb2, search_pb2_grpc


def region_features(q: events_pb2.StudyQuantified) -> np.ndarray:
    """StudyQuantified -> the head's region input, in the one order ``quantify.region_vector`` uses."""
    names = ("area_fraction", "mean_intensity", "opacity_fraction")
    return region_vector({m.region: {n: getattr(m, n) for n in names} for m in q.regions})


def refused(q: events_pb2.StudyQuantified) -> bool:
    """The quality gate refused the image: no regions to score, so no prognosis (said, not guessed)."""
    return q.quality.verdict == events_pb2.QualityGate.VERDICT_REFUSED


def missing_clinical(clinical: common_pb2.ClinicalData) -> list[str]:
    return [name for name in CLINICAL_FEATURES if not clinical.HasField(name)]


class PrognosisWorker:
    def __init__(
        self,
        settings: PrognosisSettings,
        triton: TritonClient,
        producer: EventProducer,
        joins: JoinTable,
        results: ResultTable,
        search: search_pb2_grpc.SearchServiceStub,
    ):
        self.settings, self.triton, self.producer = settings, triton, producer
        self.joins, self.results, self.search = joins, results, search

    def _record(self, event: Event) -> Row:
        msg = event.message
        key = msg.study_key
        if event.topic == topics.STUDY_EMBEDDED:
            if msg.HasField("clinical"):
                self.joins.merge_clinical(key, msg.clinical, convert.merge_clinical)
            return self.joins.update(key, "embedded", msg.SerializeToString())
        if event.topic == topics.STUDY_QUANTIFIED:
            return self.joins.update(key, "quantified", msg.SerializeToString())
        return self.joins.merge_clinical(key, msg.clinical, convert.merge_clinical)[1]

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        """One result per event; Triton, database or broker outages come back as ``DependencyUnavailable``
        (the consumer waits for them without spending attempts)."""
        return batch.handle_outages(self._handle, events)

    def _handle(self, events: Sequence[Event]) -> list[BaseException | None]:
        results: list[BaseException | None] = [None] * len(events)
        ready = []
        for i, event in enumerate(events):
            if event.topic == topics.STUDY_CLINICAL and not event.message.HasField("clinical"):
                continue  # labels only: nothing for prognosis
            emb, quant, clin = self._record(event)
            if emb is not None and quant is not None:
                ready.append(
                    (
                        i,
                        events_pb2.StudyEmbedded.FromString(emb),
                        events_pb2.StudyQuantified.FromString(quant),
                        common_pb2.ClinicalData.FromString(clin) if clin else common_pb2.ClinicalData(),
                    )
                )
        complete = [(i, e, q, c) for i, e, q, c in ready if not missing_clinical(c) and not refused(q)]
        probs: dict[int, float] = {}
        if complete:
            inputs = {
                "embedding": np.stack([np.asarray(e.embedding, dtype=np.float32) for _, e, _, _ in complete]),
                "regions": np.stack([region_features(q) for _, _, q, _ in complete]),
                "clinical": np.stack([convert.clinical_vector(c) for _, _, _, c in complete]),
            }
            if inputs["embedding"].shape[1] != EMBED_DIM:
                raise ValueError(f"embedding has {inputs['embedding'].shape[1]} values, expected {EMBED_DIM}")
            out = batch.run_model(
                results,
                [i for i, *_ in complete],
                lambda: self.triton.infer(self.settings.prognosis_model, inputs, ["probability"]),
            )
            if out is None:
                return results
            probs = {i: float(out["probability"][j, 0]) for j, (i, *_) in enumerate(complete)}
        model = self.settings.prognosis_model
        version = (
            common_pb2.ModelVersion(name=model, version=self.triton.model_version(model)) if probs else None
        )
        pending = []
        for i, emb, q, clin in ready:
            if results[i] is not None:
                continue
            msg = events_pb2.PrognosisResult(study_key=emb.study_key, ingested_at=emb.ingested_at)
            if refused(q):
                msg.status = events_pb2.PrognosisResult.STATUS_IMAGE_REFUSED
            elif i in probs:
                msg.status = events_pb2.PrognosisResult.STATUS_DONE
                msg.probability_intubation_72h = probs[i]
                msg.model.CopyFrom(version)
            else:
                msg.status = events_pb2.PrognosisResult.STATUS_NO_CLINICAL_DATA
                msg.missing_clinical.extend(missing_clinical(clin))
            self._neighbours(msg, emb)
            self.results.put(emb.study_key, msg)
            pending.append(
                (i, emb.ingested_at, self.producer.publish(topics.STUDY_PROGNOSIS, emb.study_key, msg))
            )
        return batch.confirm(results, pending, "prognosis")

    def _neighbours(self, msg: events_pb2.PrognosisResult, emb: events_pb2.StudyEmbedded) -> None:
        """Outcomes of the nearest prior cases with a known outcome (best effort: search may lag)."""
        flt = search_pb2.CaseFilter(labelled_only=True)
        k = self.settings.neighbours
        try:
            try:
                reply = self.search.FindSimilar(
                    search_pb2.FindSimilarRequest(study_key=emb.study_key, k=k, filter=flt), timeout=10
                )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                query = search_pb2.Embedding(values=emb.embedding)
                reply = self.search.FindSimilar(
                    search_pb2.FindSimilarRequest(embedding=query, k=k + 1, filter=flt), timeout=10
                )
        except grpc.RpcError:
            return
        cases = [c for c in reply.cases if c.study_key != emb.study_key][:k]
        known = [c for c in cases if c.outcome != common_pb2.OUTCOME_UNSPECIFIED]
        msg.neighbours_with_outcome = len(known)
        msg.neighbours_intubated = sum(c.outcome == common_pb2.OUTCOME_INTUBATED_72H for c in known)
