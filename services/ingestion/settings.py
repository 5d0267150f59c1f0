"""Settings of the ingestion service (``CXRMESH_*``)."""

from __future__ import annotations

from pydantic import Field

from cxrmesh.contracts.ports import SERVICE_PORTS
from cxrmesh.services.pseudonym_settings import PseudonymKeySettings

PORTS = SERVICE_PORTS["ingestion"]


class IngestionSettings(PseudonymKeySettings):
    service: str = "ingestion"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    outbox_interval_s: float = Field(0.5, gt=0)
