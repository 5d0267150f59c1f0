"""Settings of the quantification service (``CXRMESH_*``)."""

from __future__ import annotations

from pydantic import Field

from cxrmesh.contracts.ports import SERVICE_PORTS
from cxrmesh.runtime.settings import ServiceSettings

PORTS = SERVICE_PORTS["quantification"]


class QuantificationSettings(ServiceSettings):
    service: str = "quantification"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    landmark_model: str = "cxr_landmarks"
    min_member_agreement: float = Field(0.9, ge=0, le=1, description="below: a warning on the study")
