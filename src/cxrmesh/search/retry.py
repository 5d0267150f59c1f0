"""The store's explicit retry policy: only :class:`StoreUnavailable` is retried, with jittered backoff.

pymilvus would otherwise retry a dead server 75 times with back-off (minutes); here every Milvus call
carries a timeout and the number of attempts is the caller's choice. Each operation is timed once,
retries included, and each retry is counted; labels are the operation name and ok/error only.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Counter, Histogram

from cxrmesh.search.errors import StoreUnavailable

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_SECONDS = Histogram(
    "cxrmesh_milvus_request_seconds",
    "Time of one case-store operation against Milvus, retries included.",
    ["operation", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RETRIES = Counter(
    "cxrmesh_milvus_retries",  # exposed as cxrmesh_milvus_retries_total
    "Case-store operations retried after Milvus was unavailable.",
    ["operation"],
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of :class:`StoreUnavailable` failures only (timeouts, refused connections, rate limits).

    ``attempts`` counts the first try. Before retry n (1-based) the store sleeps
    ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))``, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so that replicas that failed together do not retry together.
    Invalid queries, schema mismatches and other server errors are never retried: they would fail again.
    """

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be an int >= 1 (1 = no retry)")
        if not (self.initial_backoff_s >= 0 and self.max_backoff_s >= self.initial_backoff_s):
            raise ValueError("RetryPolicy needs 0 <= initial_backoff_s <= max_backoff_s")
        if not self.multiplier >= 1:
            raise ValueError("RetryPolicy.multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy.jitter must be in [0, 1)")

    def backoff_s(self, retry: int) -> float:
        """Sleep before retry number ``retry`` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return base


def run_with_retry(operation: str, call: Callable[[], T], policy: RetryPolicy, *, retry: bool = True) -> T:
    """``call()`` under ``policy`` (one try when ``retry`` is False); one histogram observation per call."""
    start = time.monotonic()
    outcome = "error"
    attempts = policy.attempts if retry else 1
    try:
        attempt = 1
        while True:
            try:
                result = call()
                outcome = "ok"
                return result
            except StoreUnavailable as e:
                if attempt >= attempts:
                    if retry:  # a failed health check is reported by its caller, not logged here
                        _LOG.warning("milvus %s unavailable after %d attempts: %s", operation, attempt, e)
                    raise
                delay = policy.backoff_s(attempt)
                RETRIES.labels(operation=operation).inc()
                _LOG.info(
                    "milvus %s unavailable (attempt %d/%d), retrying in %.2fs: %s",
                    operation,
                    attempt,
                    attempts,
                    delay,
                    e,
                )
                time.sleep(delay)
                attempt += 1
    finally:
        REQUEST_SECONDS.labels(operation=operation, outcome=outcome).observe(time.monotonic() - start)
