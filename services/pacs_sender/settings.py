"""Settings of the PACS sender (``CXRMESH_*``): where finished results are stored back.

When a study is complete the sender stores its DICOM SEG and SR (re-identified so that they file
under the original study) to every destination by C-STORE, with retries, then a dead letter.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from cxrmesh.contracts.ports import SERVICE_PORTS, loopback
from cxrmesh.services.pseudonym_settings import PseudonymKeySettings

PORTS = SERVICE_PORTS["pacs_sender"]


class Destination(BaseModel):
    """One Storage SCP that receives the results (a PACS, a viewer, a router)."""

    name: str = Field(description="short name, the metric label (never an address or an identifier)")
    ae_title: str = Field(description="the destination's AE title (the Called AE)")
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = Field(False, description="DICOM TLS to this destination, verified against tls_ca_file")


class PacsSenderSettings(PseudonymKeySettings):
    service: str = "pacs_sender"
    grpc_port: int = PORTS.grpc
    metrics_port: int = PORTS.metrics
    # the de-identification key opens the re-identification table (ingestion writes it, sealed)
    burned_in_ocr: bool = False  # it admits no DICOM: no OCR needed

    ae_title: str = Field("CXRMESH", description="the AE title the sender calls from (the Calling AE)")
    destinations: list[Destination] = Field(
        default_factory=list,
        description='JSON list: [{"name","ae_title","host","port"}]; empty: send nothing',
    )
    studyview_url: str = Field(
        loopback(SERVICE_PORTS["studyview"].grpc), description="study view, for the whole result of a study"
    )
    send_attempts: int = Field(
        5, ge=1, le=50, description="C-STORE attempts per destination before dead letter"
    )
    send_backoff_s: float = Field(1.0, gt=0, description="first wait between attempts (doubles, jittered)")
    send_timeout_s: float = Field(30, gt=0, description="network timeout of one association")

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination]) -> list[Destination]:
        names = [d.name for d in value]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique (they label the metrics)")
        return value
