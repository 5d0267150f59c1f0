"""Settings of the search service (``CXRMESH_*``): Milvus, the embedder for DICOM queries, defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from cxrmesh.contracts.ports import SERVICE_PORTS
from cxrmesh.search.tls import MilvusTLS
from cxrmesh.services.pseudonym_settings import PseudonymKeySettings

PORTS = SERVICE_PORTS["search"]


class SearchSettings(PseudonymKeySettings):
    service: str = "search"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    milvus_uri: str = Field("", description="Milvus server URI; empty = Milvus Lite in <data_dir>")
    milvus_token: SecretStr = SecretStr("")
    milvus_tls_ca_file: Path | None = Field(None, description="CA of Milvus' server certificate: TLS on")
    milvus_tls_cert_file: Path | None = Field(None, description="client certificate when Milvus wants mTLS")
    milvus_tls_key_file: Path | None = Field(None, description="its private key")
    milvus_tls_server_name: str = Field("", description="name to check in Milvus' certificate, if not host")
    milvus_collection: str = "cxr_cases"
    milvus_index: Literal["FLAT", "IVF_FLAT", "HNSW"] = Field(
        "FLAT", description="FLAT on Milvus Lite; HNSW (or IVF_FLAT) on a Milvus server"
    )
    milvus_index_params: dict[str, int] | None = Field(
        None,
        description='index build parameters, JSON (HNSW {"M": 16, "efConstruction": 200}); none = defaults',
    )
    milvus_search_params: dict[str, int] | None = Field(
        None, description='search parameters, JSON (HNSW {"ef": 128}, IVF {"nprobe": 16}); none = defaults'
    )
    milvus_consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = "Bounded"
    embed_model: str = "cxr_embedder"
    default_k: int = Field(10, ge=1, le=1024)

    @property
    def milvus_location(self) -> str:
        return self.milvus_uri or str((self.data_dir / "milvus" / "cases.db").resolve())

    def milvus_tls(self) -> MilvusTLS | None:
        """TLS to the Milvus server when a CA is set (mutual when a client certificate is too)."""
        if self.milvus_tls_ca_file is None:
            if self.milvus_tls_cert_file or self.milvus_tls_key_file:
                raise ValueError("a Milvus client certificate needs CXRMESH_MILVUS_TLS_CA_FILE too")
            return None
        return MilvusTLS(
            self.milvus_tls_ca_file,
            self.milvus_tls_cert_file,
            self.milvus_tls_key_file,
            self.milvus_tls_server_name,
        )
