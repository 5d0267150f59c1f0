"""Kafka topics of the mesh: one place that names them, their message types and partitions.

Every topic is keyed by ``study_key`` so a study's events stay ordered on one partition, and
carries one protobuf message type. docs/topics.md documents producers and consumers.
"""

from __future__ import annotations

from google.protobuf.message import Message

from cxrmesh.v1 import events_pb2

STUDY_INGESTED = "cxrmesh.study.ingested.v1"
STUDY_CLINICAL = "cxrmesh.study.clinical.v1"
STUDY_EMBEDDED = "cxrmesh.study.embedded.v1"
STUDY_SEGMENTED = "cxrmesh.study.segmented.v1"
STUDY_QUANTIFIED = "cxrmesh.study.quantified.v1"
STUDY_PROGNOSIS = "cxrmesh.study.prognosis.v1"
DEAD_LETTER = "cxrmesh.deadletter.v1"
# the study view consumes DEAD_LETTER, so its own give-ups go elsewhere (no loop)
STUDYVIEW_DEAD_LETTER = "cxrmesh.deadletter.studyview.v1"
# one AuditRecord per gRPC call that reads or writes a study (cxrmesh.runtime.audit); key: the study pseudonym
AUDIT = "cxrmesh.audit.v1"

MESSAGE_TYPES: dict[str, type[Message]] = {
    STUDY_INGESTED: events_pb2.StudyIngested,
    STUDY_CLINICAL: events_pb2.ClinicalUpdated,
    STUDY_EMBEDDED: events_pb2.StudyEmbedded,
    STUDY_SEGMENTED: events_pb2.StudySegmented,
    STUDY_QUANTIFIED: events_pb2.StudyQuantified,
    STUDY_PROGNOSIS: events_pb2.PrognosisResult,
    DEAD_LETTER: events_pb2.DeadLetter,
    STUDYVIEW_DEAD_LETTER: events_pb2.DeadLetter,
    AUDIT: events_pb2.AuditRecord,
}

PARTITIONS = 4  # consumers of a group scale out to this many replicas per topic


def all_topics() -> dict[str, int]:
    return dict.fromkeys(MESSAGE_TYPES, PARTITIONS)
