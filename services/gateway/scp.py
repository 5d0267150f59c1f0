"""The Storage SCP: modalities and PACS send chest radiographs here with C-STORE (pynetdicom).

Closed by default: an association is accepted only from a calling AE title in ``allowed_senders``
(none when the list is empty) addressed to the gateway's own AE title, and only for the SOP classes
and encodings ingestion takes (``contexts``). With ``dicom_tls`` the port is DICOM TLS and a sender
also needs a certificate signed by the mesh's CA.

Each instance is handed to ingestion as sent (its encoded bytes with a file meta header: nothing is
decoded here) and answered Success only once ingestion committed it; a refused or unstored instance
gets a failure status with the reason in Error Comment, and the association goes on, so one bad
image does not cost a sender the rest of its study.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from cxrmesh.services.gateway import outcomes
from cxrmesh.services.gateway.contexts import storage_classes, transfer_syntaxes
from cxrmesh.services.gateway.handoff import Handoff, Outcome, Refused, Unavailable
from cxrmesh.services.gateway.server_tls import server_context
from cxrmesh.services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-permanent, by the service user, for a reason of PS3.8 Table 9-21
REJECTED_PERMANENT: Final = 0x01
SERVICE_USER: Final = 0x01
CALLING_AE_NOT_RECOGNIZED: Final = 0x03
CALLED_AE_NOT_RECOGNIZED: Final = 0x07

# pynetdicom logs each request at INFO; the SCP logs its own lines, which carry no UIDs
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class StorageScp:
    """One AE serving C-ECHO and C-STORE until the service stops (``serve`` is a runtime worker)."""

    def __init__(self, settings: GatewaySettings, handoff: Handoff):
        self.settings = settings
        self.handoff = handoff
        self.allowed = frozenset(title.strip() for title in settings.allowed_senders)
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = settings.max_associations
        syntaxes = transfer_syntaxes()
        for sop_class in storage_classes(settings.accept_secondary_capture):
            self.ae.add_supported_context(sop_class, syntaxes)
        self.ae.add_supported_context(Verification)
        self.port = 0
        self.ready = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def serve(self, stop: threading.Event) -> None:
        """Listen until ``stop``, then let associations in flight finish (``grace_s``) before closing."""
        tls = self.settings.tls()
        if self.settings.dicom_tls and tls is None:
            raise ValueError("dicom_tls needs the service's TLS files; it cannot run with insecure=true")
        server = self.ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            ssl_context=server_context(tls, require_client_cert=True) if self.settings.dicom_tls else None,
            evt_handlers=[(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store)],
        )
        assert isinstance(server, ThreadedAssociationServer)
        self.port = int(server.server_address[1])
        log.info(
            "storage SCP listening", extra={"dicom_port": self.port, "dicom_tls": self.settings.dicom_tls}
        )
        self.ready.set()
        try:
            stop.wait()
        finally:
            server.shutdown()  # no new associations
            self._drain(server)

    def _drain(self, server: ThreadedAssociationServer) -> None:
        deadline = time.monotonic() + self.settings.grace_s
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            assoc.abort()

    # ------------------------------------------------------------------ handlers
    def _on_requested(self, event: Event) -> None:
        """Refuse an association from an unknown sender, or for another AE, before any negotiation."""
        request = event.assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        if calling not in self.allowed:
            self._reject(event, CALLING_AE_NOT_RECOGNIZED, calling, "calling AE title not recognized")
        elif called != self.settings.ae_title:
            self._reject(event, CALLED_AE_NOT_RECOGNIZED, calling, "called AE title not recognized")

    @staticmethod
    def _reject(event: Event, diagnostic: int, calling: str, why: str) -> None:
        log.warning("association rejected", extra={"sender": calling, "why": why})
        event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, diagnostic)
        event.assoc.kill()  # as pynetdicom's own rejections do

    def _on_store(self, event: Event) -> Dataset:
        """Hand the instance to ingestion and answer with its outcome; never raises."""
        sender = str(event.assoc.requestor.ae_title).strip()
        outcome: Outcome
        try:
            outcome = self.handoff.send(event.encoded_dataset(), f"dicom:{sender}")
        except Exception as exc:  # the association must outlive any one instance
            log.error("C-STORE handling failed", extra={"sender": sender, "error": type(exc).__name__})
            outcome = Unavailable("gateway error; resend later")
        outcomes.record("dimse", sender, outcome)
        return response(outcome)


def response(outcome: Outcome) -> Dataset:
    """The C-STORE response's status elements: Status, and Error Comment on a failure."""
    rsp = Dataset()
    rsp.Status = outcomes.status(outcome)
    if isinstance(outcome, Refused | Unavailable):
        rsp.ErrorComment = outcomes.comment(outcome)
    return rsp
