"""Triton client for the services: timeouts, retries on UNAVAILABLE, readiness, metrics.

Only transport-level unavailability is retried (Triton restarting, a model loading); a request
Triton rejects (shape, dtype, batch) is the caller's bug and fails at once with Triton's reason.

Failing fast when Triton is away (why the timing looks as it does): one call's ``timeout_s`` is its
whole budget, retries included, so a call never takes ``timeout x attempts``; a refused connection
is retried only after short pauses (tenths of a second), and a call that ran out of time is not
retried at all. The channel reconnects at most ``RECONNECT_MAX_MS`` apart (gRPC's default grows to
two minutes), so calls succeed again within seconds of Triton's return. Longer outages are the
callers' to wait out: Kafka stages through ``DependencyUnavailable``, gRPC methods by answering
UNAVAILABLE.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.grpc import KeepAliveOptions
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from cxrmesh.runtime import metrics
from cxrmesh.runtime.tls import TlsFiles, triton_client_options

log = logging.getLogger(__name__)
T = TypeVar("T")


class TritonError(Exception):
    """Base of the Triton client errors."""


class TritonUnavailable(TritonError):
    """Triton or the model does not answer (after the retries) or ran out of time; safe to retry later."""


class TritonRejected(TritonError):
    """Triton refused the request (INVALID_ARGUMENT and the like): retrying will not help."""


_RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED")
_OUT_OF_TIME = "DEADLINE_EXCEEDED"  # the call's budget is spent: not retried
MAX_MESSAGE = 2**31 - 1  # Triton's own limit (tritonclient's default): batches of images are large
RECONNECT_MAX_MS = 2000  # gRPC's default backoff grows to 120 s: Triton back, calls still refused


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's default channel options, plus a reconnect backoff bounded to seconds."""
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
    ]


class TritonClient:
    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 0.2,
        tls: TlsFiles | None = None,
    ):
        """A client of Triton at ``url``; over mutual TLS unless ``tls`` is None (plaintext).

        ``timeout_s`` bounds one call, its ``attempts`` (retries of UNAVAILABLE, ``backoff_s`` apart,
        doubling) included."""
        self.url = url
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._client = tgrpc.InferenceServerClient(
            url=url, channel_args=channel_args(), **triton_client_options(tls)
        )
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()

    def ready(self, models: Sequence[str] = ()) -> bool:
        """Server live and ready and every model in ``models`` loaded (for health checks)."""
        try:
            client = self._client
            if not (client.is_server_live(client_timeout=2) and client.is_server_ready(client_timeout=2)):
                return False
            return all(self._client.is_model_ready(m, client_timeout=2) for m in models)
        except InferenceServerException:
            return False

    def model_version(self, model: str) -> str:
        """The version Triton serves for ``model`` (published with every result)."""
        with self._lock:
            if model not in self._versions:
                meta = self._call(
                    model,
                    lambda left: self._client.get_model_metadata(model, client_timeout=min(5.0, left)),
                    self.timeout_s,
                )
                self._versions[model] = max(meta.versions, key=int) if meta.versions else ""
            return self._versions[model]

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference request (a batch along axis 0); returns the named outputs as arrays.

        Raises :class:`TritonRejected` (the request is wrong) or :class:`TritonUnavailable` (Triton
        down, restarting or slower than ``timeout_s``, the whole call's budget)."""
        reqs = []
        for name, array in inputs.items():
            arr = np.ascontiguousarray(array)
            item = tgrpc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            item.set_data_from_numpy(arr)
            reqs.append(item)
        outs = [tgrpc.InferRequestedOutput(o) for o in outputs]
        batch = next(iter(inputs.values())).shape[0] if inputs else 0
        metrics.triton_batch().labels(model).observe(batch)
        result = self._call(
            model,
            lambda left: self._client.infer(model, reqs, outputs=outs, client_timeout=left),
            timeout_s or self.timeout_s,
        )
        return {o: result.as_numpy(o) for o in outputs}

    def _call(self, model: str, fn: Callable[[float], T], budget_s: float) -> T:
        """``fn(seconds_left)`` with retries of UNAVAILABLE, all within ``budget_s`` seconds."""
        start = time.perf_counter()
        deadline = time.monotonic() + budget_s
        outcome = "error"
        try:
            for attempt in range(1, self.attempts + 1):
                try:
                    value = fn(max(0.001, deadline - time.monotonic()))
                    outcome = "ok"
                    return value
                except InferenceServerException as exc:
                    status = str(exc.status() or "")
                    if not any(code in status for code in _RETRYABLE):
                        outcome = "rejected"
                        msg = f"Triton refused the request to {model}: {exc.message()}"
                        raise TritonRejected(msg) from exc
                    pause = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                    out_of_time = _OUT_OF_TIME in status or time.monotonic() + pause >= deadline
                    if attempt == self.attempts or out_of_time:
                        raise TritonUnavailable(
                            f"model server unavailable, retry later: Triton at {self.url} did not answer "
                            f"for {model} ({status or 'no status'}, {attempt} attempts in "
                            f"{time.perf_counter() - start:.1f} s): {exc.message()}"
                        ) from exc
                    log.warning("triton retry", extra={"model": model, "attempt": attempt, "status": status})
                    time.sleep(pause)
            raise AssertionError("unreachable")
        finally:
            metrics.triton_latency().labels(model, outcome).observe(time.perf_counter() - start)

    def close(self) -> None:
        self._client.close()
