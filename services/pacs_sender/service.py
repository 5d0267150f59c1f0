"""PACS sender: a finished study's results, re-identified, stored back to the hospital's PACS.

On each PrognosisResult (the last stage) it asks the study view for the whole study until the view
calls it complete, makes the findings SR next to quantification's SEG and measurement SR, puts the
original identity back (``assemble``) and C-STOREs them to every destination (``deliver``). Wired on
the shared stage base; it publishes nothing and serves only health.

Errors follow the handler contract of ``cxrmesh.runtime.kafka``: a study the view has not finished
within ``VIEW_DEADLINE_S`` is retried; the study view, the database or the blob store being away is
``DependencyUnavailable`` (waited out); no kept identity, unreadable content, or a destination that
refused or stayed down through its retries is permanent (dead letter, with the reason).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc

from cxrmesh.runtime.blobs import BlobStore, open_blob_store
from cxrmesh.runtime.db.identities import IdentityStore, IdentityVault
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import DependencyUnavailable, Event
from cxrmesh.runtime.tls import open_channel
from cxrmesh.services import batch
from cxrmesh.services.flow import FLOW
from cxrmesh.services.pacs_sender.assemble import study_results
from cxrmesh.services.pacs_sender.deliver import Sender
from cxrmesh.services.pacs_sender.settings import PacsSenderSettings
from cxrmesh.services.stage import StageService
from cxrmesh.v1 import studyview_pb2, studyview_pb2_grpc

log = logging.getLogger(__name__)

VIEW_DEADLINE_S = 60.0  # the view sees the same prognosis event: complete within seconds, normally
VIEW_OUTAGES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class StudyNotReady(Exception):
    """The study view does not (yet) call the study complete: retried, attempts counted."""


def complete_view(
    views: studyview_pb2_grpc.StudyViewServiceStub, study_key: str, deadline_s: float = VIEW_DEADLINE_S
) -> studyview_pb2.StudyView:
    """The study's view once complete (WatchStudy ends there); ``StudyNotReady`` past the deadline."""
    request = studyview_pb2.GetStudyRequest(study_key=study_key)
    try:
        for view in views.WatchStudy(request, timeout=deadline_s):
            if view.complete:
                return view
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        if code in VIEW_OUTAGES:
            raise DependencyUnavailable(f"study view unavailable: {code.name}") from exc
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND):
            raise StudyNotReady(
                f"the study view did not report the study complete within {deadline_s:g} s"
            ) from exc
        raise
    raise StudyNotReady("the study view's stream ended before the study was complete")


def deliver_study(
    view: studyview_pb2.StudyView, blobs: BlobStore, identities: IdentityStore, sender: Sender
) -> None:
    """A complete study's results, re-identified, to every destination; ``DeliveryFailed`` (permanent)
    when any did not take them, after all were tried."""
    sender.send(study_results(view, blobs, identities))


class PacsSenderWorker:
    """PrognosisResult batch -> one delivery per study (None, or why it failed)."""

    def __init__(
        self,
        views: studyview_pb2_grpc.StudyViewServiceStub,
        blobs: BlobStore,
        identities: IdentityStore,
        sender: Sender,
        view_deadline_s: float = VIEW_DEADLINE_S,
    ):
        self.views, self.blobs, self.identities, self.sender = views, blobs, identities, sender
        self.view_deadline_s = view_deadline_s

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        if not self.sender.targets:
            return [None] * len(events)  # nowhere to send (said once at start)
        return batch.handle_outages(self._handle, events)

    def _handle(self, events: Sequence[Event]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for event in events:
            try:
                self.deliver(complete_view(self.views, event.message.study_key, self.view_deadline_s))
                results.append(None)
            except Exception as exc:  # one study's failure is its own result (the handler contract)
                results.append(exc)
        return results

    def deliver(self, view: studyview_pb2.StudyView) -> None:
        deliver_study(view, self.blobs, self.identities, self.sender)


def build(settings: PacsSenderSettings) -> ServiceRuntime:
    service = StageService(settings, FLOW["pacs_sender"])
    sender = Sender.from_settings(settings)
    if sender.targets:
        log.info("PACS destinations: %s", ", ".join(t.name for t in sender.targets))
    else:
        log.warning("no PACS destinations configured (CXRMESH_DESTINATIONS): results are not sent anywhere")
    vault = IdentityVault(settings.deid_secret.get_secret_value().encode())
    identities = IdentityStore(service.database(), vault)
    channel = service.closing(open_channel(settings.studyview_url, settings.tls()))
    worker = PacsSenderWorker(
        studyview_pb2_grpc.StudyViewServiceStub(channel),
        open_blob_store(settings.blob_location),
        identities,
        sender,
    )
    return service.consume(worker)


def main() -> None:
    build(PacsSenderSettings()).run()
