"""A consumer whose JoinGroup is never answered is replaced by a fresh member (``rejoin_timeout_ms``).

The fault: a broker that loses a join keeps the connection open and never answers the JoinGroup, and
kafka-python waits ``max_poll_interval_ms`` + 5 s (5 minutes by default) for that answer, the
service NOT_SERVING meanwhile. The local broker does this when its S3 store dies mid-rebalance:
the fault suite saw four services stay NOT_SERVING for minutes after the store's kill, and 294
studies never complete.

Here the real Tansu advertises itself behind a small TCP proxy that swallows the broker's answer
to the first JoinGroup request (Kafka framing: a 4-byte size, then api key 11 and the correlation
id in the request header; the answer starts with that correlation id). The consumer must read a
message well before kafka-python's own timeout would have freed it.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugins.kafka_broker import unique
from plugins.kafka_clients import Running, config, metric, wait_for

from cxrmesh.local import process
from cxrmesh.local.broker import (
    TansuNotFoundError,
    _answers_metadata,
    ensure_topics,
    find_tansu,
    tansu_command,
)
from cxrmesh.local.ports import free_port
from cxrmesh.runtime.kafka import Consumer, EventProducer
from cxrmesh.v1 import events_pb2

pytestmark = pytest.mark.slow

JOIN_GROUP = 11  # Kafka api key


def _read_frame(sock: socket.socket) -> bytes | None:
    """One size-prefixed Kafka frame (size included), or None when the peer closed."""
    head = _read_exact(sock, 4)
    if head is None:
        return None
    body = _read_exact(sock, struct.unpack(">i", head)[0])
    return None if body is None else head + body


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


class JoinSwallowingProxy:
    """Forwards Kafka connections to ``upstream``; the answers to the first ``drop`` JoinGroup
    requests (over all connections) are read from the broker and never passed on."""

    def __init__(self, upstream: int, drop: int):
        self.upstream, self.drop = upstream, drop
        self.dropped = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.upstream))
            swallow: set[int] = set()  # correlation ids whose answers are dropped, this connection
            threading.Thread(target=self._requests, args=(client, broker, swallow), daemon=True).start()
            threading.Thread(target=self._answers, args=(broker, client, swallow), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, swallow: set[int]) -> None:
        while (frame := _read_frame(src)) is not None:
            api_key, _version, correlation = struct.unpack(">hhi", frame[4:12])
            with self.lock:
                if api_key == JOIN_GROUP and self.dropped < self.drop:
                    self.dropped += 1
                    swallow.add(correlation)
            dst.sendall(frame)
        dst.close()

    def _answers(self, src: socket.socket, dst: socket.socket, swallow: set[int]) -> None:
        while (frame := _read_frame(src)) is not None:
            (correlation,) = struct.unpack(">i", frame[4:8])
            with self.lock:
                if correlation in swallow:
                    swallow.discard(correlation)
                    continue
            dst.sendall(frame)
        dst.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def lossy_broker(tmp_path: Path) -> Iterator[tuple[str, JoinSwallowingProxy]]:
    """A real Tansu (memory storage) whose clients reach it only through the proxy."""
    try:
        binary = find_tansu()
    except TansuNotFoundError as exc:
        pytest.skip(str(exc))
    broker_port = free_port()
    proxy = JoinSwallowingProxy(broker_port, drop=1)
    argv = tansu_command(binary, broker_port, "cxrmesh-rejoin")
    argv[argv.index("--advertised-listener-url") + 1] = f"tcp://127.0.0.1:{proxy.port}"
    proc = process.spawn(argv, tmp_path / "tansu.log")
    try:
        wait_for(lambda: _answers_metadata(f"127.0.0.1:{broker_port}", 2.0), 30, "the broker")
        yield f"127.0.0.1:{proxy.port}", proxy
    finally:
        process.stop(proc, "tansu", signal.SIGINT)
        proxy.close()


def test_a_consumer_whose_join_is_never_answered_is_renewed(lossy_broker) -> None:
    bootstrap, proxy = lossy_broker
    topic, group, dlq = unique("rejoin"), unique("g"), unique("dlq")
    ensure_topics(bootstrap, {topic: 1, dlq: 1})
    seen: list[str] = []
    # without renewal the client would wait max_poll_interval_ms + 5 s = 125 s for the lost answer
    cfg = config(bootstrap, group, dlq, max_poll_interval_ms=120_000, rejoin_timeout_ms=6_000)
    before = metric("cxrmesh_kafka_consumer_renewed_total", group=group)
    with EventProducer(config(bootstrap)) as producer:
        producer.publish_sync(topic, "S0001", events_pb2.StudyIngested(study_key="S0001"), timeout_s=10)
        consumer = Consumer(cfg, {topic: events_pb2.StudyIngested}, _record(seen), producer, "test")
        with Running(consumer):
            wait_for(lambda: proxy.dropped >= 1, 20, "the first JoinGroup")
            wait_for(lambda: seen == ["S0001"], 40, "the message, read by a renewed member")
            wait_for(consumer.healthy, 10, "a healthy consumer")
    assert metric("cxrmesh_kafka_consumer_renewed_total", group=group) == before + 1


def _record(seen: list[str]):
    def handle(events):
        seen.extend(e.key for e in events)
        return [None] * len(events)

    return handle
