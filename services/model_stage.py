"""The image-model stages (embedding, segmentation, quantification): one batch loop, one wiring.

Per batch: load each study's inputs from the blob store, one Triton request for the batch, then per
study build the result message, keep it in the stage's ``ResultTable`` (its Get RPC answers from
there) and publish it on the stage's declared topic. A subclass says only what is its own: what
to load, how to infer, which result to build.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message

from cxrmesh.contracts.errors import InvalidArgument, NotFound
from cxrmesh.runtime.blobs import BlobStore, open_blob_store
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Event, EventProducer, PermanentError
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tables import ResultTable
from cxrmesh.runtime.triton import TritonClient
from cxrmesh.services import batch
from cxrmesh.services.flow import Stage
from cxrmesh.services.stage import GrpcApi, StageService
from cxrmesh.v1 import common_pb2

T = TypeVar("T")
M = TypeVar("M", bound=Message)


@dataclass
class StageParts:
    """What a model stage's worker and servicer are built from."""

    settings: ServiceSettings
    stage: Stage
    model: str
    table: ResultTable
    triton: TritonClient
    producer: EventProducer
    blobs: BlobStore


class ModelStage(ABC, Generic[T]):
    """The Kafka handler of a model stage: a batch of events in, one result (None or an error) per event."""

    def __init__(self, parts: StageParts):
        self.parts = parts

    def load(self, event: Event) -> T:
        """One study's model inputs (default: its display image); raise PermanentError for bad content."""
        return batch.load_display(self.parts.blobs, event.message.display_image)  # type: ignore[return-value]

    @abstractmethod
    def infer(self, items: Sequence[T]) -> Any:
        """The batch's Triton outputs."""

    @abstractmethod
    def result(self, src: Any, item: T, out: Any, j: int, version: common_pb2.ModelVersion) -> Message:
        """The result message of study ``j`` of the batch; PermanentError fails that study only."""

    def __call__(self, events: Sequence[Event]) -> batch.Results:
        """One result per event; Triton, storage, database or broker outages come back as
        ``DependencyUnavailable`` (the consumer waits for them without spending attempts)."""
        return batch.handle_outages(self._handle, events)

    def _handle(self, events: Sequence[Event]) -> batch.Results:
        p = self.parts
        results, ok, items = batch.load_all(events, self.load)
        if not ok:
            return results
        out = batch.run_model(results, ok, lambda: self.infer(items))
        if out is None:
            return results
        version = common_pb2.ModelVersion(name=p.model, version=p.triton.model_version(p.model))
        (topic,) = p.stage.produces
        pending = []
        for j, i in enumerate(ok):
            src = events[i].message
            try:
                msg = self.result(src, items[j], out, j, version)
            except PermanentError as exc:
                results[i] = exc
                continue
            p.table.put(src.study_key, msg)
            pending.append((i, src.ingested_at, p.producer.publish(topic, src.study_key, msg)))
        return batch.confirm(results, pending, p.stage.step)


def get_result(table: ResultTable[M], key: str, what: str) -> M:
    """A stage's stored result for a Get RPC: INVALID_ARGUMENT without a key, NOT_FOUND before it exists."""
    if not key:
        raise InvalidArgument("missing_study_key", "study_key is required (from the IngestReply)")
    msg = table.get(key)
    if msg is None:
        raise NotFound(f"no_{what}", f"no {what} for this study (unknown, or not processed yet)")
    return msg


def model_stage_service(
    settings: ServiceSettings,
    stage: Stage,
    model: str,
    result_type: type[Message],
    worker: Callable[[StageParts], ModelStage],
    api: GrpcApi,
    servicer: Callable[[StageParts], Any],
) -> ServiceRuntime:
    """A model stage on the shared base: its results table, Triton, blob store, gRPC API and worker."""
    service = StageService(settings, stage)
    parts = StageParts(
        settings,
        service.stage,
        model,
        ResultTable(service.database(), settings.service, result_type),
        service.triton(model),
        service.producer,
        open_blob_store(settings.blob_location),
    )
    service.depends_on("storage", parts.blobs.ping)
    service.api(api, servicer(parts))
    return service.consume(worker(parts))
