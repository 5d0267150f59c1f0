"""The documented default ports of the mesh, stated once.

The settings defaults of every service and ``cxrmesh up --ports fixed`` read this table; docs/mesh.md
lists it. The k8s manifests write the same numbers as literals (YAML cannot import Python) and
tests/unit/test_k8s.py checks them against the settings.
"""

from __future__ import annotations

from typing import NamedTuple

LOOPBACK = "127.0.0.1"


class ServicePorts(NamedTuple):
    grpc: int
    metrics: int  # Prometheus /metrics


# in the mesh's start order
SERVICE_PORTS: dict[str, ServicePorts] = {
    "ingestion": ServicePorts(50051, 9461),
    "embedding": ServicePorts(50052, 9462),
    "search": ServicePorts(50053, 9463),
    "segmentation": ServicePorts(50054, 9464),
    "quantification": ServicePorts(50055, 9465),
    "prognosis": ServicePorts(50056, 9466),
    "studyview": ServicePorts(50057, 9467),
    "gateway": ServicePorts(50058, 9468),  # the DICOM front door (its DICOM and STOW-RS ports below)
    "pacs_sender": ServicePorts(50059, 9469),  # results back to the PACS (Storage SCU)
}
ANY_SERVICE = ServicePorts(50051, 9460)  # the common settings' defaults, before a service names itself

KAFKA = 9092
MILVUS = 19530
TRITON_HTTP = 8000
TRITON_GRPC = 8001
TRITON_METRICS = 8002
DICOM = 11112  # the gateway's Storage SCP (port 104 needs root; 11112 is DICOM's usual alternative)
STOW = 8090  # the gateway's DICOMweb STOW-RS (HTTP POST .../studies)


def loopback(port: int) -> str:
    """``host:port`` on this machine."""
    return f"{LOOPBACK}:{port}"
