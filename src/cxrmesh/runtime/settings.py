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

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cxrmesh.contracts.ports import ANY_SERVICE, KAFKA, TRITON_GRPC, loopback
from cxrmesh.runtime.kafka import KafkaConfig, KafkaSecurity
from cxrmesh.runtime.tls import TlsFiles, resolve_tls
from cxrmesh.runtime.tracing import TraceExport


class ServiceSettings(BaseSettings):
    """Knobs every service has. Secrets are ``SecretStr`` so they never show up in logs or reprs."""

    # hide_input_in_errors: a rejected value (a short key, a malformed password) is never echoed in an error
    model_config = SettingsConfigDict(
        env_prefix="CXRMESH_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

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
    # durable state (outbox, results, joins, study views): cxrmesh.runtime.db; one database for the mesh
    database_url: str = Field(
        "",
        description="postgresql://user@host:port/db?sslmode=verify-full&sslrootcert=ca.pem (replicas,"
        " production) or sqlite:///path; default sqlite:///<data_dir>/state.sqlite (one machine)",
    )
    database_password: SecretStr = Field(SecretStr(""), description="PostgreSQL password (from a Secret)")
    database_pool_size: int = Field(4, ge=1, le=64, description="connections each replica keeps open")
    kafka_bootstrap: str = loopback(KAFKA)
    kafka_session_timeout_ms: int = 10000
    kafka_heartbeat_ms: int = 3000
    kafka_rejoin_timeout_ms: int = Field(
        60000, description="a consumer out of its group this long is replaced by a fresh member"
    )
    kafka_max_batch: int = Field(16, ge=1)
    kafka_max_attempts: int = Field(5, ge=1)
    kafka_unavailable_max_s: float = Field(
        900.0, ge=0, description="a dependency outage is waited out this long before attempts count"
    )
    kafka_request_timeout_ms: int = Field(
        30000, ge=1000, description="also bounds a send while Kafka is away"
    )
    triton_url: str = loopback(TRITON_GRPC)
    triton_timeout_s: float = Field(10.0, gt=0)
    grace_s: float = Field(10.0, ge=0, description="SIGTERM: finish in-flight work for this long")
    health_interval_s: float = Field(2.0, gt=0)
    # transport security (S1): mutual TLS on every gRPC port and client; plaintext only when asked for
    tls_cert_file: Path | None = Field(None, description="this service's certificate (chain), PEM")
    tls_key_file: Path | None = Field(None, description="its private key, PEM")
    tls_ca_file: Path | None = Field(None, description="the CA that signs every peer of the mesh, PEM")
    insecure: bool = Field(False, description="serve and call plaintext gRPC (debugging only)")
    # traces (cxrmesh.runtime.tracing): always made (trace ids in logs), exported only to an endpoint
    otlp_endpoint: str = Field(
        "", description="OTLP/gRPC collector as host:port; empty = spans are not exported"
    )
    otlp_insecure: bool = Field(False, description="plaintext to the collector (a local sidecar, debugging)")
    otlp_ca_file: Path | None = Field(
        None, description="CA of the collector's certificate, PEM; default the mesh CA, else the system's"
    )
    # authorization and audit (S2): cxrmesh.runtime.authz, cxrmesh.runtime.audit
    auth_mode: Literal["enforce", "off"] = Field(
        "enforce", description="off = every caller may call every method (debugging only; logged loudly)"
    )
    auth_jwt_issuer: str = Field("", description="bearer tokens: the required `iss`; empty = none accepted")
    auth_jwt_audience: str = Field("", description="bearer tokens: the required `aud`")
    auth_jwt_key_file: Path | None = Field(None, description="bearer tokens: the issuer's public key, PEM")
    auth_jwt_jwks_url: str = Field("", description="bearer tokens: the issuer's JWKS (instead of a key file)")
    auth_jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    auth_jwt_standalone: bool = Field(
        False, description="a token alone (no client certificate) identifies a caller; default: adds roles"
    )
    audit_to_kafka: bool = Field(True, description="also send audit records to Kafka (always logged)")
    audit_log_file: Path | None = Field(
        None,
        description="the audit log (JSON lines, kept apart from the service log); default <data_dir>/audit/",
    )
    # Kafka client credentials (S5): cxrmesh.runtime.kafka.security; secrets come from a Secret / env
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = Field(None, description="CA of the broker's listener, PEM")
    kafka_ssl_certfile: Path | None = Field(None, description="TLS client certificate for the broker, PEM")
    kafka_ssl_keyfile: Path | None = Field(None, description="its private key, PEM")

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

    def tls(self) -> TlsFiles | None:
        """The TLS files (None only with ``insecure``); raises ``TlsConfigError`` when they are missing."""
        return resolve_tls(self.tls_cert_file, self.tls_key_file, self.tls_ca_file, self.insecure)

    def trace_export(self) -> TraceExport:
        """Where this service's spans go: TLS verified by ``otlp_ca_file`` or the mesh CA, presenting
        this service's certificate; ``tracing.setup(settings.service, settings.trace_export())``."""
        return TraceExport(
            endpoint=self.otlp_endpoint.strip(),
            insecure=self.otlp_insecure,
            ca=self.otlp_ca_file or self.tls_ca_file,
            cert=self.tls_cert_file,
            key=self.tls_key_file,
        )

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
            unavailable_max_s=self.kafka_unavailable_max_s,
            session_timeout_ms=self.kafka_session_timeout_ms,
            heartbeat_interval_ms=self.kafka_heartbeat_ms,
            rejoin_timeout_ms=self.kafka_rejoin_timeout_ms,
            request_timeout_ms=self.kafka_request_timeout_ms,
            delivery_timeout_ms=max(120000, self.kafka_request_timeout_ms * 2),
            security=KafkaSecurity(
                protocol=self.kafka_security_protocol,
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_username=self.kafka_sasl_username,
                sasl_password=self.kafka_sasl_password,
                ssl_cafile=self.kafka_ssl_cafile,
                ssl_certfile=self.kafka_ssl_certfile,
                ssl_keyfile=self.kafka_ssl_keyfile,
            ),
        )
