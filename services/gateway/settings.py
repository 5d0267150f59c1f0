"""Settings of the DICOM gateway (``CXRMESH_*``): who may send, on which ports, and where studies go.

The gateway is the mesh's DICOM front door (Storage SCP and DICOMweb STOW-RS). It keeps nothing
itself: each instance is handed to ingestion's ``Ingest`` (same validation, de-identification and
outbox) and answered only after ingestion acknowledged it.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from cxrmesh.contracts.ports import DICOM, LOOPBACK, SERVICE_PORTS, STOW, loopback
from cxrmesh.runtime.settings import ServiceSettings

PORTS = SERVICE_PORTS["gateway"]


class GatewaySettings(ServiceSettings):
    service: str = "gateway"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics

    ae_title: str = Field("CXRMESH", description="the gateway's own AE title (the Called AE senders use)")
    dicom_host: str = Field(LOOPBACK, description="address the Storage SCP binds (0.0.0.0 in a pod)")
    dicom_port: int = Field(DICOM, ge=1, le=65535, description="the Storage SCP's port")
    # closed by default: an empty list refuses every association
    allowed_senders: list[str] = Field(
        default_factory=list, description="calling AE titles allowed to store (empty: nobody)"
    )
    accept_secondary_capture: bool = Field(
        False, description="also accept Secondary Capture (digitised film); CR and DX are always accepted"
    )
    dicom_tls: bool = Field(
        False, description="DICOM TLS on the SCP port, with the service's certificate; senders need the CA"
    )
    max_associations: int = Field(10, ge=1, le=200, description="concurrent associations (each a sender)")
    stow_host: str = Field(LOOPBACK, description="address the STOW-RS endpoint binds")
    stow_port: int = Field(STOW, ge=0, le=65535, description="DICOMweb STOW-RS port; 0 turns STOW-RS off")
    # required whenever STOW-RS is on: no anonymous HTTP uploads
    stow_token: SecretStr = Field(SecretStr(""), description="bearer token STOW-RS callers must send")
    ingestion_url: str = Field(
        loopback(SERVICE_PORTS["ingestion"].grpc), description="ingestion's gRPC address (the Ingest call)"
    )
    ingest_timeout_s: float = Field(60, gt=0, description="deadline of one Ingest call")

    @field_validator("ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        """AE titles are 1-16 characters of the default character repertoire, no backslash."""
        value = value.strip()
        if not 1 <= len(value) <= 16 or "\\" in value or not value.isascii():
            raise ValueError("an AE title is 1 to 16 ASCII characters without backslash")
        return value
