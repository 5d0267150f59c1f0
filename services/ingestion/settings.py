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
    # the reconciler (reconcile.py): a study with no verdict this long after ingestion is re-driven,
    # each time waiting twice as long, at most this many times; then it is counted as stuck
    reconcile_after_s: float = Field(300, gt=0)
    reconcile_interval_s: float = Field(30, gt=0)
    reconcile_max_redrives: int = Field(3, ge=0)
    reconcile_batch: int = Field(100, ge=1)
