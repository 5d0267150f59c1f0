"""Settings of the study view service (``CXRMESH_*``)."""

from __future__ import annotations

from pydantic import Field

from cxrmesh.contracts.ports import SERVICE_PORTS, loopback
from cxrmesh.runtime.settings import ServiceSettings

PORTS = SERVICE_PORTS["studyview"]


class StudyViewSettings(ServiceSettings):
    service: str = "studyview"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    search_url: str = loopback(SERVICE_PORTS["search"].grpc)
    default_similar_k: int = Field(5, ge=1, le=100)
