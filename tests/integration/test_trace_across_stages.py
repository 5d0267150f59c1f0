"""One study, one trace: from the ``Ingest`` call through the outbox and every Kafka stage to the view.

Real parts, in one process: a Tansu broker of this module's own (the mesh's real topic names, so the
real workers route by topic), the mesh database (SQLite on disk), the ingestion servicer on loopback
gRPC behind ``tracing.server_interceptor()`` and called through ``tracing.intercept_channel``, the
outbox and its relay, and one runtime ``Consumer`` + ``EventProducer`` per stage, wired from
``services.flow.FLOW``. The prognosis and study view handlers are the real workers; embedding,
segmentation and quantification are stand-ins that publish their declared result without Triton (the
models are not what is traced here: their handlers publish through the same producer, under the same
study key, as these do). Spans are read back from an ``InMemorySpanExporter``.

The re-drive test runs on SQLite and PostgreSQL (``db``): a reconciler re-drive starts a new trace,
linked to the one the study was ingested in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from plugins.kafka_clients import Running, config, wait_for
from pydicom.data import get_testdata_file
from sqlalchemy import select

from cxrmesh.client import ingest_bytes
from cxrmesh.contracts import topics
from cxrmesh.local.broker import LocalBroker, ensure_topics
from cxrmesh.local.ports import free_port
from cxrmesh.runtime import tracing
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db.schema import outbox as outbox_table
from cxrmesh.runtime.kafka import Consumer, Event, EventProducer
from cxrmesh.runtime.tables import ResultTable
from cxrmesh.services import batch
from cxrmesh.services.flow import FLOW
from cxrmesh.services.ingestion.outbox import Outbox
from cxrmesh.services.ingestion.reconcile import Reconciler
from cxrmesh.services.ingestion.relay import relay
from cxrmesh.services.ingestion.service import IngestionServicer
from cxrmesh.services.ingestion.settings import IngestionSettings
from cxrmesh.services.prognosis.joins import JoinTable
from cxrmesh.services.prognosis.settings import PrognosisSettings
from cxrmesh.services.prognosis.worker import PrognosisWorker
from cxrmesh.services.studyview.service import ViewWorker
from cxrmesh.services.studyview.store import STAGES, ViewStore
from cxrmesh.v1 import events_pb2, ingestion_pb2_grpc, search_pb2_grpc, studyview_pb2

_EXPORTER = InMemorySpanExporter()
tracing.setup("cxrmesh-test").add_span_processor(SimpleSpanProcessor(_EXPORTER))
INGEST = "/cxrmesh.v1.IngestionService/Ingest"
SECRET = "test-secret-of-32-bytes-for-hmac-00"


class StandIn:
    """A model stage without its model: per event, its declared result (key and ingestion time only),
    published under the study key and confirmed as the real stages do (``batch.confirm``)."""

    def __init__(self, service: str, producer: EventProducer):
        self.stage, self.producer = FLOW[service], producer

    def __call__(self, events: Sequence[Event]) -> batch.Results:
        (topic,) = self.stage.produces
        results: batch.Results = [None] * len(events)
        pending = []
        for i, event in enumerate(events):
            src = event.message
            out: Message = topics.MESSAGE_TYPES[topic](study_key=src.study_key)
            if "ingested_at" in out.DESCRIPTOR.fields_by_name:
                out.ingested_at.CopyFrom(src.ingested_at)  # type: ignore[attr-defined]
            pending.append((i, src.ingested_at, self.producer.publish(topic, src.study_key, out)))
        return batch.confirm(results, pending, self.stage.step)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This module's own broker: the real topic names are not shared with other tests' records."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with LocalBroker(cluster_id="trace-test", log_path=log_path) as b:
        ensure_topics(b.bootstrap, topics.all_topics(1))
        yield b.bootstrap


def _worker(stack: ExitStack, work: Callable[[threading.Event], None]) -> None:
    """``work(stop)`` in a thread, stopped and joined when ``stack`` closes."""
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop,), daemon=True)
    thread.start()
    stack.callback(thread.join, 20)
    stack.callback(stop.set)


def _database(stack: ExitStack, url: str) -> Database:
    db = Database(url)
    stack.callback(db.close)
    return db


def _ingestion(stack: ExitStack, tmp: Path, bootstrap: str, url: str) -> int:
    """The ingestion servicer behind the tracing interceptor, its relay publishing the outbox."""
    settings = IngestionSettings(
        insecure=True,
        data_dir=tmp,
        database_url=url,
        kafka_bootstrap=bootstrap,
        deid_secret=SECRET,
        outbox_interval_s=0.05,
    )
    outbox = Outbox(_database(stack, url))
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[tracing.server_interceptor()])
    ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(IngestionServicer(settings, outbox), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stack.callback(server.stop, 0)
    producer = stack.enter_context(EventProducer(config(bootstrap)))
    _worker(stack, lambda stop: relay(outbox, producer, stop, 0.05, 10))
    return port


def _stage(
    stack: ExitStack, bootstrap: str, service: str, handler: Callable, producer: EventProducer
) -> None:
    """One stage as its service runs it: a Consumer of its declared topics in its group."""
    stage = FLOW[service]
    cfg = config(bootstrap, stage.group, stage.dead_letter_topic, max_batch=stage.max_batch or 16)
    consumer = Consumer(cfg, stage.message_types(), handler, producer, service=service)
    stack.enter_context(Running(consumer))


def _pipeline(stack: ExitStack, bootstrap: str, url: str) -> ViewStore:
    """Every stage after ingestion; the view's store, to wait for the study's verdict."""
    for service in ("embedding", "segmentation", "quantification"):
        producer = stack.enter_context(EventProducer(config(bootstrap)))
        _stage(stack, bootstrap, service, StandIn(service, producer), producer)
    db = _database(stack, url)
    settings = PrognosisSettings(insecure=True, database_url=url, kafka_bootstrap=bootstrap)
    # search is not running: FindSimilar fails at once and prognosis goes on without neighbours
    search = stack.enter_context(tracing.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{free_port()}")))
    producer = stack.enter_context(EventProducer(config(bootstrap)))
    worker = PrognosisWorker(
        settings,
        None,  # type: ignore[arg-type]  # no clinical data in the study: the head is never called
        producer,
        JoinTable(db),
        ResultTable(db, "prognosis", events_pb2.PrognosisResult),
        search_pb2_grpc.SearchServiceStub(search),
    )
    _stage(stack, bootstrap, "prognosis", worker, producer)
    store = ViewStore(_database(stack, url))
    stack.callback(store.close)
    _stage(
        stack,
        bootstrap,
        "studyview",
        ViewWorker(store),
        stack.enter_context(EventProducer(config(bootstrap))),
    )
    return store


def _settled(store: ViewStore, key: str) -> bool:
    stages, _ = store.load(key)
    states = {name: state for name, state, _, _ in stages}
    return all(states.get(s) == studyview_pb2.STAGE_DONE for s in STAGES)


def _consumed(found: Sequence[ReadableSpan]) -> set[tuple[str, str]]:
    """(consumer group, topic) of the CONSUMER spans among ``found``."""
    return {
        (str(s.attributes["messaging.consumer.group.name"]), str(s.attributes["messaging.destination.name"]))
        for s in found
        if s.kind == SpanKind.CONSUMER and s.attributes
    }


def test_one_study_is_one_trace_from_ingest_to_the_complete_view(broker: str, tmp_path: Path) -> None:
    _EXPORTER.clear()
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    raw = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    with ExitStack() as stack:
        store = _pipeline(stack, broker, url)
        port = _ingestion(stack, tmp_path, broker, url)
        with tracing.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}")) as channel:
            reply = ingest_bytes(ingestion_pb2_grpc.IngestionServiceStub(channel), raw)
        wait_for(lambda: _settled(store, reply.study_key), timeout_s=120, what="the study's view complete")
        # the view's consumer span ends when its batch is committed, just after the verdict
        wait_for(
            lambda: (
                ("cxrmesh-studyview", topics.STUDY_PROGNOSIS) in _consumed(_EXPORTER.get_finished_spans())
            ),
            what="the view's last consumer span",
        )
        with _database(stack, url).read() as conn:
            stored = conn.execute(select(outbox_table.c.traceparent)).scalars().all()

    finished = _EXPORTER.get_finished_spans()
    client = next(s for s in finished if s.name == INGEST and s.kind == SpanKind.CLIENT)
    study = [s for s in finished if s.context.trace_id == client.context.trace_id]
    by_id = {s.context.span_id: s for s in study}

    server = next(s for s in study if s.name == INGEST and s.kind == SpanKind.SERVER)
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert [tp.split("-")[1:3] for tp in stored] == [
        [f"{server.context.trace_id:032x}", f"{server.context.span_id:016x}"]
    ], "the outbox row must carry the Ingest call's context"
    flow = {
        ("cxrmesh-embedding", topics.STUDY_INGESTED),
        ("cxrmesh-segmentation", topics.STUDY_INGESTED),
        ("cxrmesh-quantification", topics.STUDY_SEGMENTED),
        ("cxrmesh-prognosis", topics.STUDY_EMBEDDED),
        ("cxrmesh-prognosis", topics.STUDY_QUANTIFIED),
        *(("cxrmesh-studyview", topic) for topic in STAGES.values()),
    }
    assert _consumed(study) >= flow, f"stages outside the study's trace: {flow - _consumed(study)}"
    everywhere = {gt for gt in _consumed(finished) if gt[0] in {g for g, _ in flow}}
    assert everywhere == _consumed(study), "a stage's span of this study started another trace"
    sent = {s.attributes["messaging.destination.name"] for s in study if s.kind == SpanKind.PRODUCER}
    assert sent >= {
        topics.STUDY_INGESTED,
        *(t for s in FLOW.values() for t in s.produces if t != topics.STUDY_CLINICAL),
    }

    complete = [s for s in study if s.name == "study complete"]
    assert complete, "the update that completed the view made no span in the study's trace"
    parent = by_id[complete[0].parent.span_id]  # type: ignore[union-attr]
    assert (
        parent.kind == SpanKind.CONSUMER
        and parent.attributes["messaging.consumer.group.name"] == "cxrmesh-studyview"
    )
    assert any(s.name.endswith("SearchService/FindSimilar") for s in study), (
        "the handler's gRPC call left the trace"
    )

    orphans = [
        s.name for s in study if s is not client and (s.parent is None or s.parent.span_id not in by_id)
    ]
    assert not orphans, f"spans whose parent is not in the trace: {orphans}"
    for span in study:
        for value in (span.attributes or {}).values():
            assert reply.study_key not in str(value) and reply.patient_key not in str(value), span.name


def test_a_redrive_starts_a_new_trace_linked_to_the_ingest(db: Database) -> None:
    _EXPORTER.clear()
    box = Outbox(db)
    ingested = events_pb2.StudyIngested(study_key="k-redrive", patient_key="p-redrive")
    with tracing.tracer().start_as_current_span("ingest") as ingest:
        box.add_study("k-redrive", "p-redrive", topics.STUDY_INGESTED, "cxrmesh.v1.StudyIngested",
                      ingested.SerializeToString())  # fmt: skip
    while pending := box.claim("relay-test"):
        box.mark_sent([e.id for e in pending], "relay-test")

    assert Reconciler(db, after_s=300).run_once(now=time.time() + 301).keys == ("k-redrive",)
    (row,) = box.claim("relay-test")
    carried = trace.get_current_span(tracing.context_from(row.trace_headers())).get_span_context()
    original = ingest.get_span_context()
    assert carried.is_valid and carried.trace_id != original.trace_id, "a re-drive must start a new trace"
    (root,) = [s for s in _EXPORTER.get_finished_spans() if s.name == "study re-drive"]
    assert root.context.span_id == carried.span_id and root.parent is None
    assert [(link.context.trace_id, link.context.span_id) for link in root.links] == [
        (original.trace_id, original.span_id)
    ]
    assert root.attributes["cxrmesh.redrive"] == 1
