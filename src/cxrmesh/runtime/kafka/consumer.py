"""The at-least-once batch consumer every stage runs: poll, decode, handle, retry, dead-letter, commit.

Delivery contract (why the code looks the way it does):

* Offsets are committed by hand, and only for a polled batch whose every message was handled or
  dead-lettered with the dead-letter write acknowledged. A crash before the commit means the
  group's next consumer sees the messages again, so handlers must be idempotent.
* Failed messages (only those) are retried with exponential backoff and jitter; while waiting the
  consumer pauses its partitions and keeps polling, so it stays in the group and rebalances
  proceed. After ``max_attempts`` (or at once for :class:`PermanentError` and undecodable
  messages) a ``cxrmesh.v1.DeadLetter`` goes to the dead-letter topic (see ``dead_letter``).
* A :class:`DependencyUnavailable` result (Triton, storage, Milvus, the database or the broker is
  down) is not the message's fault: it is retried with the same capped, jittered backoff but spends
  no attempt, until the dependency has been unavailable for ``unavailable_max_s`` since the
  message's first such failure; from then on it counts like any failure (and its dead letter says
  how long the dependency was away). An outage therefore delays studies instead of failing them,
  and the partition's place is kept: nothing after the waiting message is committed.
* When ``stop`` is set (SIGTERM) the handler call in progress finishes, its successes are
  committed, and pending retries are dropped rather than waited for: those messages are not
  committed, so the group's next consumer gets them again.
* Keys are study pseudonyms: they never reach a log line or a metric label. Logs carry topic,
  partition and offset; metrics carry topic, group, partition and outcome.
* Each record gets a CONSUMER span, a child of the context its producer put in its headers, open
  until its batch is committed (``spans``): retries and dependency waits are events on it, a give-up
  its error status. While the handler runs, what it publishes under a record's key continues that
  record's trace (``tracing.keyed``), and a lone event's span is the current one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf.message import Message
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import MemberState, OffsetAndMetadata

from cxrmesh.runtime.kafka.backoff import backoff_s
from cxrmesh.runtime.kafka.batch import PolledBatch
from cxrmesh.runtime.kafka.config import KafkaConfig
from cxrmesh.runtime.kafka.dead_letter import DeadLetterWriter, Failure
from cxrmesh.runtime.kafka.errors import (
    DependencyUnavailable,
    KafkaConfigError,
    KafkaUnavailableError,
    PermanentError,
)
from cxrmesh.runtime.kafka.events import Event, Handler, call_handler, decode_record
from cxrmesh.runtime.kafka.lag import LagGauge
from cxrmesh.runtime.kafka.metrics import (
    CONSUMED_OUTCOMES,
    consumer_renewed_total,
    handle_seconds,
    messages_total,
    start_at_zero,
)
from cxrmesh.runtime.kafka.producer import EventProducer
from cxrmesh.runtime.kafka.spans import BatchSpans

log = logging.getLogger(__name__)


def _heartbeat_age(consumer: KafkaConsumer) -> float | None:
    """Seconds since the last group heartbeat was sent (client metrics); None when not reported."""
    for group, values in (consumer.metrics() or {}).items():
        if group.endswith("coordinator-metrics"):
            age = values.get("last-heartbeat-seconds-ago")
            return float(age) if age is not None else None
    return None


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
        self._out_since: float | None = None  # when this client last left its group (None: in it)
        self._holding = False
        self._rebalanced = False
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._stop = threading.Event()  # replaced by run()'s: ends retry waits early
        self._messages = messages_total()
        for topic in self.topics:  # every outcome from 0: the first dead letter is an increase
            start_at_zero(self._messages, (topic, cfg.group_id), CONSUMED_OUTCOMES)
        self._handle_time = handle_seconds()
        self._renewed = consumer_renewed_total()
        self._lag = LagGauge(cfg)
        self._spans = BatchSpans({}, cfg.group_id)  # the batch being processed (empty between batches)
        self._dead_letters = DeadLetterWriter(cfg, producer, service, self._messages, self._hold)

    # -- public -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set, then leave the group; every finished batch is already committed.

        Setting ``stop`` lets the handler call in progress finish and its finished prefix be
        committed; retries still pending (a dependency outage can make them long) are dropped, so
        their messages are redelivered to the group's next consumer. Raises
        :class:`KafkaUnavailableError` when no broker answers at start and :class:`DeadLetterError`
        when the dead-letter topic refuses a message (nothing of that batch is committed).
        """
        if self._consumer is not None:
            raise RuntimeError("Consumer.run may be called once")
        self._stop = stop
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
                self._lag.update(self._consumer)
                if self._out_of_group_s() > self.cfg.rejoin_timeout_ms / 1000:
                    self._renew(stop)
        except BaseException as exc:
            self._failed = True
            log.error("kafka consumer stopped by an error", extra={**extra, "error_type": type(exc).__name__})
            raise
        finally:
            self._running = False
            self._close(extra)
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
        if time.monotonic() - self._last_poll > self.cfg.max_poll_interval_ms / 1000:
            return False
        return self._in_group(consumer)

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this consumer owns now (empty before it joined)."""
        return self._assignment

    # -- kafka plumbing -------------------------------------------------------------------------

    def _in_group(self, consumer: KafkaConsumer) -> bool:
        """A stable member whose heartbeats go out (or that joined less than a session ago)."""
        if consumer.group_metadata().state != MemberState.STABLE:
            return False
        session_s = self.cfg.session_timeout_ms / 1000
        age = _heartbeat_age(consumer)
        return age is None or age <= session_s or time.monotonic() - self._joined_at <= session_s

    def _out_of_group_s(self) -> float:
        """Seconds this client has been out of its group without a break (0 while it is in)."""
        if self._consumer is None or self._in_group(self._consumer):
            self._out_since = None
            return 0.0
        if self._out_since is None:
            self._out_since = time.monotonic()
        return time.monotonic() - self._out_since

    def _renew(self, stop: threading.Event) -> None:
        """Replace a client that stayed out of its group past ``rejoin_timeout_ms`` with a fresh member.

        Why: kafka-python waits up to ``max_poll_interval_ms`` + 5 s (5 minutes by default) for a
        JoinGroup or SyncGroup answer, and a broker that lost the join never sends one (the local
        broker, when its storage dies mid-rebalance; a real coordinator answers or drops the
        connection, so there this is only a safety net): the service would stay NOT_SERVING and
        its partitions unread. Nothing is lost by the swap: this runs between batches, every
        finished batch is committed, and what was not is read again by whichever member gets the
        partition.
        """
        extra = {"group": self.cfg.group_id, "out_of_group_s": round(self._out_of_group_s(), 1)}
        log.warning("kafka consumer renewed: out of its group too long, a fresh member joins", extra=extra)
        self._renewed.labels(self.cfg.group_id).inc()
        self._close(extra)
        self._consumer, self._out_since = None, None
        while not stop.is_set():
            try:
                self._consumer = self._connect()
            except KafkaUnavailableError as exc:  # the broker is away too: try again shortly
                log.warning("kafka consumer renewal waits for a broker", extra={**extra, "error": str(exc)})
                stop.wait(min(5.0, self.cfg.session_timeout_ms / 1000))
                continue
            self._last_poll = time.monotonic()
            return

    def _close(self, extra: Mapping[str, object]) -> None:
        """Leave the group. enable_auto_commit is off, so close() commits nothing: only finished batches
        count."""
        consumer = self._consumer
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("kafka consumer close failed", extra={**extra, "error_type": type(exc).__name__})
        self._lag.clear(self._assignment)
        with self._lock:
            self._assignment = frozenset()

    def _connect(self) -> KafkaConsumer:
        cfg = self.cfg
        try:
            consumer = KafkaConsumer(
                **cfg.client_kwargs(),
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
        self._lag.clear(revoked)
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

    def _hold(self, seconds: float, stop: threading.Event | None = None) -> None:
        """Wait out a backoff while staying in the group: partitions paused, poll keeps running.

        Returns early once ``stop`` is set (handler retries pass the run's stop event; dead-letter
        waits do not, since their batch must be confirmed before it may be committed)."""
        assert self._consumer is not None
        consumer = self._consumer
        deadline = time.monotonic() + seconds
        with self._lock:
            self._holding = True
        try:
            while (left := deadline - time.monotonic()) > 0 and not (stop is not None and stop.is_set()):
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
        self._spans = BatchSpans(records, self.cfg.group_id)
        try:
            with self._spans.batch():
                self._process_batch(records)
        finally:
            self._spans.end()
            self._spans = BatchSpans({}, self.cfg.group_id)

    def _process_batch(self, records: Mapping[TopicPartition, Sequence[Any]]) -> None:
        with self._lock:
            self._rebalanced = False
        batch = PolledBatch(records)
        by_topic: dict[str, list[Any]] = defaultdict(list)
        for tp in sorted(records):
            by_topic[tp.topic].extend(records[tp])
        for topic, recs in by_topic.items():
            events: list[Event] = []
            poison: list[Failure] = []
            for rec in recs:
                decoded = decode_record(rec, self.topics[rec.topic])
                if isinstance(decoded, Event):
                    events.append(decoded)
                else:  # never shown to the handler: dead-lettered at once, attempts=0
                    poison.append((rec, decoded, 0))
            if poison:
                for rec, why, _ in poison:
                    self._spans.failed(rec, why, "poison")
                self._dead_letters.write(poison, "poison")
                for rec, _, _ in poison:
                    batch.done(rec.topic, rec.partition, rec.offset)
            if events:
                self._handle(topic, events, batch, {(r.partition, r.offset): r for r in recs})
        self._commit(batch)

    def _call_handler(self, topic: str, events: Sequence[Event]) -> list[BaseException | None]:
        start = time.monotonic()
        try:
            with self._spans.handling(events):
                return call_handler(self.handler, events)
        finally:
            self._handle_time.labels(topic, self.cfg.group_id).observe(time.monotonic() - start)

    def _handle(
        self, topic: str, events: list[Event], batch: PolledBatch, raw: Mapping[tuple[int, int], Any]
    ) -> None:
        group = self.cfg.group_id
        pending = events
        outages: dict[tuple[int, int], _Outage] = {}  # (partition, offset): its dependency outage so far
        while pending:
            results = self._call_handler(topic, pending)
            retry: list[Event] = []
            steps: list[int] = []  # per retried event: how far along its backoff is
            give_up: list[Failure] = []
            waiting: list[str] = []  # error types of the events that wait without spending attempts
            for event, result in zip(pending, results, strict=True):
                where = (event.partition, event.offset)
                if result is None:
                    self._messages.labels(topic, group, "ok").inc()
                    batch.done(event.topic, event.partition, event.offset)
                    continue
                if isinstance(result, DependencyUnavailable) and not isinstance(result, PermanentError):
                    outage = outages.setdefault(where, _Outage(time.monotonic()))
                    if outage.within(self.cfg.unavailable_max_s):
                        outage.waits += 1
                        self._spans.note(event, "dependency unavailable", result, event.attempt)
                        waiting.append(type(result).__name__)
                        self._messages.labels(topic, group, "unavailable").inc()
                        retry.append(self._again(event, raw, event.attempt))  # no attempt spent
                        steps.append(outage.waits)
                        continue
                    result = outage.expired(result)
                if isinstance(result, PermanentError) or event.attempt >= self.cfg.max_attempts:
                    give_up.append((raw[where], result, event.attempt))
                    self._spans.failed(event, result, "dead_lettered")
                    continue
                self._messages.labels(topic, group, "retried").inc()
                self._spans.note(event, "retry", result, event.attempt)
                with self._spans.within(event):  # the line carries the study's trace id
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
                retry.append(self._again(event, raw, event.attempt + 1))
                steps.append(event.attempt)
            if give_up:
                self._dead_letters.write(give_up, "dead_lettered")
                for rec, _, _ in give_up:
                    batch.done(rec.topic, rec.partition, rec.offset)
            if not retry:
                return
            if waiting:
                log.warning(
                    "kafka events wait for an unavailable dependency; attempts are not spent",
                    extra={
                        "topic": topic,
                        "group": group,
                        "count": len(waiting),
                        "unavailable_s": round(max(o.age() for o in outages.values()), 1),
                        "error_type": ",".join(sorted(set(waiting))),
                    },
                )
            if not self._stop.is_set():
                self._hold(backoff_s(self.cfg, max(steps)), self._stop)
            if self._stop.is_set():  # SIGTERM: not committed, so the group's next consumer gets them
                log.info(
                    "kafka retries dropped: stopping; the messages will be redelivered",
                    extra={"topic": topic, "group": group, "dropped": len(retry)},
                )
                return
            owned = self._consumer.assignment() if self._consumer is not None else set()
            pending = [e for e in retry if TopicPartition(e.topic, e.partition) in owned]
            if len(pending) < len(retry):
                log.info(
                    "kafka retries dropped: partitions moved to another consumer",
                    extra={"topic": topic, "group": group, "dropped": len(retry) - len(pending)},
                )

    @staticmethod
    def _again(event: Event, raw: Mapping[tuple[int, int], Any], attempt: int) -> Event:
        """The event for its next handler call, decoded again: a handler that changed the message
        must not see its own edits."""
        fresh = type(event.message).FromString(raw[(event.partition, event.offset)].value)
        return dataclasses.replace(event, message=fresh, attempt=attempt)

    def _commit(self, batch: PolledBatch) -> None:
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
                        **_offsets_extra(offsets),
                    },
                )
                return
            log.debug("kafka committed", extra={"group": self.cfg.group_id, **_offsets_extra(offsets)})
        with self._lock:
            rebalanced, self._rebalanced = self._rebalanced, False
        if rebalanced:  # a rebalance reset positions to the old commit: continue after this batch instead
            for tp in batch.open:
                if tp in owned:
                    self._consumer.seek(tp, batch.commit_offset(tp))


@dataclasses.dataclass
class _Outage:
    """One message's dependency outage: when it first failed as unavailable, how many waits since."""

    since: float
    waits: int = 0

    def age(self) -> float:
        return time.monotonic() - self.since

    def within(self, limit_s: float) -> bool:
        """Still inside the window in which waiting spends no attempt (0 = no such window)."""
        return self.age() < limit_s

    def expired(self, cause: DependencyUnavailable) -> DependencyUnavailable:
        """The error that counts from now on: it says how long the dependency was away, and why."""
        err = DependencyUnavailable(f"dependency unavailable for {self.age():.0f} s: {cause}")
        err.__cause__ = cause
        return err


def _offsets_extra(offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> dict[str, str]:
    return {
        "offsets": ",".join(f"{tp.topic}/{tp.partition}@{om.offset}" for tp, om in sorted(offsets.items()))
    }
