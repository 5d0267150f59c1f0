"""The one settings object of the Kafka runtime, checked when it is made rather than at the first message."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cxrmesh.runtime.kafka.errors import KafkaConfigError
from cxrmesh.runtime.kafka.security import KafkaSecurity, check_tls_listener

SUPPORTED_COMPRESSION = (None, "gzip", "snappy", "lz4", "zstd")


@dataclass(frozen=True)
class KafkaConfig:
    """Client settings shared by producer and consumer; the defaults are the production ones.

    ``max_attempts`` counts handler calls per message (1 = no retry). ``backoff_*`` bound the wait
    between attempts (exponential, jittered). ``max_batch`` is the most events per handler call.
    ``unavailable_max_s`` is how long a message whose handler answers ``DependencyUnavailable`` is
    retried without spending attempts (an outage of Triton or storage must not dead-letter the studies
    in flight); 0 makes those failures count like any other. ``rejoin_timeout_ms`` is how long a
    consumer may stay out of its group (rebalancing, or no heartbeat) before its client is replaced
    by a fresh member: the client otherwise waits up to ``max_poll_interval_ms`` + 5 s for a
    JoinGroup answer that a broker which lost the join never sends. ``idempotence`` None means: on when the
    broker answers InitProducerId. ``security`` is how every client of this config authenticates
    (``client_kwargs`` gives what kafka-python receives).
    """

    bootstrap: str
    client_id: str
    group_id: str = ""
    dead_letter_topic: str = "cxrmesh.deadletter.v1"
    max_attempts: int = 5
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    max_batch: int = 16
    poll_timeout_ms: int = 500
    session_timeout_ms: int = 10000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    rejoin_timeout_ms: int = 60000
    compression: str | None = "gzip"
    request_timeout_ms: int = 30000
    # additions
    auto_offset_reset: str = "earliest"  # a new group starts at the beginning: nothing is skipped
    linger_ms: int = 5
    delivery_timeout_ms: int = 120000
    idempotence: bool | None = None
    lag_interval_s: float = 15.0
    unavailable_max_s: float = 900.0  # DependencyUnavailable: retried without spending attempts
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __post_init__(self) -> None:
        problems = []
        if not self.bootstrap:
            problems.append("bootstrap is empty")
        if self.max_attempts < 1:
            problems.append("max_attempts must be >= 1")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            problems.append("need 0 <= backoff_initial_s <= backoff_max_s")
        if self.unavailable_max_s < 0:
            problems.append("unavailable_max_s must be >= 0")
        if self.max_batch < 1:
            problems.append("max_batch must be >= 1")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            problems.append("heartbeat_interval_ms must be below session_timeout_ms")
        if self.rejoin_timeout_ms <= self.session_timeout_ms:  # a normal rejoin takes up to a session
            problems.append("rejoin_timeout_ms must be above session_timeout_ms")
        if self.poll_timeout_ms >= self.max_poll_interval_ms:
            problems.append("poll_timeout_ms must be below max_poll_interval_ms")
        if self.compression not in SUPPORTED_COMPRESSION:
            problems.append(f"compression must be one of {SUPPORTED_COMPRESSION}")
        if self.auto_offset_reset not in ("earliest", "latest"):
            problems.append("auto_offset_reset must be earliest or latest")
        if self.delivery_timeout_ms < self.request_timeout_ms + self.linger_ms:
            problems.append("delivery_timeout_ms must be >= request_timeout_ms + linger_ms")
        if problems:
            raise KafkaConfigError("invalid KafkaConfig: " + "; ".join(problems))

    def client_kwargs(self) -> dict[str, Any]:
        """What every kafka-python client of this config shares: the brokers and the credentials.
        Checks a TLS listener first (``check_tls_listener``): kafka-python would hang on one that does
        not speak TLS."""
        check_tls_listener(self.bootstrap, self.security, min(10.0, self.request_timeout_ms / 1000))
        return {"bootstrap_servers": self.bootstrap, **self.security.client_kwargs()}
