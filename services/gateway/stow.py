"""DICOMweb STOW-RS (PS3.18 10.5): ``POST /studies`` and ``POST /studies/{study}`` with a multipart body.

Closed by default: every request needs ``Authorization: Bearer <stow_token>`` (compared in constant
time), and without a token STOW-RS does not start at all. It is HTTPS with the service's certificate
whenever the service has TLS files. Each ``application/dicom`` part goes the DIMSE way (``Handoff``),
and the reply is the Store Instances Response: stored instances in ReferencedSOPSequence, the others in
FailedSOPSequence with the C-STORE status as FailureReason (0xA700: resend later) and the reason.

aiohttp serves it on its own event loop in its own thread (a runtime worker); the blocking Ingest calls
run on a small thread pool, so one slow upload does not hold the others.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message
from typing import Final

from aiohttp import BodyPartReader, hdrs, web
from pydicom.dataset import Dataset

from cxrmesh.dicom.read import MAX_DICOM_BYTES, read_dicom
from cxrmesh.dicom.rejection import DicomRejected
from cxrmesh.services.gateway import outcomes
from cxrmesh.services.gateway.contexts import storage_classes
from cxrmesh.services.gateway.handoff import Accepted, Handoff, Outcome, Refused, Unavailable
from cxrmesh.services.gateway.server_tls import server_context
from cxrmesh.services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

DICOM_JSON: Final = "application/dicom+json"
CHALLENGE: Final = 'Bearer realm="cxrmesh-stow"'
READ_CHUNK: Final = 1 << 20
RETRY_AFTER_S: Final = "30"


class StowConfigError(ValueError):
    """STOW-RS is on (stow_port) but has no bearer token: it would take uploads from anybody."""


@dataclass(frozen=True)
class Uids:
    sop_class: str
    sop_instance: str
    study: str


@dataclass(frozen=True)
class PartResult:
    uids: Uids | None  # None when the part could not be parsed
    outcome: Outcome


def _uids(data: bytes) -> Uids | None:
    """The part's own UIDs for the reply (parsed with ingestion's bounded reader; None if it refuses)."""
    try:
        ds = read_dicom(data)
    except DicomRejected:
        return None
    return Uids(
        str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")), str(ds.get("StudyInstanceUID", ""))
    )


def _is_dicom_multipart(content_type: str) -> bool:
    """``multipart/related; type="application/dicom"`` (parameters parsed as MIME does)."""
    header = Message()
    header[hdrs.CONTENT_TYPE] = content_type
    media_type = str(header.get_param("type") or "").lower()
    return header.get_content_type() == "multipart/related" and media_type == "application/dicom"


class StowServer:
    """The STOW-RS endpoint; ``serve`` is a runtime worker."""

    def __init__(self, settings: GatewaySettings, handoff: Handoff):
        token = settings.stow_token.get_secret_value()
        if not token:
            raise StowConfigError(
                "STOW-RS needs a bearer token: set CXRMESH_STOW_TOKEN, or CXRMESH_STOW_PORT=0 to turn it off"
            )
        self.settings = settings
        self.handoff = handoff
        self.token = token.encode()
        self.accepted = frozenset(storage_classes(settings.accept_secondary_capture))
        self.executor = ThreadPoolExecutor(max_workers=settings.max_associations, thread_name_prefix="stow")
        self.port = 0
        self.ready = threading.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/studies", self.store)
        app.router.add_post("/studies/{study}", self.store)
        return app

    # ------------------------------------------------------------------ lifecycle
    def serve(self, stop: threading.Event) -> None:
        asyncio.run(self._serve(stop))

    async def _serve(self, stop: threading.Event) -> None:
        tls = self.settings.tls()
        # no access log: the request path of /studies/{study} is a Study Instance UID
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=self.settings.grace_s)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.settings.stow_host,
            self.settings.stow_port,
            ssl_context=server_context(tls, require_client_cert=False) if tls is not None else None,
        )
        try:
            await site.start()
            self.port = int(runner.addresses[0][1])
            if tls is None:
                log.warning("STOW-RS serves plain HTTP: debugging only", extra={"stow_port": self.port})
            log.info("STOW-RS listening", extra={"stow_port": self.port, "https": tls is not None})
            self.ready.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        finally:
            await runner.cleanup()  # lets requests in flight finish, for grace_s
            self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the request
    def _unauthorized(self, request: web.Request) -> web.Response | None:
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return None
        challenge = CHALLENGE if not given else f'{CHALLENGE}, error="invalid_token"'
        log.warning("STOW-RS request refused: no valid bearer token", extra={"sender": request.remote})
        return web.Response(
            status=401, text="a valid bearer token is required\n", headers={hdrs.WWW_AUTHENTICATE: challenge}
        )

    async def store(self, request: web.Request) -> web.StreamResponse:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        if not _is_dicom_multipart(request.headers.get(hdrs.CONTENT_TYPE, "")):
            return web.Response(status=415, text='send multipart/related; type="application/dicom"\n')
        study = request.match_info.get("study")
        loop = asyncio.get_running_loop()
        results: list[PartResult] = []
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    return web.Response(status=400, text="nested multipart bodies are not supported\n")
                data = await _read_part(part)
                kind = part.headers.get(hdrs.CONTENT_TYPE, "application/dicom")
                result = await loop.run_in_executor(self.executor, self._store_part, data, kind, study)
                outcomes.record("stow", str(request.remote), result.outcome)
                results.append(result)
        except ValueError:  # aiohttp's own refusals of a malformed multipart body
            return web.Response(status=400, text="malformed multipart body\n")
        if not results:
            return web.Response(status=400, text="no application/dicom part in the request\n")
        return reply(results)

    def _store_part(self, data: bytes, kind: str, study: str | None) -> PartResult:
        """One part: the gateway's own checks (media type, SOP class, study of the URL), then ingestion."""
        if kind.split(";")[0].strip().lower() != "application/dicom":
            return PartResult(None, Refused("not_application_dicom", "each part must be application/dicom"))
        uids = _uids(data)
        if uids is not None and uids.sop_class not in self.accepted:
            return PartResult(uids, Refused(outcomes.SOP_CLASS_REFUSED, "only CR and DX images are accepted"))
        if uids is not None and study is not None and uids.study != study:
            return PartResult(uids, Refused("study_mismatch", "the instance is not of the study in the URL"))
        try:
            return PartResult(uids, self.handoff.send(data, "dicomweb:stow"))
        except Exception as exc:  # an upload must get its per-instance answer, whatever happened
            log.error("STOW-RS part handling failed", extra={"error": type(exc).__name__})
            return PartResult(uids, Unavailable("gateway error; resend later"))


async def _read_part(part: BodyPartReader) -> bytes:
    """The part's bytes, refusing the request (413) as soon as one part passes the DICOM size limit."""
    buf = bytearray()
    while chunk := await part.read_chunk(READ_CHUNK):
        buf += chunk
        if len(buf) > MAX_DICOM_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_DICOM_BYTES, actual_size=len(buf))
    return bytes(buf)


def _item(result: PartResult) -> Dataset:
    item = Dataset()
    if result.uids is not None:
        item.ReferencedSOPClassUID = result.uids.sop_class
        item.ReferencedSOPInstanceUID = result.uids.sop_instance
    if not isinstance(result.outcome, Accepted):
        item.FailureReason = outcomes.status(result.outcome)
        item.ErrorComment = outcomes.comment(result.outcome)
    return item


def http_status(results: list[PartResult]) -> int:
    """200 all stored, 202 some failed, 503 none stored and the mesh was unavailable, 409 all refused."""
    stored = sum(isinstance(r.outcome, Accepted) for r in results)
    if stored == len(results):
        return 200
    if stored:
        return 202
    return 503 if any(isinstance(r.outcome, Unavailable) for r in results) else 409


def reply(results: list[PartResult]) -> web.Response:
    """The Store Instances Response (PS3.18 10.5.3) as DICOM JSON."""
    body = Dataset()
    stored = [_item(r) for r in results if isinstance(r.outcome, Accepted)]
    failed = [_item(r) for r in results if not isinstance(r.outcome, Accepted)]
    if stored:
        body.ReferencedSOPSequence = stored
    if failed:
        body.FailedSOPSequence = failed
    status = http_status(results)
    headers = {hdrs.RETRY_AFTER: RETRY_AFTER_S} if status == 503 else {}
    return web.Response(
        status=status, body=json.dumps(body.to_json_dict()).encode(), content_type=DICOM_JSON, headers=headers
    )
