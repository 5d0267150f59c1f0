"""The settings every service shares, from the environment (``CXRMESH_*``) and an optional TOML file.

Each service's own settings class derives from ``ServiceSettings`` (``services/<name>/settings.py``;
``cxrmesh.services.settings.SETTINGS`` lists them), so the common knobs (ports, broker, Triton, blob
store, logging) have the same names everywhere. Precedence: constructor arguments > environment >
TOML file named by ``CXRMESH_CONFIG_FILE`` > defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cxrmesh.contracts.ports import ANY_SERVICE, KAFKA, TRITON_GRPC, loopback
from cxrmesh.runtime.kafka import KafkaConfig


class ServiceSettings(BaseSettings):
    """Knobs every service has. Secrets are ``SecretStr`` so they never show up in logs or reprs."""

    model_config = SettingsConfigDict(env_prefix="CXRMESH_", extra="ignore", frozen=True)

    service: str = "cxrmesh"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(ANY_SERVICE.grpc, ge=0, le=65535)
    metrics_port: int = Field(
        ANY_SERVICE.metrics, ge=0, le=65535, description="Prometheus /metrics; 0 = any free port"
    )
    max_message_mb: int = Field(128, ge=1, description="largest gRPC message (DICOM uploads stream)")
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    log_file: Path | None = None
    data_dir: Path = Path("data/mesh")
    blob_uri: str = Field("", description="file:///path or s3://bucket/prefix; default <data_dir>/blobs")
    kafka_bootstrap: str = loopback(KAFKA)
    kafka_session_timeout_ms: int = 10000
    kafka_heartbeat_ms: int = 3000
    kafka_max_batch: int = Field(16, ge=1)
    kafka_max_attempts: int = Field(5, ge=1)
    kafka_request_timeout_ms: int = Field(
        30000, ge=1000, description="also bounds a send while Kafka is away"
    )
    triton_url: str = loopback(TRITON_GRPC)
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

    def kafka_config(self, group: str, max_batch: int | None = None) -> KafkaConfig:
        """This service's Kafka client config; ``group`` is its consumer group ("" for a producer only)."""
        return KafkaConfig(
            bootstrap=self.kafka_bootstrap,
            client_id=self.service,
            group_id=group,
            max_batch=min(self.kafka_max_batch, max_batch or self.kafka_max_batch),
            max_attempts=self.kafka_max_attempts,
            session_timeout_ms=self.kafka_session_timeout_ms,
            heartbeat_interval_ms=self.kafka_heartbeat_ms,
            request_timeout_ms=self.kafka_request_timeout_ms,
            delivery_timeout_ms=max(120000, self.kafka_request_timeout_ms * 2),
        )
