"""The protobuf producer: acks=all, idempotent where the broker can, a standard future per record.

Keys are study pseudonyms: they go to the broker and nowhere else (no log line, no metric label, no
span attribute). Every record continues the trace it is published in (``spans.start_publish``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping

from google.protobuf.message import Message
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import RecordMetadata

from cxrmesh.runtime.kafka.config import KafkaConfig
from cxrmesh.runtime.kafka.errors import KafkaConfigError, KafkaUnavailableError, PublishError
from cxrmesh.runtime.kafka.headers import CONTENT_TYPE_HEADER, content_type
from cxrmesh.runtime.kafka.metrics import (
    PUBLISHED_OUTCOMES,
    publish_seconds,
    published_total,
    renewed_total,
    start_at_zero,
)
from cxrmesh.runtime.kafka.spans import end_publish, start_publish

log = logging.getLogger(__name__)

_INIT_PRODUCER_ID_API_KEY = 22  # Kafka API key of InitProducerId: the broker can do idempotent produce


def _broker_supports_idempotence(cfg: KafkaConfig) -> bool:
    """Ask the broker (ApiVersions) whether it answers InitProducerId; some Kafka-protocol brokers do not."""
    try:
        admin = KafkaAdminClient(
            **cfg.client_kwargs(),
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
        self.idempotent = idempotence
        self._producer = self._make()
        self._closed = False
        self._renew_lock = threading.Lock()
        self._published = published_total()
        self._counted: set[str] = set()  # topics whose series exist
        self._latency = publish_seconds()
        self._renewed = renewed_total()
        log.info(
            "kafka producer ready",
            extra={"client_id": cfg.client_id, "idempotent": idempotence, "compression": cfg.compression},
        )

    def _make(self) -> KafkaProducer:
        cfg = self.cfg
        try:
            return KafkaProducer(
                **cfg.client_kwargs(),
                client_id=cfg.client_id,
                acks="all",
                enable_idempotence=self.idempotent,
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

    def _usable(self) -> KafkaProducer:
        """The client to send with: a new one in place of a client stuck in its fatal-error state.

        Why: an idempotent client that gets a produce error it cannot classify (the broker's
        UNKNOWN_SERVER_ERROR, say, while its storage is briefly down) enters a *fatal* state and
        fails every later send; Kafka's rule for a fatal producer error is to close that producer
        and make a new one (a new producer id, so new sequence numbers). The records it failed were
        failed to their callers, who retry (the outbox relay, the stage consumers): at-least-once, as
        ever. kafka-python 3.0 exposes the state only on its transaction manager (pinned in
        constraints.txt; ``test_producer_renews_a_client_in_its_fatal_state`` breaks if it moves).
        Runs on the caller's thread, never in the client's own I/O thread (whose callbacks cannot
        close their client). Raises :class:`KafkaUnavailableError` when no broker answers the new one.
        """
        current = self._producer
        manager = getattr(current, "_transaction_manager", None)
        if manager is None or not manager.has_fatal_error():
            return current
        with self._renew_lock:
            if self._producer is current:  # not renewed by another thread meanwhile
                cause = type(getattr(manager, "_last_error", None) or KafkaError()).__name__
                self._producer = self._make()
                self._renewed.inc()
                log.warning(
                    "kafka producer renewed after a fatal client error; its failed records are retried"
                    " by their senders",
                    extra={"client_id": self.cfg.client_id, "error_type": cause},
                )
                threading.Thread(target=current.close, kwargs={"timeout": 0}, daemon=True).start()
        return self._producer

    def publish(
        self, topic: str, key: str, message: Message, headers: Mapping[str, str] | None = None
    ) -> PublishFuture:
        """Send without waiting; the future holds the RecordMetadata or a :class:`PublishError`.

        ``message`` may also be any object with ``SerializeToString()`` (an outbox replaying stored
        bytes) when ``headers`` carry the content-type. A ``traceparent`` (and ``tracestate``) in
        ``headers`` names the trace the record continues (the outbox's stored one); without it, the
        trace of ``key``'s record in the batch being handled, else the current one.
        """
        out = PublishFuture()
        out.set_running_or_notify_cancel()  # a send cannot be taken back: no cancel() racing the callbacks
        if self._closed:
            out.set_exception(PublishError(topic, "producer is closed"))
            return out
        merged = dict(headers or {})
        if CONTENT_TYPE_HEADER not in merged:
            merged[CONTENT_TYPE_HEADER] = content_type(message)
        span = start_publish(topic, key, merged)
        start = time.monotonic()
        if topic not in self._counted:  # both outcomes from 0: the first error is an increase
            start_at_zero(self._published, (topic,), PUBLISHED_OUTCOMES)
            self._counted.add(topic)

        def ok(md: RecordMetadata) -> None:
            self._latency.labels(topic).observe(time.monotonic() - start)
            self._published.labels(topic, "ok").inc()
            end_publish(span, md.partition, md.offset)
            out.set_result(md)

        def failed(exc: BaseException) -> None:
            self._published.labels(topic, "error").inc()
            end_publish(span, error=exc)
            log.warning("kafka publish failed", extra={"topic": topic, "error_type": type(exc).__name__})
            out.set_exception(PublishError(topic, f"{type(exc).__name__}: {exc}"))

        try:
            sent = self._usable().send(
                topic,
                key=key.encode("utf-8"),
                value=message.SerializeToString(),
                headers=[(name, value.encode("utf-8")) for name, value in merged.items()],
            )
        except (KafkaError, KafkaUnavailableError) as exc:  # no metadata in time, too large, no broker
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
