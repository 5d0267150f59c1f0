"""Settings of the prognosis service (``CXRMESH_*``)."""

from __future__ import annotations

from pydantic import Field

from cxrmesh.contracts.ports import SERVICE_PORTS, loopback
from cxrmesh.runtime.settings import ServiceSettings

PORTS = SERVICE_PORTS["prognosis"]


class PrognosisSettings(ServiceSettings):
    service: str = "prognosis"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    prognosis_model: str = "prognosis_head"
    search_url: str = Field(
        loopback(SERVICE_PORTS["search"].grpc), description="search service, for outcomes of prior cases"
    )
    neighbours: int = Field(10, ge=1, le=100)
