"""Settings of the segmentation service (``CXRMESH_*``)."""

from __future__ import annotations

from cxrmesh.contracts.ports import SERVICE_PORTS
from cxrmesh.runtime.settings import ServiceSettings

PORTS = SERVICE_PORTS["segmentation"]


class SegmentationSettings(ServiceSettings):
    service: str = "segmentation"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    seg_model: str = "lung_seg_ensemble"
