"""Triton client for the services: timeouts, retries on UNAVAILABLE, readiness, metrics.

Only transport-level unavailability is retried (Triton restarting, a model loading); a request
Triton rejects (shape, dtype, batch) is the caller's bug and fails at once with Triton's reason.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from cxrmesh.runtime import metrics
from cxrmesh.runtime.tls import TlsFiles, triton_client_options

log = logging.getLogger(__name__)


class TritonError(Exception):
    """Base of the Triton client errors."""


class TritonUnavailable(TritonError):
    """Triton or the model does not answer (after the retries); safe to retry later."""


class TritonRejected(TritonError):
    """Triton refused the request (INVALID_ARGUMENT and the like): retrying will not help."""


_RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED")


class TritonClient:
    def __init__(
        self,
        url: str,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 0.2,
        tls: TlsFiles | None = None,
    ):
        """A client of Triton at ``url``; over mutual TLS unless ``tls`` is None (plaintext)."""
        self.url = url
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._client = tgrpc.InferenceServerClient(url=url, **triton_client_options(tls))
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
                meta = self._call(model, lambda: self._client.get_model_metadata(model, client_timeout=5))
                self._versions[model] = max(meta.versions, key=int) if meta.versions else ""
            return self._versions[model]

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One inference request (a batch along axis 0); returns the named outputs as arrays."""
        reqs = []
        for name, array in inputs.items():
            arr = np.ascontiguousarray(array)
            item = tgrpc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            item.set_data_from_numpy(arr)
            reqs.append(item)
        outs = [tgrpc.InferRequestedOutput(o) for o in outputs]
        batch = next(iter(inputs.values())).shape[0] if inputs else 0
        metrics.triton_batch().labels(model).observe(batch)
        timeout = timeout_s or self.timeout_s
        result = self._call(
            model, lambda: self._client.infer(model, reqs, outputs=outs, client_timeout=timeout)
        )
        return {o: result.as_numpy(o) for o in outputs}

    def _call(self, model: str, fn):
        start = time.perf_counter()
        outcome = "error"
        try:
            for attempt in range(1, self.attempts + 1):
                try:
                    value = fn()
                    outcome = "ok"
                    return value
                except InferenceServerException as exc:
                    status = str(exc.status() or "")
                    if not any(code in status for code in _RETRYABLE):
                        outcome = "rejected"
                        msg = f"Triton refused the request to {model}: {exc.message()}"
                        raise TritonRejected(msg) from exc
                    if attempt == self.attempts:
                        raise TritonUnavailable(
                            f"Triton at {self.url} did not answer for {model} after {attempt} attempts: "
                            f"{exc.message()}"
                        ) from exc
                    pause = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                    log.warning("triton retry", extra={"model": model, "attempt": attempt, "status": status})
                    time.sleep(pause)
            raise AssertionError("unreachable")
        finally:
            metrics.triton_latency().labels(model, outcome).observe(time.perf_counter() - start)

    def close(self) -> None:
        self._client.close()
