"""The wait between handler attempts (and dead-letter tries): exponential, capped, with equal jitter."""

from __future__ import annotations

import random

from cxrmesh.runtime.kafka.config import KafkaConfig


def backoff_s(cfg: KafkaConfig, failed_attempt: int) -> float:
    """Exponential backoff with equal jitter: half fixed, half random (spreads retries of many pods)."""
    cap = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** max(0, failed_attempt - 1))
    return cap / 2 + random.uniform(0, cap / 2)
