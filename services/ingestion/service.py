"""Ingestion: the only service that sees identifiable DICOM.

Ingest (client streaming): size check -> parse/validate/decode (cxrmesh.dicom) -> de-identify
(PS3.15 basic profile, keyed pseudonyms) -> normalise to the model contract -> blobs (fsynced)
-> study + event + sealed original identity committed in the outbox -> reply. The outbox relay
publishes StudyIngested to Kafka until the broker confirms. Refusals are INVALID_ARGUMENT with the
validator's reason.

The original identity (``cxrmesh.dicom.reidentify.capture``: the UIDs and Patient/Study values the
de-identification replaced) leaves this service only sealed, for the PACS sender; it is never logged.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import warnings
from collections.abc import Iterator

import grpc
import pydicom

from cxrmesh.contracts import convert, topics
from cxrmesh.contracts.errors import InvalidArgument, NotFound, Unavailable
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.dicom.read import MAX_DICOM_BYTES
from cxrmesh.dicom.reidentify import capture
from cxrmesh.dicom.rejection import DicomRejected
from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import NPY, array_bytes, open_blob_store
from cxrmesh.runtime.db import open_database
from cxrmesh.runtime.db.identities import IdentityVault
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import EventProducer
from cxrmesh.services import batch
from cxrmesh.services.ingestion.outbox import Outbox
from cxrmesh.services.ingestion.reconcile import Reconciler, reconcile
from cxrmesh.services.ingestion.relay import relay
from cxrmesh.services.ingestion.settings import IngestionSettings
from cxrmesh.services.stage import GrpcApi
from cxrmesh.v1 import common_pb2, events_pb2, ingestion_pb2, ingestion_pb2_grpc

log = logging.getLogger(__name__)


def rejected() -> metrics.Counter:
    return metrics.metric(
        metrics.Counter, "cxrmesh_ingest_rejected_total", "DICOM files refused at ingestion.", ("reason",)
    )


def original_header(raw: bytes) -> pydicom.Dataset:
    """The upload as received, without pixels: the identifiers the de-identification replaced.

    Read again rather than kept from ``process_dicom``, which returns only what may leave this
    service; the bytes have passed its bounded reading already. Warnings are silenced: pydicom's
    name the values it finds odd, and these are identifiers.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class IngestionServicer(ingestion_pb2_grpc.IngestionServiceServicer):
    def __init__(self, settings: IngestionSettings, outbox: Outbox):
        self.settings = settings
        self.outbox = outbox
        self.blobs = open_blob_store(settings.blob_location)
        self.secret = settings.deid_secret.get_secret_value().encode()
        self.vault = IdentityVault(self.secret)  # seals each study's original identity (PACS sender opens)
        self.pixels = settings.pixel_policy()
        metrics.ingest_accepted()  # exported at 0 from the start, before the first upload

    # --------------------------------------------------------------- RPCs
    def Ingest(self, request_iterator: Iterator[ingestion_pb2.IngestChunk], context: grpc.ServicerContext):
        try:  # refusals before the DICOM checks count too: the refused share by reason is over all uploads
            header, raw = self._receive(request_iterator)
            if header.HasField("clinical"):
                convert.validate_clinical(header.clinical)
            convert.validate_labels(header.labels)
        except InvalidArgument as exc:
            rejected().labels(exc.reason).inc()
            raise
        try:
            deid, norm = process_dicom(raw, self.secret, self.pixels)
        except DicomRejected as exc:
            rejected().labels(exc.code).inc()
            raise InvalidArgument(exc.code, exc.reason) from exc
        key = deid.study_key
        reply = ingestion_pb2.IngestReply(
            study_key=key, patient_key=deid.patient_key, metadata=convert.metadata_proto(deid.metadata)
        )
        if self.outbox.has_study(key):
            reply.duplicate = True
            metrics.studies_total().labels("ingest", "duplicate").inc()
            if header.HasField("clinical") or header.labels.ByteSize():
                self._clinical_event(key, header.clinical, header.labels)
            metrics.ingest_accepted().inc()
            return reply
        try:
            dicom_ref = self.blobs.put(dicom_bytes(deid.dataset), "application/dicom")
            image_ref = self.blobs.put(array_bytes(norm.display.astype("float32")), NPY)
        except OSError as exc:
            raise Unavailable("storage_unavailable", f"cannot store the study: {exc.strerror}") from exc
        event = events_pb2.StudyIngested(
            study_key=key,
            patient_key=deid.patient_key,
            metadata=reply.metadata,
            deidentified_dicom=dicom_ref,
            display_image=image_ref,
            labels=header.labels,
            ingested_at=batch.now(),
            deidentified_study_uid=str(deid.dataset.StudyInstanceUID),
            deidentified_sop_uid=str(deid.dataset.SOPInstanceUID),
        )
        if header.HasField("clinical"):
            event.clinical.CopyFrom(header.clinical)
        sealed = self.vault.seal(capture(original_header(raw), deid.dataset))
        new = self.outbox.add_study(
            key,
            deid.patient_key,
            topics.STUDY_INGESTED,
            event.DESCRIPTOR.full_name,
            event.SerializeToString(),
            identity=sealed,
        )
        reply.duplicate = not new
        metrics.studies_total().labels("ingest", "accepted" if new else "duplicate").inc()
        metrics.ingest_accepted().inc()  # with cxrmesh_ingest_rejected_total: the refused share by reason
        log.info("study accepted", extra={"duplicate": not new, "bytes": len(raw)})
        return reply

    def SubmitClinical(self, request: ingestion_pb2.SubmitClinicalRequest, context: grpc.ServicerContext):
        if not request.study_key:
            raise InvalidArgument("missing_study_key", "study_key is required (from the IngestReply)")
        convert.validate_clinical(request.clinical)
        convert.validate_labels(request.labels)
        if not self.outbox.has_study(request.study_key):
            raise NotFound("unknown_study", "no study with this study_key was ingested here")
        self._clinical_event(request.study_key, request.clinical, request.labels)
        return ingestion_pb2.SubmitClinicalReply(study_key=request.study_key)

    # --------------------------------------------------------------- helpers
    def _clinical_event(
        self, key: str, clinical: common_pb2.ClinicalData, labels: common_pb2.KnownLabels
    ) -> None:
        event = events_pb2.ClinicalUpdated(
            study_key=key, clinical=clinical, labels=labels, updated_at=batch.now()
        )
        self.outbox.add_event(
            topics.STUDY_CLINICAL, key, event.DESCRIPTOR.full_name, event.SerializeToString()
        )

    def _receive(
        self, chunks: Iterator[ingestion_pb2.IngestChunk]
    ) -> tuple[ingestion_pb2.IngestHeader, bytes]:
        header = ingestion_pb2.IngestHeader()
        parts: list[bytes] = []
        size = 0
        for i, chunk in enumerate(chunks):
            if chunk.HasField("header"):
                if i != 0:
                    raise InvalidArgument(
                        "header_not_first", "send the IngestHeader as the first message only"
                    )
                header = chunk.header
                if header.total_bytes > MAX_DICOM_BYTES:
                    raise InvalidArgument(
                        "file_too_large",
                        f"file of {header.total_bytes} bytes exceeds the limit of {MAX_DICOM_BYTES} bytes",
                    )
                continue
            size += len(chunk.data)
            if size > MAX_DICOM_BYTES:
                raise InvalidArgument("file_too_large", f"file exceeds the limit of {MAX_DICOM_BYTES} bytes")
            parts.append(chunk.data)
        if not size:
            raise InvalidArgument("empty_upload", "no DICOM bytes received; stream the file in data chunks")
        return header, b"".join(parts)


def build(settings: IngestionSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings)
    db = open_database(settings)
    outbox = Outbox(db)
    servicer = IngestionServicer(settings, outbox)
    producer = EventProducer(
        dataclasses.replace(settings.kafka_config(""), client_id=f"{settings.service}-outbox")
    )
    api = GrpcApi.of(ingestion_pb2, ingestion_pb2_grpc, "IngestionService")
    runtime.add_service(api.service.full_name, api.add, servicer)
    runtime.add_dependency("storage", lambda: servicer.blobs.ping() and outbox.ping())
    runtime.add_dependency("kafka", producer.connected)
    timeout_s = settings.kafka_request_timeout_ms / 1000
    runtime.add_worker(
        "outbox", lambda stop: relay(outbox, producer, stop, settings.outbox_interval_s, timeout_s)
    )
    reconciler = Reconciler(
        db,
        after_s=settings.reconcile_after_s,
        max_redrives=settings.reconcile_max_redrives,
        batch=settings.reconcile_batch,
    )
    runtime.add_worker("reconciler", lambda stop: reconcile(reconciler, stop, settings.reconcile_interval_s))
    runtime.on_close(db.close)
    runtime.on_close(producer.close)
    return runtime


def main() -> None:
    build(IngestionSettings()).run()
