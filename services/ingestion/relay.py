"""The outbox relay: publish the ingestion outbox's pending events until Kafka confirms each one.

An event is marked sent only after the broker confirms it; failed sends stay pending and are retried
(consumers are idempotent for the rare duplicate). The backlog is exported as a gauge.
"""

from __future__ import annotations

import logging
import threading

from cxrmesh.runtime import metrics
from cxrmesh.runtime.kafka import EventProducer
from cxrmesh.services.ingestion.outbox import Outbox

log = logging.getLogger(__name__)


def relay(
    outbox: Outbox, producer: EventProducer, stop: threading.Event, interval_s: float, timeout_s: float = 30
) -> None:
    """Publish pending outbox events until Kafka confirms each; mark them sent only then."""
    backlog = metrics.metric(metrics.Gauge, "cxrmesh_outbox_pending", "Events not yet confirmed by Kafka.")
    while not stop.is_set():
        pending = outbox.pending()
        backlog.set(outbox.backlog())
        if not pending:
            stop.wait(interval_s)
            continue
        futures = [
            (
                e.id,
                producer.publish(
                    e.topic, e.key, _Raw(e.payload), {"content-type": _content_type(e.type_name)}
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
        outbox.mark_sent(sent)
        outbox.mark_failed(failed)
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
