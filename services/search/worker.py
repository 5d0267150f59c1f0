"""The search service's Kafka handler: StudyEmbedded and ClinicalUpdated into the Milvus case index.

Upsert by study key (redelivery and re-ingestion leave one entity); labels and clinical data that
arrive later through ClinicalUpdated update the indexed case.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from google.protobuf import json_format

from cxrmesh.contracts import convert, topics
from cxrmesh.runtime.kafka import Event
from cxrmesh.search.errors import StoreError
from cxrmesh.search.store import CaseRecord, CaseStore
from cxrmesh.services import batch
from cxrmesh.v1 import common_pb2, events_pb2


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
        clinical=clinical_json(event.clinical) if event.HasField("clinical") else "",
    )


class SearchWorker:
    """Kafka handler for StudyEmbedded and ClinicalUpdated; Milvus not answering (``StoreUnavailable``)
    comes back as ``DependencyUnavailable``: the consumer waits for it without spending attempts."""

    def __init__(self, store: CaseStore):
        self.store = store

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        return batch.handle_outages(self._handle, events)

    def _handle(self, events: Sequence[Event]) -> list[BaseException | None]:
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
                "clinical": clinical_json(msg.clinical) if msg.HasField("clinical") else None,
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


def clinical_json(clinical: common_pb2.ClinicalData) -> str:
    """Clinical data as the index stores them (JSON, proto field names)."""
    return json_format.MessageToJson(clinical, indent=None, preserving_proto_field_name=True)
