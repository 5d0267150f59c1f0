"""The lag gauge is a metric: whatever kafka-python raises while sampling it must not end the consumer.

In a stress run a broker whose store was failing answered ListOffsets without a partition, and
kafka-python 3.0.12's ``end_offsets`` raised ``KeyError``; the gauge let it through, the consumer
loop died and its service stayed NOT_SERVING for good. The client stand-in below (a fake, named so:
the broker's partial answer cannot be produced on demand) raises exactly that.
"""

from __future__ import annotations

from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from prometheus_client import REGISTRY

from cxrmesh.runtime.kafka import KafkaConfig
from cxrmesh.runtime.kafka.lag import LagGauge

TP = TopicPartition("cxrmesh.study.embedded.v1", 3)


class FakeConsumerWithPartialOffsets:
    def __init__(self, error: Exception | None):
        self.error = error

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def end_offsets(self, partitions, timeout_ms):
        if self.error is not None:
            raise self.error
        return {TP: 10}

    def position(self, tp, timeout_ms):
        return 4


def gauge() -> LagGauge:
    return LagGauge(KafkaConfig(bootstrap="127.0.0.1:1", client_id="c", group_id="g-lag", lag_interval_s=0))


def test_a_partial_offsets_answer_skips_the_sample() -> None:
    gauge().update(FakeConsumerWithPartialOffsets(KeyError(TP)))  # type: ignore[arg-type]
    gauge().update(FakeConsumerWithPartialOffsets(KafkaTimeoutError()))  # type: ignore[arg-type]


def test_a_full_answer_sets_the_lag() -> None:
    g = gauge()
    g.update(FakeConsumerWithPartialOffsets(None))  # type: ignore[arg-type]
    labels = {"topic": TP.topic, "group": "g-lag", "partition": str(TP.partition)}
    assert REGISTRY.get_sample_value("cxrmesh_kafka_consumer_lag", labels) == 6
