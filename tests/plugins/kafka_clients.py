"""Helpers for tests of the Kafka runtime against the session's real broker (``plugins.kafka_broker``).

Shared by the consumer tests (tests/integration/test_runtime_kafka.py, test_consumer_unavailable.py):
shrunk client timings so a test takes seconds, a consumer run in a thread, and read-backs of a topic,
a group's committed offsets and the consumer's metric. Not a pytest plugin: import what you use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from plugins.kafka_broker import unique
from prometheus_client import REGISTRY

from cxrmesh.runtime.kafka import Consumer, KafkaConfig

SESSION = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


def config(bootstrap: str, group: str = "", dead_letter_topic: str = "", **kw: Any) -> KafkaConfig:
    """A client config with test timings (session 2 s, backoff tens of ms, 3 attempts); ``kw`` wins."""
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


class Running:
    """``Consumer.run`` in a thread (a context manager); remembers what ended it."""

    def __init__(self, consumer: Consumer):
        self.consumer = consumer
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run(self.stop)
        except BaseException as exc:  # SystemExit too: the test inspects it
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self, timeout_s: float = 15) -> None:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "consumer did not stop"


@contextmanager
def running(*consumers: Consumer) -> Iterator[list[Running]]:
    """Several consumers running at once, each stopped at the end."""
    with ExitStack() as stack:
        yield [stack.enter_context(Running(c)) for c in consumers]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read_all(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 10, settle_s: float = 0.5
) -> list[Any]:
    """Every record of ``topic`` (no group): waits for ``expect`` records, then ``settle_s`` for extras."""
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


def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The group's committed offsets (partitions with none left out)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
        return {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}
    finally:
        admin.close()


def metric(name: str, **labels: str) -> float:
    """A sample of this process's Prometheus registry (0 when never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
