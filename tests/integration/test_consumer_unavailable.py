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
from collections.abc import Iterator, Sequence

import pytest
from kafka import TopicPartition
from plugins.kafka_broker import unique
from plugins.kafka_clients import Running, committed, config, metric, read_all, wait_for

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


def fresh_topic(bootstrap: str, prefix: str) -> tuple[str, str, str]:
    """(topic, group, dead-letter topic), new names, both topics created with one partition."""
    topic, group, dlq = unique(prefix), unique("g"), unique("dlq")
    ensure_topics(bootstrap, {topic: 1, dlq: 1})
    return topic, group, dlq


def studies_consumer(
    cfg: KafkaConfig, topic: str, handler: Outage, producer: EventProducer, service: str = "t"
) -> Consumer:
    return Consumer(cfg, {topic: events_pb2.StudyIngested}, handler, producer, service)


def outcomes(topic: str, group: str, outcome: str) -> float:
    return metric("cxrmesh_kafka_messages_total", topic=topic, group=group, outcome=outcome)


# ------------------------------------------------------------------------------------------ tests


def test_unavailable_max_s_is_validated() -> None:
    with pytest.raises(KafkaConfigError, match="unavailable_max_s"):
        KafkaConfig(bootstrap="localhost:9092", client_id="t", unavailable_max_s=-1)
    assert KafkaConfig(bootstrap="localhost:9092", client_id="t").unavailable_max_s == 900


def test_an_outage_longer_than_max_attempts_loses_nothing(
    kafka_bootstrap: str, producer: EventProducer
) -> None:
    topic, group, dlq = fresh_topic(kafka_bootstrap, "outage")
    keys = publish(producer, topic, 3)
    handler = Outage(down_calls=8)  # far more calls than max_attempts (3)
    consumer = studies_consumer(
        config(kafka_bootstrap, group, dlq, unavailable_max_s=120), topic, handler, producer
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
    assert outcomes(topic, group, "unavailable") == waits >= 8
    assert outcomes(topic, group, "ok") == 3
    assert outcomes(topic, group, "retried") == 0 and outcomes(topic, group, "dead_lettered") == 0


def test_an_outage_past_unavailable_max_s_is_dead_lettered_with_the_reason(
    kafka_bootstrap: str, producer: EventProducer
) -> None:
    topic, group, dlq = fresh_topic(kafka_bootstrap, "gone")
    (key,) = publish(producer, topic, 1)
    handler = Outage(down_calls=10**9)  # never comes back
    cfg = config(kafka_bootstrap, group, dlq, unavailable_max_s=1.0)
    consumer = studies_consumer(cfg, topic, handler, producer, "embedding")
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
    assert outcomes(topic, group, "dead_lettered") == 1
    assert outcomes(topic, group, "unavailable") == attempts.count(1) - 1
    assert outcomes(topic, group, "retried") == 2


def test_stop_ends_the_wait_and_the_message_comes_back(kafka_bootstrap: str, producer: EventProducer) -> None:
    topic, group, dlq = fresh_topic(kafka_bootstrap, "stopwait")
    (key,) = publish(producer, topic, 1)
    # long backoffs and a long window: without the stop check the loop would wait on for minutes
    cfg = config(kafka_bootstrap, group, dlq, backoff_initial_s=5.0, backoff_max_s=5.0, unavailable_max_s=600)
    down = Outage(down_calls=10**9)
    run = Running(studies_consumer(cfg, topic, down, producer))
    run.thread.start()
    wait_for(lambda: down.calls >= 1, what="the first call")
    run.stop.set()  # SIGTERM while the message waits for its dependency
    run.thread.join(15)
    assert not run.thread.is_alive(), "the wait did not end on stop"
    assert run.error is None
    assert committed(kafka_bootstrap, group) == {}  # not committed: it comes back

    up = Outage(down_calls=0)
    with Running(studies_consumer(cfg, topic, up, producer)):
        wait_for(lambda: committed(kafka_bootstrap, group).get(TopicPartition(topic, 0)) == 1, what="commit")
    assert up.successes() == [key]
    assert read_all(kafka_bootstrap, dlq, expect=0, timeout_s=1) == []
