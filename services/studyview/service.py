"""Study view: everything known about a study in one call, and a stream that follows it.

Consumes every stage's topic and the dead-letter topic into a per-study record (SQLite): a stage
is pending until its event arrives, done when it does, failed when a dead letter names it (the
dead letter's reason is shown; stages that depend on a failed one fail with "upstream" reasons).
Similar cases and the diagnosis vote are asked of the search service at read time, so they
reflect the index as it is now.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cxrmesh.contracts import topics
from cxrmesh.contracts.errors import InvalidArgument, NotFound
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Consumer, Event, EventProducer
from cxrmesh.runtime.settings import StudyViewSettings
from cxrmesh.runtime.tables import SqliteStore, kafka_config
from cxrmesh.v1 import events_pb2, search_pb2, search_pb2_grpc, studyview_pb2, studyview_pb2_grpc

# stage -> the topic whose event completes it
STAGES: dict[str, str] = {
    "ingested": topics.STUDY_INGESTED,
    "embedded": topics.STUDY_EMBEDDED,
    "segmented": topics.STUDY_SEGMENTED,
    "quantified": topics.STUDY_QUANTIFIED,
    "prognosis": topics.STUDY_PROGNOSIS,
}
# the service whose dead letters fail a stage, and what each stage needs first
FAILED_BY = {
    "embedding": "embedded",
    "segmentation": "segmented",
    "quantification": "quantified",
    "prognosis": "prognosis",
}
NEEDS = {
    "embedded": ("ingested",),
    "segmented": ("ingested",),
    "quantified": ("segmented",),
    "prognosis": ("embedded", "quantified"),
}
TOPIC_STAGE = {topic: stage for stage, topic in STAGES.items()}


class ViewStore(SqliteStore):
    """Stage states and the latest message of each stage, per study."""

    def __init__(self, path: Path):
        super().__init__(
            path,
            """
            CREATE TABLE IF NOT EXISTS stages (study_key TEXT, stage TEXT, state INTEGER, reason TEXT,
                updated_at REAL, PRIMARY KEY (study_key, stage));
            CREATE TABLE IF NOT EXISTS payloads (study_key TEXT, stage TEXT, message BLOB,
                PRIMARY KEY (study_key, stage));
            """,
        )
        self.changed = threading.Condition()

    def done(self, key: str, stage: str, message: bytes) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO payloads VALUES (?, ?, ?)", (key, stage, message))
            self._set(key, stage, studyview_pb2.STAGE_DONE, "")
            if stage == "ingested":
                for other in STAGES:
                    self._db.execute(
                        "INSERT OR IGNORE INTO stages VALUES (?, ?, ?, '', ?)",
                        (key, other, studyview_pb2.STAGE_PENDING, time.time()),
                    )
            self._db.execute("COMMIT")
        self._notify()

    def failed(self, key: str, stage: str, reason: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT state FROM stages WHERE study_key=? AND stage=?", (key, stage)
            ).fetchone()
            if not row or row[0] != studyview_pb2.STAGE_DONE:  # a later success wins over an old failure
                self._set(key, stage, studyview_pb2.STAGE_FAILED, reason)
                for later, needs in NEEDS.items():
                    if stage in needs:
                        self._set(key, later, studyview_pb2.STAGE_FAILED, f"upstream stage {stage} failed")
            self._db.execute("COMMIT")
        self._notify()

    def _set(self, key: str, stage: str, state: int, reason: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?)", (key, stage, state, reason, time.time())
        )

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def load(self, key: str) -> tuple[list[tuple[str, int, str, float]], dict[str, bytes]]:
        with self._lock:
            stages = self._db.execute(
                "SELECT stage, state, reason, updated_at FROM stages WHERE study_key = ?", (key,)
            ).fetchall()
            payloads = dict(
                self._db.execute("SELECT stage, message FROM payloads WHERE study_key = ?", (key,)).fetchall()
            )
        return stages, payloads


class ViewWorker:
    def __init__(self, store: ViewStore):
        self.store = store

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        for event in events:
            msg = event.message
            if event.topic == topics.DEAD_LETTER:
                stage = FAILED_BY.get(msg.service)
                if stage and msg.key:
                    self.store.failed(msg.key, stage, f"{msg.service}: {msg.reason}")
                continue
            self.store.done(msg.study_key, TOPIC_STAGE[event.topic], msg.SerializeToString())
        return [None] * len(events)


class StudyViewServicer(studyview_pb2_grpc.StudyViewServiceServicer):
    def __init__(
        self, settings: StudyViewSettings, store: ViewStore, search: search_pb2_grpc.SearchServiceStub
    ):
        self.settings, self.store, self.search = settings, store, search

    def view(self, key: str, k: int) -> studyview_pb2.StudyView | None:
        stages, payloads = self.store.load(key)
        if not stages:
            return None
        view = studyview_pb2.StudyView(study_key=key)
        order = list(STAGES)
        for name, state, reason, updated in sorted(
            stages, key=lambda s: order.index(s[0]) if s[0] in order else 99
        ):
            ts = Timestamp()
            ts.FromNanoseconds(int(updated * 1e9))
            view.stages.append(studyview_pb2.Stage(name=name, state=state, reason=reason, updated_at=ts))
        view.complete = all(
            s.state in (studyview_pb2.STAGE_DONE, studyview_pb2.STAGE_FAILED) for s in view.stages
        )
        if "ingested" in payloads:
            ing = events_pb2.StudyIngested.FromString(payloads["ingested"])
            view.metadata.CopyFrom(ing.metadata)
            view.display_image.CopyFrom(ing.display_image)
        if "embedded" in payloads:
            view.attention_map.CopyFrom(
                events_pb2.StudyEmbedded.FromString(payloads["embedded"]).attention_map
            )
            self._similar(view, key, k)
        if "segmented" in payloads:
            view.segmentation.ParseFromString(payloads["segmented"])
        if "quantified" in payloads:
            view.quantification.ParseFromString(payloads["quantified"])
        if "prognosis" in payloads:
            view.prognosis.ParseFromString(payloads["prognosis"])
        return view

    def _similar(self, view: studyview_pb2.StudyView, key: str, k: int) -> None:
        """Similar cases and the vote, live from search (absent while search has not indexed it)."""
        try:
            req = search_pb2.FindSimilarRequest(study_key=key, k=k)
            view.similar_cases.extend(self.search.FindSimilar(req, timeout=10).cases)
            view.diagnosis.CopyFrom(
                self.search.Diagnose(search_pb2.FindSimilarRequest(study_key=key, k=10), timeout=10)
            )
        except grpc.RpcError:
            pass

    def _key(self, request: studyview_pb2.GetStudyRequest) -> tuple[str, int]:
        if not request.study_key:
            raise InvalidArgument("missing_study_key", "study_key is required (from the IngestReply)")
        k = request.similar_k or self.settings.default_similar_k
        if not 1 <= k <= 100:
            raise InvalidArgument("bad_k", f"similar_k = {k} is out of range 1..100")
        return request.study_key, k

    def GetStudy(self, request: studyview_pb2.GetStudyRequest, context: grpc.ServicerContext):
        key, k = self._key(request)
        view = self.view(key, k)
        if view is None:
            raise NotFound("unknown_study", "no study with this key has reached the mesh (yet)")
        return view

    def WatchStudy(self, request: studyview_pb2.GetStudyRequest, context: grpc.ServicerContext) -> Iterator:
        key, k = self._key(request)
        last = None
        waited_for_first = time.monotonic()
        while context.is_active():
            view = self.view(key, k)
            if view is None and time.monotonic() - waited_for_first > 60:
                raise NotFound("unknown_study", "no study with this key reached the mesh within 60 s")
            if view is not None:
                state = [(s.name, s.state) for s in view.stages]
                if state != last:
                    last = state
                    yield view
                if view.complete:
                    return
            with self.store.changed:
                self.store.changed.wait(timeout=1.0)


def build(settings: StudyViewSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings)
    store = ViewStore(settings.data_dir / "studyview" / "views.sqlite")
    channel = grpc.insecure_channel(settings.search_url)
    cfg = dataclasses.replace(
        kafka_config(settings, "cxrmesh-studyview"), dead_letter_topic=topics.STUDYVIEW_DEAD_LETTER
    )
    producer = EventProducer(cfg)  # dead letters
    types = {topic: topics.MESSAGE_TYPES[topic] for topic in (*STAGES.values(), topics.DEAD_LETTER)}
    consumer = Consumer(cfg, types, ViewWorker(store), producer, service=settings.service)
    runtime.add_service(
        studyview_pb2.DESCRIPTOR.services_by_name["StudyViewService"].full_name,
        studyview_pb2_grpc.add_StudyViewServiceServicer_to_server,
        StudyViewServicer(settings, store, search_pb2_grpc.SearchServiceStub(channel)),
    )
    runtime.add_dependency("kafka", consumer.healthy)
    runtime.add_dependency("storage", store.ping)
    runtime.add_worker("consumer", consumer.run)
    for close in (producer.close, store.close, channel.close):
        runtime.on_close(close)
    return runtime


def main() -> None:
    build(StudyViewSettings()).run()


if __name__ == "__main__":
    main()
