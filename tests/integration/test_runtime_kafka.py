"""The shared Kafka runtime against a real Kafka-protocol broker (Tansu, started once per session).

Timings are shrunk (session 2 s, heartbeat 0.3 s, backoff tens of ms) so each test takes seconds;
every test has its own topics and groups. Tansu reports wrong end offsets, so no test asserts lag.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from plugins.kafka_broker import unique
from plugins.kafka_clients import Running, committed, config, metric, read_all, running, wait_for
from prometheus_client import REGISTRY

from cxrmesh.local.broker import LocalBroker, TopicSetupError, ensure_topics, find_tansu
from cxrmesh.runtime.kafka import (
    Consumer,
    DeadLetterError,
    Event,
    EventProducer,
    KafkaConfig,
    KafkaConfigError,
    PermanentError,
    PublishError,
    content_type,
)
from cxrmesh.v1 import common_pb2, events_pb2


def study(i: int) -> events_pb2.StudyIngested:
    msg = events_pb2.StudyIngested(
        study_key=f"S{i:04d}",
        patient_key=f"P{i % 7:03d}",
        metadata=common_pb2.StudyMetadata(modality="DX", view_position="PA", rows=2048, columns=2048),
        display_image=common_pb2.BlobRef(uri=f"file:///blobs/{i}.npy", size_bytes=1 << 20),
        deidentified_study_uid=f"2.25.{1000 + i}",
    )
    msg.ingested_at.FromSeconds(1_700_000_000 + i)
    return msg


@pytest.fixture(scope="module")
def producer(kafka_bootstrap: str) -> Iterator[EventProducer]:
    with EventProducer(config(kafka_bootstrap)) as p:
        yield p


class Recorder:
    """A handler that records every call and answers with ``decide(event)`` (None = done)."""

    def __init__(self, decide: Callable[[Event], BaseException | None] = lambda e: None):
        self.decide = decide
        self.calls: list[list[Event]] = []
        self.lock = threading.Lock()

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        with self.lock:
            self.calls.append(list(events))
        return [self.decide(e) for e in events]

    @property
    def events(self) -> list[Event]:
        with self.lock:
            return [e for call in self.calls for e in call]

    def done_keys(self) -> set[str]:
        return {e.key for e in self.events}


def publish_studies(producer: EventProducer, topic: str, ids: Sequence[int]) -> dict[str, Any]:
    futures = {study(i).study_key: producer.publish(topic, study(i).study_key, study(i)) for i in ids}
    return {key: f.result(timeout=10) for key, f in futures.items()}


# ------------------------------------------------------------------------------------------ tests


def test_find_tansu_and_ensure_topics_idempotent(kafka_bootstrap: str) -> None:
    assert find_tansu().is_file()
    a, b = unique("topic-a"), unique("topic-b")
    ensure_topics(kafka_bootstrap, {a: 3, b: 1})
    ensure_topics(kafka_bootstrap, {a: 3, b: 1})  # again: nothing to do, no error
    ensure_topics(kafka_bootstrap, {a: 1})  # fewer than present: kept as is
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        parts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([a, b])}
    finally:
        admin.close()
    assert parts == {a: 3, b: 1}
    with pytest.raises(TopicSetupError):
        ensure_topics(kafka_bootstrap, {unique("bad"): 0})


def test_config_is_validated() -> None:
    with pytest.raises(KafkaConfigError):
        KafkaConfig(bootstrap="x:1", client_id="c", heartbeat_interval_ms=5000, session_timeout_ms=3000)
    with pytest.raises(KafkaConfigError):
        KafkaConfig(bootstrap="x:1", client_id="c", compression="brotli")
    with pytest.raises(KafkaConfigError, match="rejoin_timeout_ms"):  # a healthy rejoin takes a session
        KafkaConfig(bootstrap="x:1", client_id="c", session_timeout_ms=10000, rejoin_timeout_ms=10000)


def test_round_trip_protobuf_headers_metrics(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic, group = unique("rt"), unique("g")
    ensure_topics(kafka_bootstrap, {topic: 2})
    sent = study(1)
    md = producer.publish_sync(topic, sent.study_key, sent, headers={"trace-id": "t-1"})
    assert md.topic == topic and md.offset >= 0
    ok_before = metric("cxrmesh_kafka_messages_total", topic=topic, group=group, outcome="ok")
    rec = Recorder()
    consumer = Consumer(
        config(kafka_bootstrap, group), {topic: events_pb2.StudyIngested}, rec, producer, "test"
    )
    assert not consumer.healthy()
    with running(consumer):
        wait_for(lambda: len(rec.events) == 1, what="the event")
        wait_for(consumer.healthy, what="healthy")
        wait_for(
            lambda: (
                REGISTRY.get_sample_value(
                    "cxrmesh_kafka_consumer_lag",
                    {"topic": topic, "group": group, "partition": str(md.partition)},
                )
                is not None
            ),
            what="lag gauge",
        )
    assert not consumer.healthy()
    (event,) = rec.events
    assert (event.topic, event.partition, event.offset, event.attempt) == (topic, md.partition, md.offset, 1)
    assert event.key == sent.study_key
    assert event.message == sent and isinstance(event.message, events_pb2.StudyIngested)
    assert event.headers["trace-id"] == "t-1"
    assert event.headers["content-type"] == "application/x-protobuf; messageType=cxrmesh.v1.StudyIngested"
    assert metric("cxrmesh_kafka_messages_total", topic=topic, group=group, outcome="ok") == ok_before + 1
    assert metric("cxrmesh_kafka_published_total", topic=topic, outcome="ok") >= 1
    assert metric("cxrmesh_kafka_publish_seconds_count", topic=topic) >= 1
    assert metric("cxrmesh_kafka_handle_seconds_count", topic=topic, group=group) >= 1
    assert committed(kafka_bootstrap, group) == {TopicPartition(topic, md.partition): md.offset + 1}


class Stored:
    """Bytes kept by an outbox, published as they are."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def SerializeToString(self) -> bytes:
        return self.payload


def test_publish_stored_bytes_with_their_content_type(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic = unique("stored")
    ensure_topics(kafka_bootstrap, {topic: 1})
    payload = study(4).SerializeToString()
    kind = content_type(events_pb2.StudyIngested)
    stored: Any = Stored(payload)
    md = producer.publish(topic, "S0004", stored, {"content-type": kind}).get(timeout=10)
    (rec,) = read_all(kafka_bootstrap, topic, expect=1)
    assert (rec.offset, rec.key, rec.value) == (md.offset, b"S0004", payload)
    assert dict(rec.headers) == {"content-type": kind.encode()}
    assert producer.connected()


def test_publish_to_closed_producer_raises(kafka_bootstrap: str) -> None:
    p = EventProducer(config(kafka_bootstrap, compression=None))
    p.close()
    with pytest.raises(PublishError):
        p.publish_sync(unique("t"), "k", study(1), timeout_s=5)


def test_crash_before_commit_redelivers_to_next_consumer(
    kafka_bootstrap: str,
    producer: EventProducer,
) -> None:
    topic, group = unique("crash"), unique("g")
    ensure_topics(kafka_bootstrap, {topic: 1})
    publish_studies(producer, topic, range(7))
    calls = 0

    def crash_on_second_batch(events: Sequence[Event]) -> list[BaseException | None]:
        nonlocal calls
        calls += 1
        first.calls.append(list(events))
        if calls == 2:
            raise SystemExit("worker killed mid-batch")
        return [None] * len(events)

    first = Recorder()
    cfg = config(kafka_bootstrap, group, max_batch=3)
    c1 = Consumer(cfg, {topic: events_pb2.StudyIngested}, crash_on_second_batch, producer, "test")
    with running(c1) as (r1,):
        r1.thread.join(15)
    assert isinstance(r1.error, SystemExit)
    done_batch, crashed_batch = first.calls[0], first.calls[1]
    assert len(done_batch) == 3
    assert committed(kafka_bootstrap, group) == {TopicPartition(topic, 0): done_batch[-1].offset + 1}

    second = Recorder()
    c2 = Consumer(cfg, {topic: events_pb2.StudyIngested}, second, producer, "test")
    with running(c2):
        wait_for(lambda: len(second.events) == 4, what="redelivery")
        time.sleep(0.3)
    redelivered = [e.offset for e in second.events]
    assert redelivered == list(range(crashed_batch[0].offset, crashed_batch[0].offset + 4))
    assert {e.offset for e in crashed_batch} <= set(redelivered)
    assert all(e.attempt == 1 for e in second.events)


def test_retry_then_success_is_not_dead_lettered(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic, group, dlq = unique("retry"), unique("g"), unique("dlq")
    ensure_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    publish_studies(producer, topic, range(4))
    flaky = study(2).study_key

    def decide(e: Event) -> BaseException | None:
        return ConnectionError("triton unavailable") if e.key == flaky and e.attempt <= 2 else None

    rec = Recorder(decide)
    consumer = Consumer(
        config(kafka_bootstrap, group, dlq, max_attempts=5),
        {topic: events_pb2.StudyIngested},
        rec,
        producer,
        "t",
    )
    with running(consumer):
        wait_for(lambda: sum(1 for e in rec.events if e.key == flaky) == 3, what="three attempts")
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 4, what="commit")
    attempts = [e.attempt for e in rec.events if e.key == flaky]
    assert attempts == [1, 2, 3]
    others = [e for e in rec.events if e.key != flaky]
    assert sorted(e.key for e in others) == sorted(study(i).study_key for i in (0, 1, 3))  # not retried
    assert all(len(call) == 1 and call[0].key == flaky for call in rec.calls[1:])  # retries: only the failed
    assert metric("cxrmesh_kafka_messages_total", topic=topic, group=group, outcome="retried") == 2
    assert metric("cxrmesh_kafka_messages_total", topic=topic, group=group, outcome="ok") == 4
    # the series exists at 0 (not merely absent), so the first dead letter is an increase() alerts see
    dead = {"topic": topic, "group": group, "outcome": "dead_lettered"}
    assert REGISTRY.get_sample_value("cxrmesh_kafka_messages_total", dead) == 0.0
    assert read_all(kafka_bootstrap, dlq, expect=0, timeout_s=1) == []


def test_permanent_and_exhausted_failures_are_dead_lettered_once(
    kafka_bootstrap: str,
    producer: EventProducer,
) -> None:
    topic, group, dlq = unique("perm"), unique("g"), unique("dlq")
    ensure_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    meta = publish_studies(producer, topic, range(3))
    bad, flaky, good = (study(i).study_key for i in range(3))

    def decide(e: Event) -> BaseException | None:
        if e.key == bad:
            return PermanentError("display image has the wrong shape")
        if e.key == flaky:
            return TimeoutError("triton timed out")
        return None

    rec = Recorder(decide)
    consumer = Consumer(
        config(kafka_bootstrap, group, dlq, max_attempts=3),
        {topic: events_pb2.StudyIngested},
        rec,
        producer,
        "embed",
    )
    with running(consumer):
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 3, what="commit")
    assert [e.attempt for e in rec.events if e.key == bad] == [1]
    assert [e.attempt for e in rec.events if e.key == flaky] == [1, 2, 3]
    assert [e.attempt for e in rec.events if e.key == good] == [1]

    letters = read_all(kafka_bootstrap, dlq, expect=2)
    assert len(letters) == 2
    by_key = {}
    for r in letters:
        letter = events_pb2.DeadLetter.FromString(r.value)
        by_key[letter.key] = letter
        assert r.key.decode() == letter.key
        assert dict(r.headers)["content-type"].decode() == content_type(events_pb2.DeadLetter)
    perm, exhausted = by_key[bad], by_key[flaky]
    assert perm.reason == "display image has the wrong shape" and perm.error_type == "PermanentError"
    assert perm.attempts == 1
    assert exhausted.reason == "triton timed out" and exhausted.error_type == "TimeoutError"
    assert exhausted.attempts == 3
    for key, letter in by_key.items():
        i = [study(j).study_key for j in range(3)].index(key)
        assert letter.payload == study(i).SerializeToString()  # the original bytes
        assert (letter.source_topic, letter.source_partition) == (topic, meta[key].partition)
        assert letter.source_offset == meta[key].offset
        assert (letter.service, letter.consumer_group) == ("embed", group)
        assert letter.failed_at.seconds > 1_700_000_000
    assert metric("cxrmesh_kafka_messages_total", topic=topic, group=group, outcome="dead_lettered") == 2


class RefusingProducer:
    """Stands in for EventProducer when the dead-letter topic refuses every write."""

    def publish(self, topic: str, key: str, message: Any, headers: Any = None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_exception(PublishError(topic, "NotEnoughReplicasError"))
        return future


def test_unconfirmed_dead_letter_means_no_commit(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic, group, dlq = unique("dlqfail"), unique("g"), unique("dlq")
    ensure_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    publish_studies(producer, topic, [5])
    cfg = config(kafka_bootstrap, group, dlq, max_attempts=2)
    first = Recorder(lambda e: PermanentError("unreadable DICOM"))
    refusing: Any = RefusingProducer()
    run = Running(Consumer(cfg, {topic: events_pb2.StudyIngested}, first, refusing, "t"))
    run.thread.start()
    run.thread.join(15)
    assert isinstance(run.error, DeadLetterError)
    assert committed(kafka_bootstrap, group) == {}

    second = Recorder(lambda e: PermanentError("unreadable DICOM"))
    with running(Consumer(cfg, {topic: events_pb2.StudyIngested}, second, producer, "t")):
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 1, what="commit")
    assert [e.offset for e in second.events] == [e.offset for e in first.events]  # delivered again
    assert len(read_all(kafka_bootstrap, dlq, expect=1)) == 1


def test_each_handler_call_carries_one_topic(kafka_bootstrap: str, producer: EventProducer) -> None:
    ingested, clinical, group = unique("ing"), unique("clin"), unique("g")
    ensure_topics(kafka_bootstrap, {ingested: 1, clinical: 1})
    publish_studies(producer, ingested, range(3))
    for i in range(3):
        producer.publish(clinical, f"S{i:04d}", events_pb2.ClinicalUpdated(study_key=f"S{i:04d}"))
    producer.flush(10)
    rec = Recorder()
    topics = {ingested: events_pb2.StudyIngested, clinical: events_pb2.ClinicalUpdated}
    with running(Consumer(config(kafka_bootstrap, group), topics, rec, producer, "t")):
        wait_for(lambda: len(rec.events) >= 6, what="both topics")
    for call in rec.calls:
        assert len({e.topic for e in call}) == 1
        assert all(isinstance(e.message, topics[e.topic]) for e in call)


def test_poison_message_is_dead_lettered_without_the_handler(
    kafka_bootstrap: str,
    producer: EventProducer,
) -> None:
    topic, group, dlq = unique("poison"), unique("g"), unique("dlq")
    ensure_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    raw = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    garbage = b"\xff\xff\xff\xff not protobuf"
    wrong_type = events_pb2.ClinicalUpdated(study_key="S9").SerializeToString()
    try:
        raw.send(topic, key=b"S0001", value=garbage).get(10)
        raw.send(
            topic,
            key=b"S0002",
            value=wrong_type,
            headers=[("content-type", content_type(events_pb2.ClinicalUpdated).encode())],
        ).get(10)
    finally:
        raw.close()
    good = study(3)
    producer.publish_sync(topic, good.study_key, good)
    rec = Recorder()
    consumer = Consumer(
        config(kafka_bootstrap, group, dlq), {topic: events_pb2.StudyIngested}, rec, producer, "t"
    )
    with running(consumer):
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 3, what="commit")
    assert [e.key for e in rec.events] == [good.study_key]  # the handler never saw the poison
    letters = sorted(
        (events_pb2.DeadLetter.FromString(r.value) for r in read_all(kafka_bootstrap, dlq, expect=2)),
        key=lambda d: d.source_offset,
    )
    assert [(d.key, d.payload, d.attempts, d.error_type) for d in letters] == [
        ("S0001", garbage, 0, "PoisonMessageError"),
        ("S0002", wrong_type, 0, "PoisonMessageError"),
    ]
    assert "ClinicalUpdated" in letters[1].reason
    assert metric("cxrmesh_kafka_messages_total", topic=topic, group=group, outcome="poison") == 2


def test_one_group_splits_partitions(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic, group = unique("split"), unique("g")
    ensure_topics(kafka_bootstrap, {topic: 2})
    recs = [Recorder(), Recorder()]
    consumers = [
        Consumer(config(kafka_bootstrap, group), {topic: events_pb2.StudyIngested}, r, producer, "t")
        for r in recs
    ]
    with running(*consumers):
        wait_for(lambda: all(len(c.assignment()) == 1 for c in consumers), what="one partition each")
        wait_for(lambda: all(c.healthy() for c in consumers), what="both healthy")
        publish_studies(producer, topic, range(30))
        wait_for(lambda: len(recs[0].events) + len(recs[1].events) >= 30, what="all 30")
        time.sleep(0.3)
    a, b = recs[0].done_keys(), recs[1].done_keys()
    assert a and b and not a & b  # both worked, nobody saw a message twice
    assert a | b == {study(i).study_key for i in range(30)}
    for c, r in zip(consumers, recs, strict=True):
        assert {e.partition for e in r.events} == {
            tp.partition for tp in c.assignment()
        } or not c.assignment()


def test_two_groups_each_get_everything(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic = unique("fanout")
    ensure_topics(kafka_bootstrap, {topic: 2})
    publish_studies(producer, topic, range(10))
    recs = [Recorder(), Recorder()]
    consumers = [
        Consumer(config(kafka_bootstrap, unique(name)), {topic: events_pb2.StudyIngested}, r, producer, name)
        for name, r in zip(("search", "prognosis"), recs, strict=True)
    ]
    with running(*consumers):
        wait_for(lambda: all(len(r.events) >= 10 for r in recs), what="both groups")
    everything = {study(i).study_key for i in range(10)}
    assert recs[0].done_keys() == everything and recs[1].done_keys() == everything


def test_handler_gets_batches_when_messages_wait(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic, group = unique("batch"), unique("g")
    ensure_topics(kafka_bootstrap, {topic: 1})
    publish_studies(producer, topic, range(10))
    rec = Recorder()
    consumer = Consumer(
        config(kafka_bootstrap, group, max_batch=4), {topic: events_pb2.StudyIngested}, rec, producer, "t"
    )
    with running(consumer):
        wait_for(lambda: len(rec.events) >= 10, what="all 10")
    sizes = [len(call) for call in rec.calls]
    assert max(sizes) <= 4 and max(sizes) > 1
    assert [e.offset for e in rec.events] == list(range(10))  # in order, once each


def test_stop_finishes_in_flight_batch_and_commits(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic, group = unique("stop"), unique("g")
    ensure_topics(kafka_bootstrap, {topic: 1})
    publish_studies(producer, topic, range(6))
    rec = Recorder()
    cfg = config(kafka_bootstrap, group, max_batch=4)
    consumer = Consumer(cfg, {topic: events_pb2.StudyIngested}, rec, producer, "t")
    run = Running(consumer)

    def slow_and_stop(events: Sequence[Event]) -> list[BaseException | None]:
        run.stop.set()  # SIGTERM arrives while the batch is being handled
        time.sleep(0.3)
        return rec(events)

    consumer.handler = slow_and_stop
    run.thread.start()
    run.thread.join(15)
    assert run.error is None and not run.thread.is_alive()
    assert len(rec.calls) == 1
    handled = [e.offset for e in rec.events]
    assert committed(kafka_bootstrap, group) == {TopicPartition(topic, 0): handled[-1] + 1}

    rest = Recorder()
    with running(Consumer(cfg, {topic: events_pb2.StudyIngested}, rest, producer, "t")):
        wait_for(lambda: len(handled) + len(rest.events) >= 6, what="the rest")
        time.sleep(0.3)
    assert [e.offset for e in rest.events] == list(range(handled[-1] + 1, 6))  # nothing handled twice


def test_retries_longer_than_max_poll_interval_keep_membership(
    kafka_bootstrap: str,
    producer: EventProducer,
) -> None:
    topic, group, dlq = unique("hold"), unique("g"), unique("dlq")
    ensure_topics(kafka_bootstrap, {topic: 1})
    publish_studies(producer, topic, [1])
    rec = Recorder(lambda e: RuntimeError("busy") if e.attempt <= 3 else None)
    # three backoffs of 0.5-1.0 s each add up to more than max_poll_interval (1.2 s)
    cfg = config(
        kafka_bootstrap,
        group,
        dlq,
        session_timeout_ms=1000,
        heartbeat_interval_ms=200,
        max_poll_interval_ms=1200,
        backoff_initial_s=1.0,
        backoff_max_s=1.0,
        max_attempts=5,
    )
    consumer = Consumer(cfg, {topic: events_pb2.StudyIngested}, rec, producer, "t")
    with running(consumer):
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 1, what="commit")
        assert consumer.healthy()
    assert [e.attempt for e in rec.events] == [1, 2, 3, 4]  # no redelivery: the group never dropped us


def test_healthy_turns_false_when_the_broker_goes() -> None:
    with LocalBroker() as broker:
        topic = unique("health")
        ensure_topics(broker.bootstrap, {topic: 1})
        cfg = config(broker.bootstrap, unique("g"), request_timeout_ms=3000, delivery_timeout_ms=5000)
        with EventProducer(cfg) as own:
            consumer = Consumer(cfg, {topic: events_pb2.StudyIngested}, Recorder(), own, "t")
            with running(consumer):
                wait_for(consumer.healthy, what="healthy")
                assert own.connected()
                broker.stop()
                wait_for(lambda: not consumer.healthy(), timeout_s=20, what="unhealthy")
                wait_for(lambda: not own.connected(), timeout_s=20, what="producer disconnected")
