"""Study view: everything known about a study in one call, and a stream that follows it.

Consumes every stage's topic and the dead-letter topic into a per-study record (``store``): the
dead letter's reason is shown on the failed stage. Similar cases and the diagnosis vote are asked
of the search service at read time, so they reflect the index as it is now. Wired on the shared
stage base.

The mesh's end-to-end SLI is observed here: ingestion to the view's first verdict on a study
(``cxrmesh_study_complete_seconds``), by the replica whose update gave it, once per study (``store``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from cxrmesh.contracts import topics
from cxrmesh.contracts.errors import InvalidArgument, NotFound
from cxrmesh.runtime import metrics, tracing
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Event
from cxrmesh.runtime.tls import open_channel
from cxrmesh.services import batch
from cxrmesh.services.flow import FLOW
from cxrmesh.services.stage import GrpcApi, StageService
from cxrmesh.services.studyview.settings import StudyViewSettings
from cxrmesh.services.studyview.store import FAILED_BY, STAGES, TOPIC_STAGE, Verdict, ViewStore
from cxrmesh.v1 import events_pb2, search_pb2, search_pb2_grpc, studyview_pb2, studyview_pb2_grpc


def event_ingested_at(event: Event) -> float | None:
    """When the event's study was ingested, from the event itself (a dead letter: from the message it
    carries); None when it does not say."""
    msg = event.message
    if event.topic == topics.DEAD_LETTER:
        kind = topics.MESSAGE_TYPES.get(msg.source_topic)
        if kind is None or "ingested_at" not in kind.DESCRIPTOR.fields_by_name:
            return None
        try:
            msg = kind.FromString(msg.payload)
        except DecodeError:
            return None
    ts = getattr(msg, "ingested_at", None)
    return ts.seconds + ts.nanos / 1e9 if ts is not None and ts.seconds else None


def observe_verdict(first: Verdict | None, event: Event, now: float) -> None:
    """The time from ingestion to the study's first verdict, when ``first`` is one and its ingestion
    time is known (the stored StudyIngested, else the event's own). The verdict is also a span in the
    study's trace ("study complete" or "study failed", child of the event's consumer span)."""
    if first is None:
        return
    with tracing.key_span(f"study {first.outcome}", event.key, {"cxrmesh.verdict": first.outcome}):
        pass
    ingested_at = first.ingested_at or event_ingested_at(event)
    if ingested_at is not None:
        metrics.study_complete_seconds().labels(first.outcome).observe(max(0.0, now - ingested_at))


class ViewWorker:
    def __init__(self, store: ViewStore):
        self.store = store
        metrics.study_complete_seconds()  # exported (at zero) from the start

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        """None per event; the database not answering comes back as ``DependencyUnavailable`` (the
        consumer waits for it without spending attempts, so no stage is marked by an outage)."""
        return batch.handle_outages(self._record, events)

    def _record(self, events: Sequence[Event]) -> list[BaseException | None]:
        for event in events:
            msg = event.message
            if event.topic == topics.DEAD_LETTER:
                stage = FAILED_BY.get(msg.service)
                if stage and msg.key:
                    first = self.store.failed(msg.key, stage, f"{msg.service}: {msg.reason}")
                    observe_verdict(first, event, time.time())
                continue
            first = self.store.done(msg.study_key, TOPIC_STAGE[event.topic], msg.SerializeToString())
            observe_verdict(first, event, time.time())
        return [None] * len(events)


class StudyViewServicer(studyview_pb2_grpc.StudyViewServiceServicer):
    def __init__(
        self, settings: StudyViewSettings, store: ViewStore, search: search_pb2_grpc.SearchServiceStub
    ):
        self.settings, self.store, self.search = settings, store, search

    def view(self, key: str, k: int, similar: bool = True) -> studyview_pb2.StudyView | None:
        """The study's view; ``similar=False`` leaves out the similar cases and the vote (no search call)."""
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
        # complete = every stage known and settled: events of different topics arrive in any order, so a
        # dead letter may be recorded before the study's own ingested event adds the pending stages
        view.complete = {s.name for s in view.stages} >= set(STAGES) and all(
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
            if similar:
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
            # polled without search: similar cases are asked for only when a view is sent (each
            # FindSimilar is a Milvus query and an observation of cxrmesh_neighbour_distance)
            view = self.view(key, k, similar=False)
            if view is None and time.monotonic() - waited_for_first > 60:
                raise NotFound("unknown_study", "no study with this key reached the mesh within 60 s")
            if view is not None:
                state = [(s.name, s.state) for s in view.stages]
                if state != last:
                    last = state
                    if any(s.name == "embedded" and s.state == studyview_pb2.STAGE_DONE for s in view.stages):
                        self._similar(view, key, k)
                    yield view
                if view.complete:
                    return
            self.store.feed.wait(timeout_s=1.0)


def build(settings: StudyViewSettings) -> ServiceRuntime:
    service = StageService(settings, FLOW["studyview"])
    store = service.closing(ViewStore(service.database()))
    channel = service.closing(open_channel(settings.search_url, settings.tls()))
    service.api(
        GrpcApi.of(studyview_pb2, studyview_pb2_grpc, "StudyViewService"),
        StudyViewServicer(settings, store, search_pb2_grpc.SearchServiceStub(channel)),
    )
    return service.consume(ViewWorker(store))


def main() -> None:
    build(StudyViewSettings()).run()
