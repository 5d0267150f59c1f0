"""Service settings from the environment (``CXRMESH_*``) and an optional TOML file.

One settings class per service, all deriving from ``ServiceSettings`` so the common knobs
(ports, broker, Triton, blob store, logging) have the same names everywhere. Precedence:
constructor arguments > environment > TOML file named by ``CXRMESH_CONFIG_FILE`` > defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ServiceSettings(BaseSettings):
    """Knobs every service has. Secrets are ``SecretStr`` so they never show up in logs or reprs."""

    model_config = SettingsConfigDict(env_prefix="CXRMESH_", extra="ignore", frozen=True)

    service: str = "cxrmesh"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9460, ge=0, le=65535, description="Prometheus /metrics; 0 = any free port")
    max_message_mb: int = Field(128, ge=1, description="largest gRPC message (DICOM uploads stream)")
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    log_file: Path | None = None
    data_dir: Path = Path("data/mesh")
    blob_uri: str = Field("", description="file:///path or s3://bucket/prefix; default <data_dir>/blobs")
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_session_timeout_ms: int = 10000
    kafka_heartbeat_ms: int = 3000
    kafka_max_batch: int = Field(16, ge=1)
    kafka_max_attempts: int = Field(5, ge=1)
    kafka_request_timeout_ms: int = Field(
        30000, ge=1000, description="also bounds a send while Kafka is away"
    )
    triton_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = Field(10.0, gt=0)
    grace_s: float = Field(10.0, ge=0, description="SIGTERM: finish in-flight work for this long")
    health_interval_s: float = Field(2.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, file_secret_settings]
        config_file = os.environ.get("CXRMESH_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def blob_location(self) -> str:
        return self.blob_uri or (self.data_dir / "blobs").resolve().as_uri()


class PseudonymKeySettings(ServiceSettings):
    """Services that make pseudonyms (ingestion; search for DICOM queries) share this key."""

    # required, no default: a guessable key would make the pseudonyms reversible by lookup
    deid_secret: SecretStr = Field(description="HMAC key of the pseudonyms; rotating it makes new pseudonyms")

    @field_validator("deid_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        """Refuse a short key at start-up rather than at the first study."""
        from cxrmesh.dicom.deid import MIN_SECRET_BYTES

        if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)")
        return value


class IngestionSettings(PseudonymKeySettings):
    service: str = "ingestion"
    grpc_port: int = 50051
    metrics_port: int = 9461
    outbox_interval_s: float = Field(0.5, gt=0)


class EmbeddingSettings(ServiceSettings):
    service: str = "embedding"
    grpc_port: int = 50052
    metrics_port: int = 9462
    embed_model: str = "cxr_embedder"


class SearchSettings(PseudonymKeySettings):
    service: str = "search"
    grpc_port: int = 50053
    metrics_port: int = 9463
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


class SegmentationSettings(ServiceSettings):
    service: str = "segmentation"
    grpc_port: int = 50054
    metrics_port: int = 9464
    seg_model: str = "lung_seg_ensemble"


class QuantificationSettings(ServiceSettings):
    service: str = "quantification"
    grpc_port: int = 50055
    metrics_port: int = 9465
    landmark_model: str = "cxr_landmarks"
    min_member_agreement: float = Field(0.9, ge=0, le=1, description="below: a warning on the study")


class PrognosisSettings(ServiceSettings):
    service: str = "prognosis"
    grpc_port: int = 50056
    metrics_port: int = 9466
    prognosis_model: str = "prognosis_head"
    search_url: str = Field("127.0.0.1:50053", description="search service, for outcomes of prior cases")
    neighbours: int = Field(10, ge=1, le=100)


class StudyViewSettings(ServiceSettings):
    service: str = "studyview"
    grpc_port: int = 50057
    metrics_port: int = 9467
    search_url: str = "127.0.0.1:50053"
    default_similar_k: int = Field(5, ge=1, le=100)
