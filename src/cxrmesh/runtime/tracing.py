"""Distributed tracing: one trace per study, from the ``Ingest`` call through every Kafka stage to the view.

Design (the decisions, so the code elsewhere stays small):

* **One provider per process** (``setup``), named by ``service.name`` = the service. Spans are always
  made, so log lines carry trace ids (``log.JsonFormatter``); they are *exported* only when an OTLP/gRPC
  endpoint is configured (``CXRMESH_OTLP_ENDPOINT``, batched). The collector is reached with TLS: the
  mesh's CA (or ``CXRMESH_OTLP_CA_FILE``) verifies it and the service presents its own certificate;
  plaintext only with ``CXRMESH_OTLP_INSECURE=true``. Propagation is W3C ``traceparent``/``tracestate``
  only (no baggage: nothing but ids crosses a process).
* **gRPC**: ``server_interceptor()`` is our own, built on ``grpc_wrap`` like the runtime's other two,
  because the instrumentation package's server interceptor ignores ``abort_with_status``, the way every
  refusal of this mesh ends (its spans would say OK). Errors follow the semantic conventions: a client's
  fault (INVALID_ARGUMENT, NOT_FOUND, ...) is not a server error. ``intercept_channel()`` uses
  opentelemetry-instrumentation-grpc's client interceptor as it is. Health and reflection calls are not
  traced (probes would bury the studies).
* **Kafka**: every publish continues the trace it is made in and carries it in the record's headers
  (``kafka.spans``); a publish outside any trace (the audit thread) starts none. Handlers take batches,
  so "the trace it is made in" is looked up by the record's key: while a batch is handled the consumer
  holds, per message key, the context of that key's CONSUMER span (``keyed``; the latest record of a key
  wins when a batch has several), and ``context_for_key`` (used by the producer and by ``key_span``)
  falls back to the current context for keys outside the batch. Results are published under the study
  key they were made for, so each result continues its own study's trace with no change to a handler.
* **Outbox**: the ``Ingest`` call's context is stored with the outbox row (``traceparent``, ``tracestate``,
  migration 0004) and the relay publishes with it. A reconciler re-drive starts a *new* trace whose root
  span links to the stored one: a re-drive can come hours later, and one trace per pipeline run keeps
  traces short and their durations meaningful.
* **Privacy**: keys are pseudonyms, but no span carries a study or patient key, and errors are recorded
  by type only (``error.type``), never by message: a message may quote anything.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import client_interceptor, filters
from opentelemetry.instrumentation.grpc.grpcext import intercept_channel as _intercept_channel
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cxrmesh.runtime.grpc_wrap import split_method, wrap_handler

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
W3C_HEADERS = (TRACEPARENT, TRACESTATE)
_W3C = TraceContextTextMapPropagator()
_UNTRACED = ("grpc.health", "grpc.reflection")
# a server span is an error only when the server is at fault (OpenTelemetry's gRPC conventions)
_SERVER_FAULTS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


class TracingConfigError(ValueError):
    """The trace export settings cannot work (a TLS file that cannot be read)."""


@dataclass(frozen=True)
class TraceExport:
    """Where spans go: an OTLP/gRPC collector at ``endpoint`` (``host:port``); empty = nowhere."""

    endpoint: str = ""
    insecure: bool = False  # plaintext to the collector (a sidecar on localhost, debugging)
    ca: Path | None = None  # verifies the collector; None = the system's roots
    cert: Path | None = None  # this service's certificate, presented to the collector
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS to the collector; reads the files now, so a wrong path fails at start-up."""

        def read(path: Path | None) -> bytes | None:
            try:
                return Path(path).read_bytes() if path is not None else None
            except OSError as exc:
                raise TracingConfigError(f"cannot read {path} for the OTLP exporter: {exc.strerror}") from exc

        client = (read(self.key), read(self.cert)) if self.cert and self.key else (None, None)
        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca), private_key=client[0], certificate_chain=client[1]
        )


_provider: TracerProvider | None = None
_lock = threading.Lock()


def build_provider(service: str, export: TraceExport | None = None) -> TracerProvider:
    """A provider named ``service``; with an endpoint, a batching OTLP exporter (else spans stay here)."""
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    if export is not None and export.endpoint:
        exporter = OTLPSpanExporter(
            endpoint=export.endpoint,
            insecure=export.insecure,
            credentials=None if export.insecure else export.credentials(),
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def setup(service: str, export: TraceExport | None = None) -> TracerProvider:
    """Install this process's provider and W3C propagation (once; later calls return the first).

    Services call it at start (``ServiceRuntime``, ``StageService``); several services built in one
    process (tests) share the first one's provider."""
    global _provider
    with _lock:
        if _provider is None:
            installed = trace.get_tracer_provider()
            if isinstance(installed, TracerProvider):  # someone installed an SDK provider first
                _provider = installed
            else:
                _provider = build_provider(service, export)
                trace.set_tracer_provider(_provider)
            propagate.set_global_textmap(_W3C)
            endpoint = export.endpoint if export is not None else ""
            log.info("tracing set up", extra={"exporting": bool(endpoint), "otlp_endpoint": endpoint})
        return _provider


def flush(timeout_s: float = 5.0) -> None:
    """Export what is buffered (at shutdown: ``ServiceRuntime.on_close``); no-op before ``setup``."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def tracer() -> trace.Tracer:
    return trace.get_tracer("cxrmesh")


# ---------------------------------------------------------------- W3C headers (outbox rows, Kafka records)


def w3c_headers(ctx: Context | None = None) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of ``ctx`` (default: the current one); {} outside a trace."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    return carrier


def context_from(headers: Mapping[str, str | None]) -> Context:
    """The remote context that W3C ``headers`` name; an empty one when they name none (or garbage)."""
    return _W3C.extract({k: v for k, v in headers.items() if v is not None})


class _PairsGetter(Getter[Sequence[tuple[str, bytes | None]]]):
    """Reads kafka-python's record headers: (name, bytes) pairs."""

    def get(self, carrier: Sequence[tuple[str, bytes | None]], key: str) -> list[str] | None:
        found = [(v or b"").decode("ascii", errors="replace") for n, v in carrier if n.lower() == key]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, bytes | None]]) -> list[str]:
        return [n for n, _ in carrier]


_PAIRS = _PairsGetter()


def inject_kafka(headers: list[tuple[str, bytes]], ctx: Context | None = None) -> list[tuple[str, bytes]]:
    """``headers`` (kafka-python's pairs) with ``ctx``'s W3C headers in place of any it had."""
    kept = [(n, v) for n, v in headers if n.lower() not in W3C_HEADERS]
    return kept + [(n, v.encode("ascii")) for n, v in w3c_headers(ctx).items()]


def extract_kafka(headers: Sequence[tuple[str, bytes | None]] | None) -> Context:
    """The context a record's headers carry (an empty one when none: the consumer span is a root)."""
    return _W3C.extract(list(headers or ()), getter=_PAIRS)


def has_span(ctx: Context) -> bool:
    """Whether ``ctx`` names a span (local or remote) that a new span can continue."""
    return trace.get_current_span(ctx).get_span_context().is_valid


# ---------------------------------------------------------------- the batch's contexts by message key

_by_key: ContextVar[Mapping[str, Context] | None] = ContextVar("cxrmesh_trace_by_key", default=None)


@contextlib.contextmanager
def keyed(contexts: Mapping[str, Context]) -> Iterator[None]:
    """While inside, ``context_for_key(k)`` is ``contexts[k]`` (the consumer sets it around a batch)."""
    token = _by_key.set(contexts)
    try:
        yield
    finally:
        _by_key.reset(token)


def context_for_key(key: str) -> Context:
    """The context work on message key ``key`` continues: its record's in the batch, else the current."""
    contexts = _by_key.get()
    if contexts is not None and key in contexts:
        return contexts[key]
    return otel_context.get_current()


@contextlib.contextmanager
def key_span(name: str, key: str, attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
    """An internal span in ``key``'s trace (e.g. "study complete"); ``attributes`` must hold no keys."""
    with tracer().start_as_current_span(
        name, context=context_for_key(key), kind=SpanKind.INTERNAL, attributes=dict(attributes or {})
    ) as span:
        yield span


# ---------------------------------------------------------------- gRPC


def server_interceptor() -> grpc.ServerInterceptor:
    """A SERVER span per call, continuing the caller's trace; put it first in the interceptor list, so
    that calls refused by authorization are traced too."""
    return _TracedServer()


def intercept_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with a CLIENT span per call, whose context the call carries to the server."""
    untraced = filters.any_of(*(filters.service_prefix(p) for p in _UNTRACED))
    return _intercept_channel(channel, client_interceptor(filter_=filters.negate(untraced)))


class _TracedServer(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method
        service, method = split_method(full)
        if service.startswith(_UNTRACED):
            return handler
        metadata = {m.key: m.value for m in handler_call_details.invocation_metadata or ()}
        parent = _W3C.extract({k: v for k, v in metadata.items() if isinstance(v, str)})
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}

        def unary(fn: Callable) -> Callable:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                with _server_span(full, parent, attributes, context):
                    return fn(request, context)

            return call

        def streaming(fn: Callable) -> Callable:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                with _server_span(full, parent, attributes, context):
                    yield from fn(request, context)

            return call

        return wrap_handler(handler, unary, streaming)


@contextlib.contextmanager
def _server_span(
    name: str, parent: Context, attributes: Mapping[str, str], context: grpc.ServicerContext
) -> Iterator[None]:
    """The call's span; its status from the call's final code (aborts included), set when it ends."""
    with tracer().start_as_current_span(
        name,
        context=parent,
        kind=SpanKind.SERVER,
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        escaped: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            code = context.code() if hasattr(context, "code") else None
            if code is None or not isinstance(code, grpc.StatusCode):
                aborted = escaped is not None and type(escaped).__name__ == "_AbortError"
                code = grpc.StatusCode.UNKNOWN if escaped is not None and not aborted else grpc.StatusCode.OK
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, code.name))
                if escaped is not None:
                    span.set_attribute("error.type", type(escaped).__name__)
