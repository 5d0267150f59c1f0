"""What the stage handlers do to a batch of events: load inputs, call Triton once, confirm publishes.

A handler gets a batch of events and returns one result per event (None = done, an exception =
retry or dead-letter, see ``cxrmesh.runtime.kafka``). These helpers keep the error mapping the
same everywhere: content problems are permanent, Triton refusing a request is permanent, and a
dependency that is down or too slow (Triton, the broker, Milvus, the database, blob storage) is
:class:`DependencyUnavailable`: the consumer waits for it without spending the study's attempts, so
an outage delays studies instead of dead-lettering them (``unavailable``, ``handle_outages``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from cxrmesh.analysis.pixels import model_input
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import MAX_BATCH
from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import BlobError, BlobStore, bytes_array
from cxrmesh.runtime.kafka import DependencyUnavailable, Event, PermanentError, PublishError, PublishFuture
from cxrmesh.runtime.triton import TritonClient, TritonRejected, TritonUnavailable
from cxrmesh.search.errors import StoreUnavailable
from cxrmesh.v1 import common_pb2

T = TypeVar("T")
Results = list[BaseException | None]

CONFIRM_S = 30.0  # how long a batch waits for the broker to acknowledge its publishes, all together

# a dependency is down or too slow, not the study's content at fault: Triton (after the client's own
# retries), the broker (publish not acknowledged), Milvus, the database (connection lost, pool
# exhausted, SQLite busy), the blob store (an OSError that is not "no such blob": BlobNotFound)
OUTAGES: tuple[type[BaseException], ...] = (
    TritonUnavailable,
    PublishError,
    StoreUnavailable,
    OperationalError,
    PoolTimeout,
    OSError,
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says a dependency is unavailable (see ``OUTAGES``), not that the content is bad."""
    if isinstance(exc, DependencyUnavailable):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OUTAGES)


def unavailable(exc: BaseException) -> BaseException:
    """``exc`` as the consumer should see it: a dependency outage becomes :class:`DependencyUnavailable`
    (waits without spending attempts) with ``exc`` as its cause; anything else is returned unchanged."""
    if isinstance(exc, DependencyUnavailable) or not is_outage(exc):
        return exc
    err = DependencyUnavailable(_describe(exc))
    err.__cause__ = exc
    return err


def _describe(exc: BaseException) -> str:
    """The outage's message; for the database the driver's words only (a statement's text and its
    parameters, which may hold study keys, stay out of dead letters and the study view)."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        return f"database unavailable: {type(orig).__name__}: {orig}" if orig else "database unavailable"
    if isinstance(exc, OSError):
        return f"storage unavailable: {exc}"
    return str(exc) or type(exc).__name__


def handle_outages(
    handle: Callable[[Sequence[Event]], Sequence[BaseException | None]], events: Sequence[Event]
) -> Results:
    """Run a handler with the outage mapping applied: per-event results through ``unavailable``, and an
    outage raised from the handler (the database gone mid-batch) fails every event as one; any other
    exception propagates (the consumer retries the batch as usual)."""
    try:
        results = list(handle(events))
    except Exception as exc:
        if not is_outage(exc):
            raise
        return [unavailable(exc)] * len(events)
    return [None if r is None else unavailable(r) for r in results]


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
        except OSError as exc:  # the store did not answer (not a missing blob: that is BlobNotFound)
            results[i] = unavailable(exc)
    return results, ok, items


def run_model(results: Results, ok: list[int], call: Callable[[], T]) -> T | None:
    """One Triton call for the batch; on failure every loaded event of the batch gets the error:
    refused = permanent, unavailable or timed out = :class:`DependencyUnavailable` (waits), else retried."""
    try:
        return call()
    except TritonRejected as exc:
        err: BaseException = PermanentError(str(exc))
    except Exception as exc:  # Triton unavailable or timed out: waited for; anything else is retried
        err = unavailable(exc)
    for i in ok:
        results[i] = err
    return None


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def confirm(results: Results, pending: Sequence[tuple[int, Timestamp, PublishFuture]], step: str) -> Results:
    """Wait for each publish (``CONFIRM_S`` for the whole batch, not per study); record step latency
    from ingestion. Unconfirmed events (broker down or slow) are :class:`DependencyUnavailable`: they
    wait for the broker and are published again (consumers downstream are idempotent)."""
    deadline = time.monotonic() + CONFIRM_S
    for i, ingested_at, fut in pending:
        try:
            fut.get(timeout=max(0.0, deadline - time.monotonic()))
        except PublishError as exc:  # not acknowledged in time, or refused by the broker
            results[i] = unavailable(exc)
            continue
        elapsed = time.time() - (ingested_at.seconds + ingested_at.nanos / 1e9)
        if ingested_at.seconds:
            metrics.stage_latency().labels(step).observe(max(0.0, elapsed))
        metrics.studies_total().labels(step, "ok").inc()
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
