"""What the stage handlers do to a batch of events: load inputs, call Triton once, confirm publishes.

A handler gets a batch of events and returns one result per event (None = done, an exception =
retry or dead-letter, see ``cxrmesh.runtime.kafka``). These helpers keep the error mapping the
same everywhere: content problems are permanent, Triton refusing a request is permanent, Triton
or storage unavailable is retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from cxrmesh.analysis.pixels import model_input
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import MAX_BATCH
from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import BlobError, BlobStore, bytes_array
from cxrmesh.runtime.kafka import Event, PermanentError, PublishFuture
from cxrmesh.runtime.triton import TritonClient, TritonRejected
from cxrmesh.v1 import common_pb2

T = TypeVar("T")
Results = list[BaseException | None]


def load_display(blobs: BlobStore, ref: common_pb2.BlobRef) -> np.ndarray:
    """The study's normalised display image; a wrong shape is a content error (not retried)."""
    image = bytes_array(blobs.get(ref))
    if image.shape != (MODEL_SIZE, MODEL_SIZE):
        raise PermanentError(f"display image has shape {image.shape}, expected ({MODEL_SIZE}, {MODEL_SIZE})")
    return image.astype(np.float32)


def load_all(events: Sequence[Event], load: Callable[[Event], T]) -> tuple[Results, list[int], list[T]]:
    """Load each event's inputs; failures become that event's result, the rest go on together."""
    results: Results = [None] * len(events)
    ok, items = [], []
    for i, event in enumerate(events):
        try:
            items.append(load(event))
            ok.append(i)
        except (BlobError, PermanentError, ValueError) as exc:
            results[i] = exc if not isinstance(exc, ValueError) else PermanentError(str(exc))
    return results, ok, items


def run_model(results: Results, ok: list[int], call: Callable[[], T]) -> T | None:
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


def confirm(results: Results, pending: Sequence[tuple[int, Timestamp, PublishFuture]], step: str) -> Results:
    """Wait for each publish; record step latency from ingestion; unconfirmed events are retried."""
    for i, ingested_at, fut in pending:
        try:
            fut.get(timeout=30)
            elapsed = time.time() - (ingested_at.seconds + ingested_at.nanos / 1e9)
            if ingested_at.seconds:
                metrics.stage_latency().labels(step).observe(max(0.0, elapsed))
            metrics.studies_total().labels(step, "ok").inc()
        except Exception as exc:  # not confirmed: retried (consumers downstream are idempotent)
            results[i] = exc
    return results


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
