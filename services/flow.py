"""The mesh's dataflow in one place: what each service consumes and produces.

Like operators with declared inputs and outputs: every service's Kafka wiring (``stage.StageService``)
is built from its ``Stage`` here, so a new service or a new topic is one line in this table, and the
graph can be checked as a whole (every consumed topic has a producer). docs/topics.md lists it.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from cxrmesh.contracts import topics
from cxrmesh.contracts.tensors import MAX_BATCH


@dataclass(frozen=True)
class Stage:
    """One service's declared inputs and outputs on Kafka."""

    service: str
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    step: str = ""  # the study step it completes: the stage label of metrics and of the study view
    max_batch: int | None = None  # most events per handler call (a model stage: one Triton request)
    dead_letter_topic: str = topics.DEAD_LETTER

    @property
    def group(self) -> str:
        """Its consumer group: replicas of one service share the work."""
        return f"cxrmesh-{self.service}"

    def message_types(self) -> dict[str, type[Message]]:
        return {topic: topics.MESSAGE_TYPES[topic] for topic in self.consumes}


FLOW: dict[str, Stage] = {
    stage.service: stage
    for stage in (
        # ingestion commits through its outbox and consumes nothing
        Stage("ingestion", (), (topics.STUDY_INGESTED, topics.STUDY_CLINICAL), step="ingested"),
        Stage(
            "embedding", (topics.STUDY_INGESTED,), (topics.STUDY_EMBEDDED,), "embedded", max_batch=MAX_BATCH
        ),
        Stage("search", (topics.STUDY_EMBEDDED, topics.STUDY_CLINICAL), ()),
        Stage(
            "segmentation",
            (topics.STUDY_INGESTED,),
            (topics.STUDY_SEGMENTED,),
            "segmented",
            max_batch=MAX_BATCH,
        ),
        Stage(
            "quantification",
            (topics.STUDY_SEGMENTED,),
            (topics.STUDY_QUANTIFIED,),
            "quantified",
            max_batch=MAX_BATCH,
        ),
        Stage(
            "prognosis",
            (topics.STUDY_EMBEDDED, topics.STUDY_QUANTIFIED, topics.STUDY_CLINICAL),
            (topics.STUDY_PROGNOSIS,),
            "prognosis",
        ),
        # the DICOM front door: hands each instance to ingestion's Ingest (gRPC), touches no topic itself
        Stage("gateway", (), ()),
        # results back to the PACS once the last step (prognosis) is out; it publishes nothing
        # one event at a time: an event may wait for the view and for slow PACS associations
        Stage("pacs_sender", (topics.STUDY_PROGNOSIS,), (), max_batch=1),
        # the study view reads every step and the dead letters, so its own give-ups go elsewhere (no loop)
        Stage(
            "studyview",
            (
                topics.STUDY_INGESTED,
                topics.STUDY_EMBEDDED,
                topics.STUDY_SEGMENTED,
                topics.STUDY_QUANTIFIED,
                topics.STUDY_PROGNOSIS,
                topics.DEAD_LETTER,
            ),
            (),
            dead_letter_topic=topics.STUDYVIEW_DEAD_LETTER,
        ),
    )
}
