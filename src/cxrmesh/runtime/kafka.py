"""The Kafka runtime every service uses: a protobuf producer and an at-least-once batch consumer.

Delivery contract (why the code looks the way it does):

* Offsets are committed by hand, and only for a polled batch whose every message was handled or
  dead-lettered with the dead-letter write acknowledged. A crash before the commit means the
  group's next consumer sees the messages again, so handlers must be idempotent.
* Failed messages (only those) are retried with exponential backoff and jitter; while waiting the
  consumer pauses its partitions and keeps polling, so it stays in the group and rebalances
  proceed. After ``max_attempts`` (or at once for :class:`PermanentError` and undecodable
  messages) a ``cxrmesh.v1.DeadLetter`` goes to the dead-letter topic.
* Keys are study pseudonyms: they never reach a log line or a metric label. Logs carry topic,
  partition and offset; metrics carry topic, group, partition and outcome.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.protobuf.message import DecodeError, Message
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.producer.future import RecordMetadata
from kafka.structs import MemberState, OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram

from cxrmesh.runtime.metrics import LATENCY_BUCKETS, metric
from cxrmesh.v1 import events_pb2

__all__ = [
    "Consumer",
    "DeadLetterError",
    "Event",
    "EventProducer",
    "Handler",
    "HandlerContractError",
    "KafkaConfig",
    "KafkaConfigError",
    "KafkaRuntimeError",
    "KafkaUnavailableError",
    "PermanentError",
    "PoisonMessageError",
    "PublishError",
    "PublishFuture",
    "RecordMetadata",
    "content_type",
]

log = logging.getLogger(__name__)

CONTENT_TYPE_HEADER = "content-type"
_INIT_PRODUCER_ID_API_KEY = 22  # Kafka API key of InitProducerId: the broker can do idempotent produce
_SUPPORTED_COMPRESSION = (None, "gzip", "snappy", "lz4", "zstd")
_DEAD_LETTER_TRIES = 3  # on top of the producer's own retries within delivery_timeout_ms
_HANDLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


# ----------------------------------------------------------------------------------------- errors


class KafkaRuntimeError(Exception):
    """Base of the errors this module raises on purpose."""


class KafkaConfigError(KafkaRuntimeError, ValueError):
    """The configuration cannot work (caught at construction, not at the first message)."""


class KafkaUnavailableError(KafkaRuntimeError):
    """No broker of the bootstrap list answered."""


class PublishError(KafkaRuntimeError):
    """A record was not acknowledged by the broker (acks=all) in time, or could not be sent."""

    def __init__(self, topic: str, reason: str):
        super().__init__(f"publish to {topic} failed: {reason}")
        self.topic = topic
        self.reason = reason


class DeadLetterError(KafkaRuntimeError):
    """The dead-letter topic did not take a message, so the batch must not be committed."""


class PermanentError(Exception):
    """Raised (or returned) by a handler: the content is bad, retrying cannot help; dead-letter now."""


class PoisonMessageError(PermanentError):
    """The record cannot be decoded as its topic's message type (reason of a poison dead letter)."""


class HandlerContractError(KafkaRuntimeError):
    """The handler returned something other than one ``None``/exception per event."""


# ----------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class KafkaConfig:
    """Client settings shared by producer and consumer; the defaults are the production ones.

    ``max_attempts`` counts handler calls per message (1 = no retry). ``backoff_*`` bound the wait
    between attempts (exponential, jittered). ``max_batch`` is the most events per handler call.
    ``idempotence`` None means: on when the broker answers InitProducerId.
    """

    bootstrap: str
    client_id: str
    group_id: str = ""
    dead_letter_topic: str = "cxrmesh.deadletter.v1"
    max_attempts: int = 5
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    max_batch: int = 16
    poll_timeout_ms: int = 500
    session_timeout_ms: int = 10000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    compression: str | None = "gzip"
    request_timeout_ms: int = 30000
    # additions
    auto_offset_reset: str = "earliest"  # a new group starts at the beginning: nothing is skipped
    linger_ms: int = 5
    delivery_timeout_ms: int = 120000
    idempotence: bool | None = None
    lag_interval_s: float = 15.0

    def __post_init__(self) -> None:
        problems = []
        if not self.bootstrap:
            problems.append("bootstrap is empty")
        if self.max_attempts < 1:
            problems.append("max_attempts must be >= 1")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            problems.append("need 0 <= backoff_initial_s <= backoff_max_s")
        if self.max_batch < 1:
            problems.append("max_batch must be >= 1")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            problems.append("heartbeat_interval_ms must be below session_timeout_ms")
        if self.poll_timeout_ms >= self.max_poll_interval_ms:
            problems.append("poll_timeout_ms must be below max_poll_interval_ms")
        if self.compression not in _SUPPORTED_COMPRESSION:
            problems.append(f"compression must be one of {_SUPPORTED_COMPRESSION}")
        if self.auto_offset_reset not in ("earliest", "latest"):
            problems.append("auto_offset_reset must be earliest or latest")
        if self.delivery_timeout_ms < self.request_timeout_ms + self.linger_ms:
            problems.append("delivery_timeout_ms must be >= request_timeout_ms + linger_ms")
        if problems:
            raise KafkaConfigError("invalid KafkaConfig: " + "; ".join(problems))


def content_type(message: Message | type[Message]) -> str:
    """The content-type header value naming a record's protobuf type (lets tools decode any topic)."""
    return f"application/x-protobuf; messageType={message.DESCRIPTOR.full_name}"


def _message_type_of(header: str) -> str | None:
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "messagetype":
            return value.strip()
    return None


# ---------------------------------------------------------------------------------------- metrics


def _messages_total() -> Counter:
    return metric(
        Counter,
        "cxrmesh_kafka_messages_total",
        "Consumed messages by outcome (ok, retried, dead_lettered, poison).",
        ("topic", "group", "outcome"),
    )


def _handle_seconds() -> Histogram:
    return metric(
        Histogram,
        "cxrmesh_kafka_handle_seconds",
        "Handler time per batch of events.",
        ("topic", "group"),
        buckets=_HANDLE_BUCKETS,
    )


def _consumer_lag() -> Gauge:
    return metric(
        Gauge,
        "cxrmesh_kafka_consumer_lag",
        "Messages between the consumer position and the end of the partition (best effort).",
        ("topic", "group", "partition"),
    )


def _published_total() -> Counter:
    return metric(
        Counter,
        "cxrmesh_kafka_published_total",
        "Records published, by outcome (ok, error).",
        ("topic", "outcome"),
    )


def _publish_seconds() -> Histogram:
    return metric(
        Histogram,
        "cxrmesh_kafka_publish_seconds",
        "Time from send to broker acknowledgement (acks=all).",
        ("topic",),
        buckets=LATENCY_BUCKETS,
    )


# --------------------------------------------------------------------------------------- producer


def _broker_supports_idempotence(cfg: KafkaConfig) -> bool:
    """Ask the broker (ApiVersions) whether it answers InitProducerId; some Kafka-protocol brokers do not."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=cfg.bootstrap,
            client_id=f"{cfg.client_id}-probe",
            request_timeout_ms=cfg.request_timeout_ms,
        )
    except KafkaError as exc:  # bootstrap timed out (KafkaTimeoutError)
        raise KafkaUnavailableError(f"no broker answered at {cfg.bootstrap}: {exc}") from exc
    try:
        return any(int(key) == _INIT_PRODUCER_ID_API_KEY for key in admin.api_versions())
    finally:
        admin.close()


class PublishFuture(concurrent.futures.Future[RecordMetadata]):
    """A standard future for one publish; ``get`` is there for code used to kafka-python's futures."""

    def get(self, timeout: float | None = None) -> RecordMetadata:
        """The RecordMetadata, or :class:`PublishError` (also when not acknowledged within ``timeout``)."""
        try:
            return self.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            raise PublishError("(pending)", f"not acknowledged within {timeout}s") from exc


class EventProducer:
    """Publishes protobuf messages keyed by study; thread-safe, one per process is enough.

    acks=all and unbounded retries within ``delivery_timeout_ms`` (the client's own retry policy),
    idempotent when the broker supports it so those retries cannot duplicate or reorder records.
    """

    def __init__(self, cfg: KafkaConfig):
        self.cfg = cfg
        idempotence = cfg.idempotence if cfg.idempotence is not None else _broker_supports_idempotence(cfg)
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=cfg.bootstrap,
                client_id=cfg.client_id,
                acks="all",
                enable_idempotence=idempotence,
                compression_type=cfg.compression,
                linger_ms=cfg.linger_ms,
                request_timeout_ms=cfg.request_timeout_ms,
                delivery_timeout_ms=cfg.delivery_timeout_ms,
                max_block_ms=cfg.request_timeout_ms,
            )
        except KafkaError as exc:  # bootstrap timed out (KafkaTimeoutError)
            raise KafkaUnavailableError(f"no broker answered at {cfg.bootstrap}: {exc}") from exc
        except RuntimeError as exc:  # kafka-python: the codec library is not installed
            raise KafkaConfigError(f"compression {cfg.compression!r} is not available: {exc}") from exc
        self.idempotent = idempotence
        self._closed = False
        self._published = _published_total()
        self._latency = _publish_seconds()
        log.info(
            "kafka producer ready",
            extra={"client_id": cfg.client_id, "idempotent": idempotence, "compression": cfg.compression},
        )

    def publish(
        self, topic: str, key: str, message: Message, headers: Mapping[str, str] | None = None
    ) -> PublishFuture:
        """Send without waiting; the future holds the RecordMetadata or a :class:`PublishError`.

        ``message`` may also be any object with ``SerializeToString()`` (an outbox replaying stored
        bytes) when ``headers`` carry the content-type.
        """
        out = PublishFuture()
        out.set_running_or_notify_cancel()  # a send cannot be taken back: no cancel() racing the callbacks
        if self._closed:
            out.set_exception(PublishError(topic, "producer is closed"))
            return out
        merged = dict(headers or {})
        if CONTENT_TYPE_HEADER not in merged:
            merged[CONTENT_TYPE_HEADER] = content_type(message)
        start = time.monotonic()

        def ok(md: RecordMetadata) -> None:
            self._latency.labels(topic).observe(time.monotonic() - start)
            self._published.labels(topic, "ok").inc()
            out.set_result(md)

        def failed(exc: BaseException) -> None:
            self._published.labels(topic, "error").inc()
            log.warning("kafka publish failed", extra={"topic": topic, "error_type": type(exc).__name__})
            out.set_exception(PublishError(topic, f"{type(exc).__name__}: {exc}"))

        try:
            sent = self._producer.send(
                topic,
                key=key.encode("utf-8"),
                value=message.SerializeToString(),
                headers=[(name, value.encode("utf-8")) for name, value in merged.items()],
            )
        except KafkaError as exc:  # metadata not available in max_block_ms, record too large, closed
            failed(exc)
            return out
        sent.add_callback(ok)
        sent.add_errback(failed)
        return out

    def publish_sync(
        self,
        topic: str,
        key: str,
        message: Message,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 30,
    ) -> RecordMetadata:
        """Send and wait for the broker's acknowledgement; raises :class:`PublishError`.

        On a timeout the record may still be delivered later (at-least-once, never at-most-once).
        """
        future = self.publish(topic, key, message, headers)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise PublishError(topic, f"not acknowledged within {timeout_s}s") from exc

    def connected(self) -> bool:
        """True while the client holds a connection to a broker (readiness; metadata refreshes keep
        an idle producer connected, and the connection count drops to 0 when the brokers go)."""
        if self._closed:
            return False
        values = (self._producer.metrics() or {}).get("producer-metrics", {})
        return float(values.get("connection-count") or 0) >= 1

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged or failed."""
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise PublishError("(all topics)", f"flush: {type(exc).__name__}: {exc}") from exc

    def close(self, timeout_s: float = 30) -> None:
        """Flush and close; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------- consumer


@dataclass(frozen=True)
class Event:
    """One decoded record as the handler sees it; ``attempt`` is 1 on first delivery to this consumer."""

    topic: str
    partition: int
    offset: int
    key: str
    message: Message
    headers: Mapping[str, str]
    attempt: int = 1


Handler = Callable[[Sequence[Event]], Sequence[BaseException | None]]


def _heartbeat_age(consumer: KafkaConsumer) -> float | None:
    """Seconds since the last group heartbeat was sent (client metrics); None when not reported."""
    for group, values in (consumer.metrics() or {}).items():
        if group.endswith("coordinator-metrics"):
            age = values.get("last-heartbeat-seconds-ago")
            return float(age) if age is not None else None
    return None


class _Batch:
    """Which offsets of a polled batch are still open, to know what may be committed."""

    def __init__(self, records: Mapping[TopicPartition, Sequence[Any]]):
        self.open: dict[TopicPartition, set[int]] = {tp: {r.offset for r in rs} for tp, rs in records.items()}
        self.next: dict[TopicPartition, int] = {
            tp: max(r.offset for r in rs) + 1 for tp, rs in records.items()
        }
        self.first: dict[TopicPartition, int] = {tp: min(r.offset for r in rs) for tp, rs in records.items()}

    def done(self, topic: str, partition: int, offset: int) -> None:
        self.open[TopicPartition(topic, partition)].discard(offset)

    def commit_offset(self, tp: TopicPartition) -> int:
        """The next offset to read: everything below it is done (the first open one, or the end)."""
        return min(self.open[tp]) if self.open[tp] else self.next[tp]


class _Listener(ConsumerRebalanceListener):
    """Tracks rebalances; while the consumer holds (backoff) new partitions are paused at once."""

    def __init__(self, owner: Consumer):
        self.owner = owner

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.owner._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.owner._on_assigned(set(assigned))

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self.owner._on_revoked(set(lost))


class Consumer:
    """At-least-once worker: poll, decode, hand batches to ``handler``, retry, dead-letter, commit.

    ``topics`` maps each subscribed topic to its protobuf type. The handler gets up to ``max_batch``
    events of one topic at a time and returns, per event, ``None`` (done) or the exception that
    failed it; an exception raised by the handler fails every event of that call, and a
    ``BaseException`` that is not an ``Exception`` (SystemExit, KeyboardInterrupt) is a crash: the
    consumer closes without committing. Events of one key may be handled out of order when an
    earlier one is retried; handlers are idempotent and compare versions where order matters.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        topics: Mapping[str, type[Message]],
        handler: Handler,
        producer: EventProducer,
        service: str,
    ):
        if not cfg.group_id:
            raise KafkaConfigError("a Consumer needs cfg.group_id (offsets are committed for a group)")
        if not topics:
            raise KafkaConfigError("a Consumer needs at least one topic")
        if cfg.dead_letter_topic in topics:
            raise KafkaConfigError("a Consumer cannot consume its own dead-letter topic")
        self.cfg = cfg
        self.topics = dict(topics)
        self.handler = handler
        self.producer = producer
        self.service = service
        self._consumer: KafkaConsumer | None = None
        self._lock = threading.Lock()
        self._running = False
        self._failed = False
        self._last_poll = 0.0
        self._poll_failing = False
        self._joined_at = 0.0
        self._holding = False
        self._rebalanced = False
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._next_lag = 0.0
        self._messages = _messages_total()
        self._handle_time = _handle_seconds()
        self._lag = _consumer_lag()

    # -- public -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set, then leave the group; every finished batch is already committed.

        Setting ``stop`` lets the in-flight batch finish (retries included, bounded by
        ``max_attempts`` and ``backoff_max_s``) and be committed. Raises
        :class:`KafkaUnavailableError` when no broker answers at start and :class:`DeadLetterError`
        when the dead-letter topic refuses a message (nothing of that batch is committed).
        """
        if self._consumer is not None:
            raise RuntimeError("Consumer.run may be called once")
        self._consumer = self._connect()
        self._running = True
        self._last_poll = time.monotonic()
        extra = {"group": self.cfg.group_id, "topics": ",".join(sorted(self.topics))}
        log.info("kafka consumer started", extra=extra)
        try:
            while not stop.is_set():
                records = self._poll(self.cfg.poll_timeout_ms)
                if records:
                    self._process(records)
                self._update_lag()
        except BaseException as exc:
            self._failed = True
            log.error("kafka consumer stopped by an error", extra={**extra, "error_type": type(exc).__name__})
            raise
        finally:
            self._running = False
            # enable_auto_commit is off, so close() commits nothing: only finished batches count
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("kafka consumer close failed", extra={**extra, "error_type": type(exc).__name__})
            self._clear_lag(self._assignment)
            log.info("kafka consumer closed", extra=extra)

    def healthy(self) -> bool:
        """True while the loop runs and polls in time, the group is stable and heartbeats go out.

        Heartbeats are the connection signal: the client sends none while it has no coordinator,
        so a silence longer than the session timeout (after the grace of a fresh join) means the
        broker is gone even though the last known assignment still looks stable.
        """
        consumer = self._consumer
        if consumer is None or not self._running or self._failed or self._poll_failing:
            return False
        now = time.monotonic()
        if now - self._last_poll > self.cfg.max_poll_interval_ms / 1000:
            return False
        if consumer.group_metadata().state != MemberState.STABLE:
            return False
        session_s = self.cfg.session_timeout_ms / 1000
        age = _heartbeat_age(consumer)
        return age is None or age <= session_s or now - self._joined_at <= session_s

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this consumer owns now (empty before it joined)."""
        return self._assignment

    # -- kafka plumbing -------------------------------------------------------------------------

    def _connect(self) -> KafkaConsumer:
        cfg = self.cfg
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=cfg.bootstrap,
                client_id=cfg.client_id,
                group_id=cfg.group_id,
                enable_auto_commit=False,
                auto_offset_reset=cfg.auto_offset_reset,
                max_poll_records=cfg.max_batch,
                session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                max_poll_interval_ms=cfg.max_poll_interval_ms,
                request_timeout_ms=cfg.request_timeout_ms,
            )
        except KafkaError as exc:  # bootstrap timed out (KafkaTimeoutError)
            raise KafkaUnavailableError(f"no broker answered at {cfg.bootstrap}: {exc}") from exc
        consumer.subscribe(topics=sorted(self.topics), listener=_Listener(self))
        return consumer

    def _poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        """One poll; broker errors are logged and retried by the next loop turn (the client reconnects)."""
        assert self._consumer is not None
        try:
            records = self._consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            log.warning(
                "kafka poll failed", extra={"group": self.cfg.group_id, "error_type": type(exc).__name__}
            )
            self._poll_failing = True
            time.sleep(min(1.0, timeout_ms / 1000))
            return {}
        self._poll_failing = False
        self._last_poll = time.monotonic()
        return records

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        with self._lock:
            self._rebalanced = True
            self._assignment = self._assignment - revoked
        self._clear_lag(revoked)
        if revoked:
            log.info("kafka partitions revoked", extra=self._tp_extra(revoked))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        with self._lock:
            self._rebalanced = True
            self._assignment = self._assignment | assigned
            self._joined_at = time.monotonic()
            holding = self._holding
        if holding and assigned and self._consumer is not None:
            self._consumer.pause(*assigned)
        log.info("kafka partitions assigned", extra=self._tp_extra(assigned))

    def _tp_extra(self, tps: Iterable[TopicPartition]) -> dict[str, object]:
        return {
            "group": self.cfg.group_id,
            "partitions": ",".join(f"{t.topic}/{t.partition}" for t in sorted(tps)),
        }

    def _hold(self, seconds: float) -> None:
        """Wait out a backoff while staying in the group: partitions paused, poll keeps running."""
        assert self._consumer is not None
        consumer = self._consumer
        deadline = time.monotonic() + seconds
        with self._lock:
            self._holding = True
        try:
            while (left := deadline - time.monotonic()) > 0:
                consumer.pause(*consumer.assignment())
                slice_ms = max(1, min(int(left * 1000), self.cfg.poll_timeout_ms))
                stray = self._poll(slice_ms)
                for tp, recs in stray.items():  # fetched before the pause took effect: read again later
                    consumer.seek(tp, min(r.offset for r in recs))
        finally:
            with self._lock:
                self._holding = False
            consumer.resume(*consumer.paused())

    # -- the batch ------------------------------------------------------------------------------

    def _process(self, records: Mapping[TopicPartition, Sequence[Any]]) -> None:
        with self._lock:
            self._rebalanced = False
        batch = _Batch(records)
        by_topic: dict[str, list[Any]] = defaultdict(list)
        for tp in sorted(records):
            by_topic[tp.topic].extend(records[tp])
        for topic, recs in by_topic.items():
            events: list[Event] = []
            poison: list[tuple[Any, BaseException, int]] = []
            for rec in recs:
                decoded = self._decode(rec)
                if isinstance(decoded, Event):
                    events.append(decoded)
                else:  # never shown to the handler: dead-lettered at once, attempts=0
                    poison.append((rec, decoded, 0))
            if poison:
                self._dead_letter(poison, "poison")
                for rec, _, _ in poison:
                    batch.done(rec.topic, rec.partition, rec.offset)
            if events:
                self._handle(topic, events, batch, {(r.partition, r.offset): r for r in recs})
        self._commit(batch)

    def _decode(self, rec: Any) -> Event | PoisonMessageError:
        msg_type = self.topics[rec.topic]
        try:
            key = rec.key.decode("utf-8") if rec.key is not None else ""
        except UnicodeDecodeError:
            return PoisonMessageError("key is not utf-8")
        headers = {
            name: (value or b"").decode("utf-8", errors="replace") for name, value in (rec.headers or [])
        }
        declared = _message_type_of(headers.get(CONTENT_TYPE_HEADER, ""))
        if declared and declared != msg_type.DESCRIPTOR.full_name:
            return PoisonMessageError(
                f"content-type names {declared}, topic carries {msg_type.DESCRIPTOR.full_name}"
            )
        if rec.value is None:
            return PoisonMessageError("record has no value (tombstone)")
        message = msg_type()
        try:
            message.ParseFromString(rec.value)
        except DecodeError as exc:
            return PoisonMessageError(f"not a {msg_type.DESCRIPTOR.full_name}: {exc}")
        return Event(rec.topic, rec.partition, rec.offset, key, message, MappingProxyType(headers), 1)

    def _call_handler(self, topic: str, events: Sequence[Event]) -> list[BaseException | None]:
        start = time.monotonic()
        try:
            results = list(self.handler(events))
        except Exception as exc:  # the whole call failed; SystemExit/KeyboardInterrupt propagate (crash)
            results = [exc] * len(events)
        finally:
            self._handle_time.labels(topic, self.cfg.group_id).observe(time.monotonic() - start)
        if len(results) != len(events):
            err = HandlerContractError(f"handler returned {len(results)} results for {len(events)} events")
            return [err] * len(events)
        return [
            r
            if r is None or isinstance(r, BaseException)
            else HandlerContractError(f"handler returned {type(r).__name__}, not None or an exception")
            for r in results
        ]

    def _handle(
        self, topic: str, events: list[Event], batch: _Batch, raw: Mapping[tuple[int, int], Any]
    ) -> None:
        group = self.cfg.group_id
        pending = events
        while pending:
            results = self._call_handler(topic, pending)
            retry: list[Event] = []
            give_up: list[tuple[Any, BaseException, int]] = []
            for event, result in zip(pending, results, strict=True):
                if result is None:
                    self._messages.labels(topic, group, "ok").inc()
                    batch.done(event.topic, event.partition, event.offset)
                elif isinstance(result, PermanentError) or event.attempt >= self.cfg.max_attempts:
                    give_up.append((raw[(event.partition, event.offset)], result, event.attempt))
                else:
                    self._messages.labels(topic, group, "retried").inc()
                    log.info(
                        "kafka event failed, will retry",
                        extra={
                            "topic": event.topic,
                            "partition": event.partition,
                            "offset": event.offset,
                            "group": group,
                            "attempt": event.attempt,
                            "error_type": type(result).__name__,
                        },
                    )
                    # decoded again: a handler that changed the message must not see its own edits
                    fresh = type(event.message).FromString(raw[(event.partition, event.offset)].value)
                    retry.append(dataclasses.replace(event, message=fresh, attempt=event.attempt + 1))
            if give_up:
                self._dead_letter(give_up, "dead_lettered")
                for rec, _, _ in give_up:
                    batch.done(rec.topic, rec.partition, rec.offset)
            if not retry:
                return
            self._hold(self._backoff(retry[0].attempt - 1))
            owned = self._consumer.assignment() if self._consumer is not None else set()
            pending = [e for e in retry if TopicPartition(e.topic, e.partition) in owned]
            if len(pending) < len(retry):
                log.info(
                    "kafka retries dropped: partitions moved to another consumer",
                    extra={"topic": topic, "group": group, "dropped": len(retry) - len(pending)},
                )

    def _backoff(self, failed_attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random (spreads retries of many pods)."""
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** max(0, failed_attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def _dead_letter(self, items: Sequence[tuple[Any, BaseException, int]], outcome: str) -> None:
        """Publish DeadLetters and wait for the acknowledgements; retried, then :class:`DeadLetterError`."""
        letters = []
        for rec, exc, attempts in items:
            letter = events_pb2.DeadLetter(
                source_topic=rec.topic,
                source_partition=rec.partition,
                source_offset=rec.offset,
                key=rec.key.decode("utf-8", errors="backslashreplace") if rec.key is not None else "",
                payload=rec.value or b"",
                service=self.service,
                consumer_group=self.cfg.group_id,
                reason=str(exc) or type(exc).__name__,
                error_type=type(exc).__name__,
                attempts=attempts,
            )
            letter.failed_at.GetCurrentTime()
            letters.append((rec, letter))
        topic = self.cfg.dead_letter_topic
        remaining = letters
        for attempt in range(1, _DEAD_LETTER_TRIES + 1):
            futures = [
                (rec, letter, self.producer.publish(topic, letter.key, letter)) for rec, letter in remaining
            ]
            self._await([f for _, _, f in futures], self.cfg.delivery_timeout_ms / 1000)
            failed = []
            error_type = ""
            for rec, letter, future in futures:
                try:
                    future.result(timeout=0)
                except (PublishError, concurrent.futures.TimeoutError) as exc:
                    failed.append((rec, letter))
                    error_type = type(exc).__name__
                else:
                    self._messages.labels(rec.topic, self.cfg.group_id, outcome).inc()
                    log.warning(
                        "kafka event dead-lettered",
                        extra={
                            "topic": rec.topic,
                            "partition": rec.partition,
                            "offset": rec.offset,
                            "group": self.cfg.group_id,
                            "outcome": outcome,
                            "attempts": letter.attempts,
                            "error_type": letter.error_type,
                        },
                    )
            if not failed:
                return
            remaining = failed
            log.warning(
                "kafka dead-letter publish failed",
                extra={"topic": topic, "attempt": attempt, "error_type": error_type, "count": len(failed)},
            )
            if attempt < _DEAD_LETTER_TRIES:
                self._hold(self._backoff(attempt))
        raise DeadLetterError(f"{len(remaining)} dead letters not acknowledged by {topic}")

    def _await(self, futures: Sequence[concurrent.futures.Future[Any]], timeout_s: float) -> None:
        """Wait for acknowledgements in poll-sized slices, so a slow broker does not cost the membership."""
        deadline = time.monotonic() + timeout_s
        pending = set(futures)
        while pending and (left := deadline - time.monotonic()) > 0:
            _, pending = concurrent.futures.wait(pending, timeout=min(left, self.cfg.poll_timeout_ms / 1000))
            if pending:
                self._hold(0.001)  # one paused poll: heartbeats and rebalances go on

    def _commit(self, batch: _Batch) -> None:
        """Commit what is done for the partitions still owned; failures mean redelivery, not loss."""
        assert self._consumer is not None
        owned = self._consumer.assignment()
        offsets = {
            tp: OffsetAndMetadata(batch.commit_offset(tp), "", -1)
            for tp in batch.open
            if tp in owned and batch.commit_offset(tp) > batch.first[tp]
        }
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, timeout_ms=self.cfg.request_timeout_ms)
            except KafkaError as exc:  # CommitFailedError after a rebalance: the new owner redoes them
                log.warning(
                    "kafka commit failed; messages will be redelivered",
                    extra={
                        "group": self.cfg.group_id,
                        "error_type": type(exc).__name__,
                        **self._offsets_extra(offsets),
                    },
                )
                return
            log.debug("kafka committed", extra={"group": self.cfg.group_id, **self._offsets_extra(offsets)})
        with self._lock:
            rebalanced, self._rebalanced = self._rebalanced, False
        if rebalanced:  # a rebalance reset positions to the old commit: continue after this batch instead
            for tp in batch.open:
                if tp in owned:
                    self._consumer.seek(tp, batch.commit_offset(tp))

    @staticmethod
    def _offsets_extra(offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> dict[str, str]:
        return {
            "offsets": ",".join(
                f"{tp.topic}/{tp.partition}@{om.offset}" for tp, om in sorted(offsets.items())
            )
        }

    def _update_lag(self) -> None:
        """Every ``lag_interval_s``: end offset minus position per owned partition (best effort)."""
        now = time.monotonic()
        if now < self._next_lag or self._consumer is None:
            return
        self._next_lag = now + self.cfg.lag_interval_s
        owned = list(self._consumer.assignment())
        if not owned:
            return
        timeout_ms = min(self.cfg.request_timeout_ms, 5000)
        try:
            ends = self._consumer.end_offsets(owned, timeout_ms=timeout_ms)
            for tp in owned:
                position = self._consumer.position(tp, timeout_ms=timeout_ms)
                end = ends.get(tp)
                if position is not None and end is not None:
                    self._lag.labels(tp.topic, self.cfg.group_id, str(tp.partition)).set(
                        max(0, end - position)
                    )
        except KafkaError as exc:
            log.debug(
                "kafka lag not updated", extra={"group": self.cfg.group_id, "error_type": type(exc).__name__}
            )

    def _clear_lag(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                self._lag.remove(tp.topic, self.cfg.group_id, str(tp.partition))
