"""Dead-lettering: a message the consumer gives up on goes, whole, to the dead-letter topic.

The decision (written down where the code is): a ``cxrmesh.v1.DeadLetter`` carries the source
topic/partition/offset, the original key and payload bytes, the service, group, reason and attempt
count. The write is acknowledged (acks=all) before the batch may be committed; it is tried
``DEAD_LETTER_TRIES`` times on top of the producer's own retries, then :class:`DeadLetterError`
stops the consumer with nothing of that batch committed (so the messages come back, never vanish).
While waiting for acknowledgements the consumer keeps polling (paused), so it stays in its group.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter

from cxrmesh.runtime.kafka.backoff import backoff_s
from cxrmesh.runtime.kafka.config import KafkaConfig
from cxrmesh.runtime.kafka.errors import DeadLetterError, PublishError
from cxrmesh.runtime.kafka.producer import EventProducer
from cxrmesh.v1 import events_pb2

log = logging.getLogger(__name__)

DEAD_LETTER_TRIES = 3  # on top of the producer's own retries within delivery_timeout_ms

Failure = tuple[Any, BaseException, int]  # (polled record, why it failed, handler attempts; 0 = poison)


def dead_letter_for(
    rec: Any, exc: BaseException, attempts: int, service: str, group: str
) -> events_pb2.DeadLetter:
    """The DeadLetter of one polled record (its key and payload bytes as they were, the reason as text)."""
    letter = events_pb2.DeadLetter(
        source_topic=rec.topic,
        source_partition=rec.partition,
        source_offset=rec.offset,
        key=rec.key.decode("utf-8", errors="backslashreplace") if rec.key is not None else "",
        payload=rec.value or b"",
        service=service,
        consumer_group=group,
        reason=str(exc) or type(exc).__name__,
        error_type=type(exc).__name__,
        attempts=attempts,
    )
    letter.failed_at.GetCurrentTime()
    return letter


class DeadLetterWriter:
    """Publishes DeadLetters for a consumer and waits for them; ``hold`` waits while staying in the group."""

    def __init__(
        self,
        cfg: KafkaConfig,
        producer: EventProducer,
        service: str,
        messages: Counter,
        hold: Callable[[float], None],
    ):
        self.cfg = cfg
        self.producer = producer
        self.service = service
        self._messages = messages
        self._hold = hold

    def write(self, items: Sequence[Failure], outcome: str) -> None:
        """Publish DeadLetters and wait for the acknowledgements; retried, then :class:`DeadLetterError`."""
        group = self.cfg.group_id
        remaining = [
            (rec, dead_letter_for(rec, exc, attempts, self.service, group)) for rec, exc, attempts in items
        ]
        topic = self.cfg.dead_letter_topic
        for attempt in range(1, DEAD_LETTER_TRIES + 1):
            futures = [
                (rec, letter, self.producer.publish(topic, letter.key, letter)) for rec, letter in remaining
            ]
            self._await([f for _, _, f in futures], self.cfg.delivery_timeout_ms / 1000)
            failed = []
            error_type = ""
            for rec, letter, future in futures:
                try:
                    future.result(timeout=0)
                except (PublishError, concurrent.futures.TimeoutError) as exc:
                    failed.append((rec, letter))
                    error_type = type(exc).__name__
                else:
                    self._messages.labels(rec.topic, group, outcome).inc()
                    log.warning(
                        "kafka event dead-lettered",
                        extra={
                            "topic": rec.topic,
                            "partition": rec.partition,
                            "offset": rec.offset,
                            "group": group,
                            "outcome": outcome,
                            "attempts": letter.attempts,
                            "error_type": letter.error_type,
                        },
                    )
            if not failed:
                return
            remaining = failed
            log.warning(
                "kafka dead-letter publish failed",
                extra={"topic": topic, "attempt": attempt, "error_type": error_type, "count": len(failed)},
            )
            if attempt < DEAD_LETTER_TRIES:
                self._hold(backoff_s(self.cfg, attempt))
        raise DeadLetterError(f"{len(remaining)} dead letters not acknowledged by {topic}")

    def _await(self, futures: Sequence[concurrent.futures.Future[Any]], timeout_s: float) -> None:
        """Wait for acknowledgements in poll-sized slices, so a slow broker does not cost the membership."""
        deadline = time.monotonic() + timeout_s
        pending = set(futures)
        while pending and (left := deadline - time.monotonic()) > 0:
            _, pending = concurrent.futures.wait(pending, timeout=min(left, self.cfg.poll_timeout_ms / 1000))
            if pending:
                self._hold(0.001)  # one paused poll: heartbeats and rebalances go on
