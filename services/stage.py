"""What the Kafka stage services share: load a batch's inputs, run Triton once, publish results.

A stage handler gets a batch of events, returns one result per event (None = done, an exception =
retry or dead-letter, see ``cxrmesh.runtime.kafka``). These helpers keep the error mapping the
same everywhere: content problems are permanent, Triton refusing a request is permanent, Triton
or storage unavailable is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from cxrmesh.analysis.pixels import model_input
from cxrmesh.contracts.errors import InvalidArgument, NotFound
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import MAX_BATCH
from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import BlobError, BlobStore, bytes_array, open_blob_store
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Consumer, Event, EventProducer, PermanentError
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tables import ResultTable, kafka_config
from cxrmesh.runtime.triton import TritonClient, TritonRejected
from cxrmesh.v1 import common_pb2

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def load_display(blobs: BlobStore, ref: common_pb2.BlobRef) -> np.ndarray:
    """The study's normalised display image; a wrong shape is a content error (not retried)."""
    image = bytes_array(blobs.get(ref))
    if image.shape != (MODEL_SIZE, MODEL_SIZE):
        raise PermanentError(f"display image has shape {image.shape}, expected ({MODEL_SIZE}, {MODEL_SIZE})")
    return image.astype(np.float32)


def load_all(
    events: Sequence[Event], load: Callable[[Event], T]
) -> tuple[list[BaseException | None], list[int], list[T]]:
    """Load each event's inputs; failures become that event's result, the rest go on together."""
    results: list[BaseException | None] = [None] * len(events)
    ok, items = [], []
    for i, event in enumerate(events):
        try:
            items.append(load(event))
            ok.append(i)
        except (BlobError, PermanentError, ValueError) as exc:
            results[i] = exc if not isinstance(exc, ValueError) else PermanentError(str(exc))
    return results, ok, items


def run_model(results: list[BaseException | None], ok: list[int], call: Callable[[], T]) -> T | None:
    """One Triton call for the batch; on failure every loaded event of the batch gets the error."""
    try:
        return call()
    except TritonRejected as exc:
        err: BaseException = PermanentError(str(exc))
    except Exception as exc:  # Triton unavailable, timeouts: the batch is retried
        err = exc
    for i in ok:
        results[i] = err
    return None


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def confirm(
    results: list[BaseException | None],
    pending: Sequence[tuple[int, Timestamp, object]],
    stage: str,
) -> list[BaseException | None]:
    """Wait for each publish; record stage latency from ingestion; unconfirmed events are retried."""
    for i, ingested_at, fut in pending:
        try:
            fut.get(timeout=30)  # type: ignore[attr-defined]
            elapsed = time.time() - (ingested_at.seconds + ingested_at.nanos / 1e9)
            if ingested_at.seconds:
                metrics.stage_latency().labels(stage).observe(max(0.0, elapsed))
            metrics.studies_total().labels(stage, "ok").inc()
        except Exception as exc:  # not confirmed: retried (consumers downstream are idempotent)
            results[i] = exc
    return results


# ----------------------------------------------------------------------------- batched image models


def infer_images(
    triton: TritonClient, model: str, images: Sequence[np.ndarray], outputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """Display images -> the model's outputs, at most MAX_BATCH studies per Triton request."""
    parts: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
    for i in range(0, len(images), MAX_BATCH):
        batch = np.concatenate([model_input(img) for img in images[i : i + MAX_BATCH]])
        out = triton.infer(model, {"image": batch}, list(outputs))
        for o in outputs:
            parts[o].append(out[o])
    return {o: np.concatenate(v) for o, v in parts.items()}


def embed_images(
    triton: TritonClient, model: str, images: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Display images -> (embeddings, attention maps), for the embedding service and DICOM queries."""
    out = infer_images(triton, model, images, ("embedding", "attention"))
    return out["embedding"], out["attention"]


def get_result(table: ResultTable[M], key: str, what: str) -> M:
    """A stage's stored result for a Get RPC: INVALID_ARGUMENT without a key, NOT_FOUND before it exists."""
    if not key:
        raise InvalidArgument("missing_study_key", "study_key is required (from the IngestReply)")
    msg = table.get(key)
    if msg is None:
        raise NotFound(f"no_{what}", f"no {what} for this study (unknown, or not processed yet)")
    return msg


# ----------------------------------------------------------------------------- service assembly


@dataclass
class StageParts:
    """What a stage's worker and servicer are built from."""

    settings: ServiceSettings
    table: ResultTable
    triton: TritonClient
    producer: EventProducer
    blobs: BlobStore


def stage_service(
    settings: ServiceSettings,
    *,
    group: str,
    result_type: type[Message],
    consumes: Mapping[str, type[Message]],
    model: str,
    worker: Callable[[StageParts], Callable[[Sequence[Event]], list[BaseException | None]]],
    grpc_service: tuple[str, Callable[[Any, Any], None]],
    servicer: Callable[[StageParts], Any],
) -> ServiceRuntime:
    """The one wiring of a Kafka stage: results table, Triton, consumer, gRPC API, health, shutdown."""
    runtime = ServiceRuntime(settings)
    parts = StageParts(
        settings,
        ResultTable(settings.data_dir / settings.service / "results.sqlite", result_type),
        TritonClient(settings.triton_url, settings.triton_timeout_s),
        EventProducer(kafka_config(settings, group, MAX_BATCH)),
        open_blob_store(settings.blob_location),
    )
    consumer = Consumer(
        kafka_config(settings, group, MAX_BATCH),
        consumes,
        worker(parts),
        parts.producer,
        service=settings.service,
    )
    name, add = grpc_service
    runtime.add_service(name, add, servicer(parts))
    runtime.add_dependency("triton", lambda: parts.triton.ready([model]))
    runtime.add_dependency("kafka", consumer.healthy)
    runtime.add_dependency("storage", lambda: parts.blobs.ping() and parts.table.ping())
    runtime.add_worker("consumer", consumer.run)
    for close in (parts.producer.close, parts.table.close, parts.triton.close):
        runtime.on_close(close)
    return runtime
