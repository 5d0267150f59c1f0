"""The outbox relay: publish the ingestion outbox's pending events until Kafka confirms each one.

Every ingestion replica runs one; each publishes only the rows it claimed under a lease (``Outbox.claim``),
so replicas share the outbox without publishing a row twice on purpose. An event is marked sent only
after the broker confirms it; failed sends are released and retried (consumers are idempotent for the
rare duplicate). The backlog is exported as a gauge. Each record is published with the trace context
stored in its row, so it continues the trace of the call that stored it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from sqlalchemy.exc import SQLAlchemyError

from cxrmesh.runtime import metrics
from cxrmesh.runtime.kafka import EventProducer
from cxrmesh.services.ingestion.outbox import Outbox

log = logging.getLogger(__name__)


def relay_owner() -> str:
    """This relay's name in the outbox's claims: host, process and a random part (restarts differ)."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def relay(
    outbox: Outbox,
    producer: EventProducer,
    stop: threading.Event,
    interval_s: float,
    timeout_s: float = 30,
    owner: str | None = None,
) -> None:
    """Publish the events this relay claims until Kafka confirms each; mark them sent only then.

    The lease outlasts a whole batch's confirmation wait (``timeout_s``) twice over, so a live relay's
    rows are never taken over by another replica while it still waits for the broker.

    A database outage costs rounds, not the relay: it waits (doubling up to 5 s) and goes on once the
    database answers. Events it had published but could not mark sent are published again when their
    lease ends (a duplicate the consumers absorb), never lost.
    """
    owner = owner or relay_owner()
    wait = interval_s
    while not stop.is_set():
        try:
            _round(outbox, producer, stop, owner, timeout_s, interval_s)
            wait = interval_s
        except SQLAlchemyError as exc:
            log.warning(
                "outbox relay round failed: database unavailable", extra={"error_type": type(exc).__name__}
            )
            stop.wait(wait)
            wait = min(5.0, max(wait, 0.1) * 2)


def _round(
    outbox: Outbox,
    producer: EventProducer,
    stop: threading.Event,
    owner: str,
    timeout_s: float,
    interval_s: float,
) -> None:
    """One claim, publish and confirm round (waits ``interval_s`` when nothing is pending)."""
    backlog = metrics.metric(metrics.Gauge, "cxrmesh_outbox_pending", "Events not yet confirmed by Kafka.")
    pending = outbox.claim(owner, lease_s=2 * timeout_s + 10)
    backlog.set(outbox.backlog())
    if not pending:
        stop.wait(interval_s)
        return
    futures = [
        (
            e.id,
            producer.publish(
                e.topic,
                e.key,
                _Raw(e.payload),
                {"content-type": _content_type(e.type_name), **e.trace_headers()},
            ),
        )
        for e in pending
    ]
    sent, failed = [], []
    for event_id, fut in futures:
        try:
            fut.get(timeout=timeout_s)
            sent.append(event_id)
        except Exception as exc:  # kafka errors of any kind: keep the event, retry later
            failed.append(event_id)
            log.warning("outbox publish failed", extra={"error_type": type(exc).__name__})
    outbox.mark_sent(sent, owner)
    outbox.mark_failed(failed, owner)
    if failed:
        stop.wait(min(5.0, interval_s * 4))


def _content_type(type_name: str) -> str:
    return f"application/x-protobuf; messageType={type_name}"


class _Raw:
    """Already-serialised protobuf bytes, publishable through the producer like a message."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def SerializeToString(self) -> bytes:
        return self.payload
