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

# Partitions per topic cap the replicas of each consumer group (extra consumers sit idle). The count is
# configuration, fixed when a topic is created: the local mesh uses PARTITIONS unless told otherwise
# (`cxrmesh up --partitions`, CXRMESH_KAFKA_PARTITIONS); a cluster sets it in its KafkaTopic resources
# (k8s/base/kafka-topics.yaml: CLUSTER_PARTITIONS, with the autoscalers' maximums to match).
PARTITIONS = 4
CLUSTER_PARTITIONS = 12


def all_topics(partitions: int = PARTITIONS) -> dict[str, int]:
    """Every topic of the mesh with its partition count (for creating them)."""
    if partitions < 1:
        raise ValueError("a topic needs at least one partition")
    return dict.fromkeys(MESSAGE_TYPES, partitions)
