"""Settings of the embedding service (``CXRMESH_*``)."""

from __future__ import annotations

from cxrmesh.contracts.ports import SERVICE_PORTS
from cxrmesh.runtime.settings import ServiceSettings

PORTS = SERVICE_PORTS["embedding"]


class EmbeddingSettings(ServiceSettings):
    service: str = "embedding"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    embed_model: str = "cxr_embedder"
