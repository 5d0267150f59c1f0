"""A dependency outage against the real consumer and a real Kafka-protocol broker (Tansu, per session).

A handler that answers ``DependencyUnavailable`` (Triton, storage, Milvus, the database or the broker
is down) must not spend the message's attempts: the consumer waits, keeps the partition's place, and
the study completes once the dependency is back, handled successfully once, never dead-lettered.
Only after ``unavailable_max_s`` does the wait count like any failure, and its dead letter says so. A
stop (SIGTERM) ends the waiting at once without committing, so the message comes back.

Timings are shrunk (session 2 s, backoff tens of ms) so each test takes seconds.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from plugins.kafka_broker import unique
from prometheus_client import REGISTRY

from cxrmesh.local.broker import ensure_topics
from cxrmesh.runtime.kafka import (
    Consumer,
    DependencyUnavailable,
    Event,
    EventProducer,
    KafkaConfig,
    KafkaConfigError,
)
from cxrmesh.v1 import events_pb2

SESSION = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


def config(bootstrap: str, group: str = "", dead_letter_topic: str = "", **kw: Any) -> KafkaConfig:
    base: dict[str, Any] = {
        **SESSION,
        "poll_timeout_ms": 100,
        "backoff_initial_s": 0.02,
        "backoff_max_s": 0.05,
        "max_attempts": 3,
        "lag_interval_s": 0.2,
        "request_timeout_ms": 10000,
        "delivery_timeout_ms": 20000,
    }
    base.update(kw)
    return KafkaConfig(
        bootstrap=bootstrap,
        client_id=unique("test"),
        group_id=group,
        dead_letter_topic=dead_letter_topic or unique("dlq"),
        **base,
    )


@pytest.fixture(scope="module")
def producer(kafka_bootstrap: str) -> Iterator[EventProducer]:
    with EventProducer(config(kafka_bootstrap)) as p:
        yield p


def publish(producer: EventProducer, topic: str, n: int) -> list[str]:
    keys = [f"S{i:04d}" for i in range(n)]
    for key in keys:
        producer.publish_sync(topic, key, events_pb2.StudyIngested(study_key=key), timeout_s=10)
    return keys


class Outage:
    """A handler whose dependency is down for its first ``down_calls`` calls (every event of them
    answers ``DependencyUnavailable``), then up; it records each event with its verdict."""

    def __init__(self, down_calls: int):
        self.down_calls = down_calls
        self.calls = 0
        self.seen: list[tuple[Event, bool]] = []  # (event, handled successfully)
        self.lock = threading.Lock()

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        with self.lock:
            self.calls += 1
            down = self.calls <= self.down_calls
            self.seen.extend((e, not down) for e in events)
        return [DependencyUnavailable("model server unavailable, retry later") if down else None] * len(
            events
        )

    def successes(self) -> list[str]:
        with self.lock:
            return [e.key for e, ok in self.seen if ok]

    def events(self) -> list[Event]:
        with self.lock:
            return [e for e, _ in self.seen]


class Running:
    """Consumer.run in a thread; remembers what ended it."""

    def __init__(self, consumer: Consumer):
        self.consumer = consumer
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run(self.stop)
        except BaseException as exc:  # the test inspects it
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "consumer did not stop"


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
        return {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}
    finally:
        admin.close()


def read_all(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 10, settle_s: float = 0.5
) -> list[Any]:
    """Every record of ``topic``: waits for ``expect`` records, then ``settle_s`` more for extras."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **SESSION)
    try:
        deadline = time.monotonic() + timeout_s
        parts = reader.partitions_for_topic(topic) or set()
        while not parts and time.monotonic() < deadline:
            time.sleep(0.1)
            parts = reader.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        out: list[Any] = []
        settle_until = None
        while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
            for recs in reader.poll(timeout_ms=100).values():
                out.extend(recs)
            if len(out) >= expect and settle_until is None:
                settle_until = time.monotonic() + settle_s
        return out
    finally:
        reader.close()


def metric(topic: str, group: str, outcome: str) -> float:
    labels = {"topic": topic, "group": group, "outcome": outcome}
    return REGISTRY.get_sample_value("cxrmesh_kafka_messages_total", labels) or 0.0


# ------------------------------------------------------------------------------------------ tests


def test_unavailable_max_s_is_validated() -> None:
    with pytest.raises(KafkaConfigError, match="unavailable_max_s"):
        KafkaConfig(bootstrap="localhost:9092", client_id="t", unavailable_max_s=-1)
    assert KafkaConfig(bootstrap="localhost:9092", client_id="t").unavailable_max_s == 900


def test_an_outage_longer_than_max_attempts_loses_nothing(
    kafka_bootstrap: str, producer: EventProducer
) -> None:
    topic, group, dlq = unique("outage"), unique("g"), unique("dlq")
    ensure_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    keys = publish(producer, topic, 3)
    handler = Outage(down_calls=8)  # far more calls than max_attempts (3)
    consumer = Consumer(
        config(kafka_bootstrap, group, dlq, unavailable_max_s=120),
        {topic: events_pb2.StudyIngested},
        handler,
        producer,
        "t",
    )
    with Running(consumer) as run:
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 3, what="commit")
        assert consumer.healthy()  # it waited in the group, polling
    assert run.error is None
    assert handler.calls > 8
    assert sorted(handler.successes()) == keys  # each handled successfully exactly once
    assert all(e.attempt == 1 for e in handler.events())  # waiting spent no attempt
    assert read_all(kafka_bootstrap, dlq, expect=0, timeout_s=1) == []
    waits = len(handler.events()) - 3
    assert metric(topic, group, "unavailable") == waits >= 8
    assert metric(topic, group, "ok") == 3
    assert metric(topic, group, "retried") == 0 and metric(topic, group, "dead_lettered") == 0


def test_an_outage_past_unavailable_max_s_is_dead_lettered_with_the_reason(
    kafka_bootstrap: str, producer: EventProducer
) -> None:
    topic, group, dlq = unique("gone"), unique("g"), unique("dlq")
    ensure_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    (key,) = publish(producer, topic, 1)
    handler = Outage(down_calls=10**9)  # never comes back
    consumer = Consumer(
        config(kafka_bootstrap, group, dlq, unavailable_max_s=1.0),
        {topic: events_pb2.StudyIngested},
        handler,
        producer,
        "embedding",
    )
    with Running(consumer):
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 1, what="commit")
    attempts = [e.attempt for e in handler.events()]
    # waited without spending attempts, then counted like any failure up to max_attempts
    assert attempts.count(1) >= 2 and attempts[-2:] == [2, 3] and len(attempts) > 3
    (record,) = read_all(kafka_bootstrap, dlq, expect=1)
    letter = events_pb2.DeadLetter.FromString(record.value)
    assert letter.key == key and letter.attempts == 3
    assert letter.error_type == "DependencyUnavailable"
    assert re.fullmatch(
        r"dependency unavailable for \d+ s: model server unavailable, retry later", letter.reason
    )
    assert metric(topic, group, "dead_lettered") == 1
    assert metric(topic, group, "unavailable") == attempts.count(1) - 1
    assert metric(topic, group, "retried") == 2


def test_stop_ends_the_wait_and_the_message_comes_back(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic, group, dlq = unique("stopwait"), unique("g"), unique("dlq")
    ensure_topics(kafka_bootstrap, {topic: 1, dlq: 1})
    (key,) = publish(producer, topic, 1)
    # long backoffs and a long window: without the stop check the loop would wait on for minutes
    cfg = config(kafka_bootstrap, group, dlq, backoff_initial_s=5.0, backoff_max_s=5.0, unavailable_max_s=600)
    down = Outage(down_calls=10**9)
    run = Running(Consumer(cfg, {topic: events_pb2.StudyIngested}, down, producer, "t"))
    run.thread.start()
    wait_for(lambda: down.calls >= 1, what="the first call")
    run.stop.set()  # SIGTERM while the message waits for its dependency
    run.thread.join(15)
    assert not run.thread.is_alive(), "the wait did not end on stop"
    assert run.error is None
    assert committed(kafka_bootstrap, group) == {}  # not committed: it comes back

    up = Outage(down_calls=0)
    with Running(Consumer(cfg, {topic: events_pb2.StudyIngested}, up, producer, "t")):
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 1, what="commit")
    assert up.successes() == [key]
    assert read_all(kafka_bootstrap, dlq, expect=0, timeout_s=1) == []
