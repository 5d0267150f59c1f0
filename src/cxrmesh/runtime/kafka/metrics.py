"""The Prometheus series of the Kafka runtime; labels are topic, group, partition and outcome, never keys.

Each function returns the process-wide series (``cxrmesh.runtime.metrics.metric`` registers once),
so producers and consumers made later share it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from cxrmesh.runtime.metrics import LATENCY_BUCKETS, metric

HANDLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_GROUP = ("topic", "group")  # what a consumer's series are labelled by
CONSUMED_OUTCOMES = ("ok", "retried", "unavailable", "dead_lettered", "poison")
PUBLISHED_OUTCOMES = ("ok", "error")


def messages_total() -> Counter:
    doc = "Consumed messages by outcome (ok, retried, unavailable: a dependency wait, dead_lettered, poison)."
    return metric(Counter, "cxrmesh_kafka_messages_total", doc, (*_GROUP, "outcome"))


def start_at_zero(counter: Counter, prefix: tuple[str, ...], outcomes: tuple[str, ...]) -> None:
    """Create each outcome's series at 0, so that the first dead letter or publish error is an
    increase a ``rate()`` or ``increase()`` alert can see (a series born at 1 shows no increase)."""
    for outcome in outcomes:
        counter.labels(*prefix, outcome)


def handle_seconds() -> Histogram:
    doc = "Handler time per batch of events."
    return metric(Histogram, "cxrmesh_kafka_handle_seconds", doc, _GROUP, buckets=HANDLE_BUCKETS)


def consumer_lag() -> Gauge:
    doc = "Messages between the consumer position and the end of the partition (best effort)."
    return metric(Gauge, "cxrmesh_kafka_consumer_lag", doc, (*_GROUP, "partition"))


def published_total() -> Counter:
    doc = "Records published, by outcome (ok, error)."
    return metric(Counter, "cxrmesh_kafka_published_total", doc, ("topic", "outcome"))


def publish_seconds() -> Histogram:
    doc = "Time from send to broker acknowledgement (acks=all)."
    return metric(Histogram, "cxrmesh_kafka_publish_seconds", doc, ("topic",), buckets=LATENCY_BUCKETS)


def renewed_total() -> Counter:
    doc = "Producer clients replaced after entering their fatal-error state (their failed sends are retried)."
    return metric(Counter, "cxrmesh_kafka_producer_renewed_total", doc)


def consumer_renewed_total() -> Counter:
    doc = "Consumer clients replaced after staying out of their group past the rejoin timeout."
    return metric(Counter, "cxrmesh_kafka_consumer_renewed_total", doc, ("group",))
