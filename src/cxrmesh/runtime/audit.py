"""The audit trail: one record per gRPC call that reads or writes a study, to a log and to Kafka.

A hospital must be able to say who asked for which study, when, and whether it was allowed. The
authorization interceptor (``cxrmesh.runtime.authz``) calls :meth:`AuditTrail.record` once per call of a
cxrmesh.v1 method, denied calls included. Each record (``cxrmesh.v1.AuditRecord``) holds the time, the
caller (certificate CN, roles, token subject), the method, the study pseudonym and the outcome; never
PHI (ingestion is the only service that sees it, and it keeps it out of every reply) and never a raw
identifier (the study is named by its keyed pseudonym only).

Two sinks:

* the audit log: logger ``cxrmesh.audit``, one JSON line per record, written before the call returns,
  to its own file (``audit_log_file``, default ``<data_dir>/audit/<service>.jsonl``) and never to the
  service log: service logs carry no study identifiers at all, while the audit line names the study by
  its pseudonym (``study_pseudonym``) on purpose, because naming the study is what an audit record is
  for, and the pseudonym is an HMAC that only the ingestion secret links back to a patient. Keeping the
  two streams apart lets operators ship and retain them differently (docs/security.md).
* Kafka: topic ``cxrmesh.audit.v1`` keyed by the pseudonym, sent by one background thread so that a slow
  or absent broker never delays an RPC. The queue is bounded; records it cannot hold are counted
  (``cxrmesh_audit_dropped_total``) and remain in the log.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from cxrmesh.contracts.topics import AUDIT
from cxrmesh.runtime import metrics
from cxrmesh.runtime.kafka import EventProducer, KafkaConfig, KafkaRuntimeError
from cxrmesh.runtime.log import JsonFormatter
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.v1.events_pb2 import AuditRecord

log = logging.getLogger(__name__)
audit_log = logging.getLogger("cxrmesh.audit")

QUEUE_SIZE = 10000
RETRY_S = 5.0  # wait between attempts to reach the broker


def dropped_total() -> Counter:
    doc = "Audit records not sent to Kafka (queue full or broker away at shutdown); they are in the log."
    return metrics.metric(Counter, "cxrmesh_audit_dropped_total", doc)


class AuditTrail:
    """Writes audit records to the ``cxrmesh.audit`` log and, from a background thread, to Kafka."""

    def __init__(self, server: str, kafka: KafkaConfig | None, topic: str = AUDIT):
        self.server = server
        self.topic = topic
        self._kafka = kafka
        self._queue: queue.Queue[AuditRecord] = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> AuditTrail:
        kafka = settings.kafka_config("") if settings.audit_to_kafka else None
        path = settings.audit_log_file or settings.data_dir / "audit" / f"{settings.service}.jsonl"
        route_audit_log(path, settings.service)
        return cls(settings.service, kafka)

    def record(
        self,
        *,
        caller: str,
        roles: frozenset[str],
        token_subject: str,
        grpc_service: str,
        method: str,
        study_key: str,
        outcome: str,
        reason: str = "",
    ) -> AuditRecord:
        """Log one call now and queue it for Kafka; returns the record."""
        rec = AuditRecord(
            caller=caller,
            roles=sorted(roles),
            token_subject=token_subject,
            server=self.server,
            grpc_service=grpc_service,
            method=method,
            study_key=study_key,
            outcome=outcome,
            reason=reason,
        )
        rec.time.CopyFrom(_now())
        fields = {
            "caller": caller,
            "roles": ",".join(rec.roles),
            "token_subject": token_subject,
            "grpc_service": grpc_service,
            "grpc_method": method,
            "study_pseudonym": study_key,  # see the module docstring
            "outcome": outcome,
            "reason": reason,
        }
        audit_log.info("audit %s %s/%s %s", caller or "-", grpc_service, method, outcome, extra=fields)
        if self._kafka is not None:
            self._enqueue(rec)
        return rec

    def _enqueue(self, rec: AuditRecord) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._send_loop, name="audit", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            dropped_total().inc()

    def _connect(self) -> EventProducer | None:
        assert self._kafka is not None
        while not self._stop.is_set():
            try:
                return EventProducer(self._kafka)
            except KafkaRuntimeError as exc:
                log.warning("audit: no Kafka yet; records wait in memory", extra={"error": str(exc)})
                self._stop.wait(RETRY_S)
        return None

    def _send_loop(self) -> None:
        producer = self._connect()
        if producer is None:
            return
        self._connected.set()
        try:
            while not (self._stop.is_set() and self._queue.empty()):
                try:
                    rec = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                producer.publish(self.topic, rec.study_key, rec)
        finally:
            producer.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (waiting at most ``timeout_s``), then close the producer; idempotent.

        Without a broker there is nothing to wait for: the records stay in the log only.
        """
        self._stop.set()
        if self._thread is not None and self._connected.is_set():
            self._thread.join(timeout_s)
        left = self._queue.qsize()
        if left:
            dropped_total().inc(left)
            log.warning("audit: records not sent to Kafka at shutdown", extra={"count": left})


def route_audit_log(path: Path, service: str) -> None:
    """Send ``cxrmesh.audit`` lines to their own JSON-lines file and nowhere else (not the service log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter(service))
    for old in list(audit_log.handlers):
        audit_log.removeHandler(old)
        old.close()
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
