"""The DICOM gateway: the mesh's front door for hospital systems (Storage SCP and DICOMweb STOW-RS).

It keeps nothing: every instance is handed to ingestion's ``Ingest`` over mutual TLS and answered
only after ingestion acknowledged it (the study and its outbox event committed), so an instance a
sender was told is stored survives the gateway's crash. Its gRPC port serves health only; the DICOM
and HTTP listeners are runtime workers, stopped with the service. Health follows ingestion being
reachable: a gateway that cannot hand anything off should not be sent anything.
"""

from __future__ import annotations

from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.services.gateway import outcomes
from cxrmesh.services.gateway.handoff import Handoff
from cxrmesh.services.gateway.scp import StorageScp
from cxrmesh.services.gateway.settings import GatewaySettings
from cxrmesh.services.gateway.stow import StowServer


class GatewayRuntime(ServiceRuntime):
    """The service runtime with its two listeners at hand (their ``ready`` events and bound ports)."""

    def __init__(self, settings: GatewaySettings, scp: StorageScp, stow: StowServer | None):
        super().__init__(settings)
        self.scp = scp
        self.stow = stow


def build(settings: GatewaySettings) -> GatewayRuntime:
    handoff = Handoff(settings)
    try:  # without a token STOW-RS refuses to start, and so does the service (closed by default)
        stow = StowServer(settings, handoff) if settings.stow_port else None
    except Exception:
        handoff.close()
        raise
    runtime = GatewayRuntime(settings, StorageScp(settings, handoff), stow)
    outcomes.start_counting()
    runtime.add_dependency("ingestion", handoff.reachable)
    runtime.add_worker("dicom", runtime.scp.serve)
    if stow is not None:
        runtime.add_worker("stow", stow.serve)
    runtime.on_close(handoff.close)
    return runtime


def main() -> None:
    build(GatewaySettings()).run()
