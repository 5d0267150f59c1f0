"""What the Kafka stage services share: load a batch's inputs, run Triton once, publish results.

A stage handler gets a batch of events, returns one result per event (None = done, an exception =
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

from cxrmesh.contract import MODEL_SIZE
from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import BlobError, BlobStore, bytes_array
from cxrmesh.runtime.kafka import Event, EventProducer, PermanentError
from cxrmesh.runtime.triton import TritonRejected
from cxrmesh.v1 import common_pb2

T = TypeVar("T")


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


__all__ = ["EventProducer", "confirm", "load_all", "load_display", "now", "run_model"]
