"""Consumer lag as a gauge: end offset minus position per owned partition, sampled now and then.

Best effort: a failed sample is skipped (logged at debug), never raised into the consumer loop, and
some Kafka-protocol brokers report wrong end offsets, so nothing decides on it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from cxrmesh.runtime.kafka.config import KafkaConfig
from cxrmesh.runtime.kafka.metrics import consumer_lag

log = logging.getLogger(__name__)


class LagGauge:
    """``cxrmesh_kafka_consumer_lag`` of one consumer group, refreshed every ``cfg.lag_interval_s``."""

    def __init__(self, cfg: KafkaConfig):
        self.cfg = cfg
        self._gauge = consumer_lag()
        self._next = 0.0

    def update(self, consumer: KafkaConsumer | None) -> None:
        """Every ``lag_interval_s``: end offset minus position per owned partition (best effort)."""
        now = time.monotonic()
        if now < self._next or consumer is None:
            return
        self._next = now + self.cfg.lag_interval_s
        owned = list(consumer.assignment())
        if not owned:
            return
        timeout_ms = min(self.cfg.request_timeout_ms, 5000)
        try:
            ends = consumer.end_offsets(owned, timeout_ms=timeout_ms)
            for tp in owned:
                position = consumer.position(tp, timeout_ms=timeout_ms)
                end = ends.get(tp)
                if position is not None and end is not None:
                    self._gauge.labels(tp.topic, self.cfg.group_id, str(tp.partition)).set(
                        max(0, end - position)
                    )
        # KeyError: kafka-python 3.0.12's end_offsets raises it when a ListOffsets answer leaves a
        # partition out (a broker whose store is failing does); a metric must not end the consumer
        except (KafkaError, KeyError) as exc:
            log.debug(
                "kafka lag not updated", extra={"group": self.cfg.group_id, "error_type": type(exc).__name__}
            )

    def clear(self, tps: Iterable[TopicPartition]) -> None:
        """Drop the series of partitions this consumer no longer owns."""
        for tp in tps:
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                self._gauge.remove(tp.topic, self.cfg.group_id, str(tp.partition))
