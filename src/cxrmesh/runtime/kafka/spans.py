"""Kafka's part of the study trace: a PRODUCER span per publish, a CONSUMER span per consumed record.

How the trace crosses a topic (``cxrmesh.runtime.tracing`` has the whole design): ``start_publish``
continues the context the record is published in (an explicit ``traceparent`` header, as the outbox
relay passes, else ``tracing.context_for_key``) and puts the PRODUCER span's context into the record's
headers; ``BatchSpans`` starts each polled record's CONSUMER span as its child and, while the batch is
handled, maps every message key to its record's span, so whatever the handler publishes for that key
continues the same trace. Attributes are the messaging conventions' (system, destination, partition,
offset, group); never the key, never a payload, and failures by error type only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from cxrmesh.runtime import tracing
from cxrmesh.runtime.kafka.events import Event

_SYSTEM = {"messaging.system": "kafka"}


def start_publish(topic: str, key: str, headers: dict[str, str]) -> Span | None:
    """A PRODUCER span for one record, its context written into ``headers`` (replacing any W3C pair
    there); None, and no trace headers, when the publish belongs to no trace."""
    given = {n: headers.pop(n) for n in tracing.W3C_HEADERS if n in headers}
    parent = tracing.context_from(given) if tracing.TRACEPARENT in given else tracing.context_for_key(key)
    if not tracing.has_span(parent):
        return None
    span = tracing.tracer().start_span(
        f"send {topic}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={**_SYSTEM, "messaging.operation.type": "send", "messaging.destination.name": topic},
    )
    headers.update(tracing.w3c_headers(trace.set_span_in_context(span)))
    return span


def end_publish(
    span: Span | None,
    partition: int | None = None,
    offset: int | None = None,
    error: BaseException | None = None,
) -> None:
    """End a publish's span: acknowledged at ``partition``/``offset``, or failed with ``error``."""
    if span is None:
        return
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.set_attribute("error.type", type(error).__name__)
    else:
        span.set_attribute("messaging.destination.partition.id", str(partition))
        span.set_attribute("messaging.kafka.offset", int(offset or 0))
    span.end()


class BatchSpans:
    """The CONSUMER spans of one polled batch, each a child of its record's producer context."""

    def __init__(self, records: Mapping[Any, Sequence[Any]], group: str):
        self._spans: dict[tuple[str, int, int], Span] = {}
        self._by_key: dict[str, Context] = {}
        for tp in sorted(records):
            for rec in records[tp]:
                span = tracing.tracer().start_span(
                    f"process {rec.topic}",
                    context=tracing.extract_kafka(rec.headers),
                    kind=SpanKind.CONSUMER,
                    attributes={
                        **_SYSTEM,
                        "messaging.operation.type": "process",
                        "messaging.destination.name": rec.topic,
                        "messaging.destination.partition.id": str(rec.partition),
                        "messaging.kafka.offset": rec.offset,
                        "messaging.consumer.group.name": group,
                    },
                )
                self._spans[(rec.topic, rec.partition, rec.offset)] = span
                key = _key_of(rec)
                if key is not None:  # sorted by partition and offset: the latest record of a key wins
                    self._by_key[key] = trace.set_span_in_context(span)

    def span(self, rec: Any) -> Span | None:
        """The span of a record or Event (anything with topic, partition and offset)."""
        return self._spans.get((rec.topic, rec.partition, rec.offset))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The whole batch's keys (dead letters and anything outside a handler call find theirs)."""
        with tracing.keyed(self._by_key):
            yield

    @contextlib.contextmanager
    def handling(self, events: Sequence[Event]) -> Iterator[None]:
        """Around one handler call: its events' keys; with a single event, its span is also current
        (so the handler's own spans and log lines join that study's trace)."""
        by_key = {}
        for event in events:
            span = self.span(event)
            if span is not None:
                by_key[event.key] = trace.set_span_in_context(span)
        current = self.span(events[0]) if len(events) == 1 else None
        with tracing.keyed(by_key):
            if current is None:
                yield
            else:
                with trace.use_span(current, end_on_exit=False):
                    yield

    @contextlib.contextmanager
    def within(self, rec: Any) -> Iterator[None]:
        """The record's span current (its log lines carry its trace id)."""
        span = self.span(rec)
        if span is None:
            yield
            return
        with trace.use_span(span, end_on_exit=False):
            yield

    def note(self, rec: Any, what: str, error: BaseException, attempt: int) -> None:
        """An event on the record's span: ``retry`` or ``dependency unavailable`` (by error type)."""
        span = self.span(rec)
        if span is not None:
            span.add_event(what, {"error.type": type(error).__name__, "attempt": attempt})

    def failed(self, rec: Any, error: BaseException, outcome: str) -> None:
        """The record was given up on (dead-lettered or poison)."""
        span = self.span(rec)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, f"{outcome}: {type(error).__name__}"))
            span.set_attribute("error.type", type(error).__name__)

    def end(self) -> None:
        for span in self._spans.values():
            span.end()


def _key_of(rec: Any) -> str | None:
    try:
        return rec.key.decode("utf-8") if rec.key is not None else None
    except UnicodeDecodeError:
        return None
