"""The one way an instance leaves the gateway: ingestion's ``Ingest``, over mutual TLS.

The gateway keeps nothing itself, so a sender may only be told "stored" once ingestion has committed
the study and its outbox event; everything else is one of two failures the DICOM and DICOMweb fronts
must tell apart: ``Refused`` (this instance will never be accepted: do not resend it as is) and
``Unavailable`` (the mesh could not take it now: resend later). An error the gateway cannot classify
is ``Unavailable`` too: answering "retry" to an instance that is fine loses nothing, answering
"refused" would lose it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxrmesh.contracts.ingest_stream import ingest_chunks
from cxrmesh.runtime.grpc_server import error_reason
from cxrmesh.runtime.tls import open_channel
from cxrmesh.services.gateway.settings import GatewaySettings
from cxrmesh.v1 import ingestion_pb2, ingestion_pb2_grpc

log = logging.getLogger(__name__)

# the request itself is wrong: the same bytes will be refused again
REFUSED_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION})
PING_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Accepted:
    """Ingestion committed the study (or already had it: ``duplicate``)."""

    study_key: str
    duplicate: bool


@dataclass(frozen=True)
class Refused:
    """Ingestion will not take this instance: ``code`` is its stable rejection code (ErrorInfo reason)."""

    code: str
    reason: str


@dataclass(frozen=True)
class Unavailable:
    """Ingestion did not answer, or could not store the instance now; the sender should retry."""

    reason: str


Outcome = Accepted | Refused | Unavailable


def ingest_stream(data: bytes, source_name: str) -> Iterator[ingestion_pb2.IngestChunk]:
    """The Ingest stream, as every sender writes it (``cxrmesh.contracts.ingest_stream``)."""
    return ingest_chunks(data, ingestion_pb2.IngestHeader(source_name=source_name))


def outcome_of(exc: grpc.RpcError) -> Refused | Unavailable:
    """A failed Ingest call as the gateway answers it (the reason comes from google.rpc.ErrorInfo)."""
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details() or ""  # type: ignore[attr-defined]
    if code in REFUSED_CODES:
        return Refused(error_reason(exc) or code.name.lower(), details)
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # not transient by name (a refused certificate, an internal error): still not the instance's
        # fault as far as the gateway can tell, so the sender keeps it; the operator has to look
        log.error("ingestion failed the call", extra={"code": code.name})
    return Unavailable(f"ingestion {code.name.lower()}: {error_reason(exc) or details}"[:200])


class Handoff:
    """Sends DICOM files to ingestion on one channel (thread-safe: the DIMSE and STOW threads share it)."""

    def __init__(self, settings: GatewaySettings):
        self.timeout_s = settings.ingest_timeout_s
        self.channel = open_channel(settings.ingestion_url, settings.tls())
        self.stub = ingestion_pb2_grpc.IngestionServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def send(self, data: bytes, source_name: str) -> Outcome:
        """Hand one file to ingestion; ``source_name`` says where it came from, never whom it shows."""
        try:
            reply = self.stub.Ingest(ingest_stream(data, source_name), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            return outcome_of(exc)
        return Accepted(reply.study_key, reply.duplicate)

    def reachable(self) -> bool:
        """Ingestion answers over mutual TLS (any health status: it takes studies while Kafka is away,
        the outbox holds them, so its own Kafka dependency must not close the DICOM front door)."""
        try:
            self.health.Check(health_pb2.HealthCheckRequest(), timeout=PING_TIMEOUT_S)
        except grpc.RpcError:
            return False
        return True

    def close(self) -> None:
        self.channel.close()
