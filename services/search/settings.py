"""Settings of the search service (``CXRMESH_*``): Milvus, the embedder for DICOM queries, defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from cxrmesh.contracts.ports import SERVICE_PORTS
from cxrmesh.services.pseudonym_settings import PseudonymKeySettings

PORTS = SERVICE_PORTS["search"]


class SearchSettings(PseudonymKeySettings):
    service: str = "search"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    milvus_uri: str = Field("", description="Milvus server URI; empty = Milvus Lite in <data_dir>")
    milvus_token: SecretStr = SecretStr("")
    milvus_collection: str = "cxr_cases"
    milvus_index: Literal["FLAT", "IVF_FLAT", "HNSW"] = "FLAT"
    milvus_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = "Bounded"
    embed_model: str = "cxr_embedder"
    default_k: int = Field(10, ge=1, le=1024)

    @property
    def milvus_location(self) -> str:
        return self.milvus_uri or str((self.data_dir / "milvus" / "cases.db").resolve())
