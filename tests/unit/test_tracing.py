"""Tracing's parts on the real OpenTelemetry SDK: headers, the key -> context map, spans, gRPC, export, logs.

Spans are read back from an ``InMemorySpanExporter`` on the process's provider (``tracing.setup``; several
test files share it, so each test looks only at the spans of its own trace). The gRPC tests serve and
call on loopback through the real interceptors; the export tests run a real OTLP/gRPC receiver, in
plaintext and over the mesh's mutual TLS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from kafka.consumer.fetcher import ConsumerRecord
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from cxrmesh.contracts.errors import InvalidArgument
from cxrmesh.local.pki import LocalCA, server_identity
from cxrmesh.runtime import tracing
from cxrmesh.runtime.grpc_server import abort_with
from cxrmesh.runtime.kafka import Event
from cxrmesh.runtime.kafka.spans import BatchSpans, end_publish, start_publish
from cxrmesh.runtime.log import JsonFormatter
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tls import TlsFiles, server_credentials
from cxrmesh.v1 import events_pb2

KEY = "a1b2c3-study-pseudonym"
_EXPORTER = InMemorySpanExporter()
tracing.setup("cxrmesh-test").add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER


def of_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


def no_key_in(found: list[ReadableSpan], *keys: str) -> None:
    for span in found:
        for value in (span.attributes or {}).values():
            assert not any(k in str(value) for k in keys), f"{span.name} carries a key: {value}"


# ---------------------------------------------------------------- W3C headers


def test_kafka_headers_carry_the_context_and_replace_a_stale_one(spans: InMemorySpanExporter) -> None:
    with tracing.tracer().start_as_current_span("publisher") as span:
        headers = tracing.inject_kafka([("content-type", b"x"), ("traceparent", b"00-stale")])
    names = [n for n, _ in headers]
    assert names.count("traceparent") == 1 and names.count("content-type") == 1
    remote = trace.get_current_span(tracing.extract_kafka(headers)).get_span_context()
    assert remote.is_remote
    assert (remote.trace_id, remote.span_id) == (
        span.get_span_context().trace_id,
        span.get_span_context().span_id,
    )


@pytest.mark.parametrize("headers", [None, [], [("traceparent", b"garbage")], [("traceparent", None)]])
def test_records_without_a_valid_traceparent_start_no_trace(headers: Any) -> None:
    assert not tracing.has_span(tracing.extract_kafka(headers))
    assert tracing.inject_kafka([]) == []  # outside a trace: nothing to carry


def test_w3c_round_trip_keeps_tracestate() -> None:
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "v=1"}
    assert tracing.w3c_headers(tracing.context_from(carrier)) == carrier


# ---------------------------------------------------------------- the key -> context map


def test_keys_of_the_batch_find_their_context_and_other_keys_the_current_one() -> None:
    tracer = tracing.tracer()
    first, second = tracer.start_span("first"), tracer.start_span("second")
    contexts = {"k1": trace.set_span_in_context(first), "k2": trace.set_span_in_context(second)}
    with tracer.start_as_current_span("outer") as outer:
        with tracing.keyed(contexts):
            assert trace.get_current_span(tracing.context_for_key("k1")) is first
            assert trace.get_current_span(tracing.context_for_key("k2")) is second
            assert trace.get_current_span(tracing.context_for_key("k3")) is outer
        assert trace.get_current_span(tracing.context_for_key("k1")) is outer


def test_a_publish_continues_its_key_s_trace(spans: InMemorySpanExporter) -> None:
    with tracing.tracer().start_as_current_span("consumed") as consumed:
        pass
    headers: dict[str, str] = {"content-type": "x"}
    with tracing.keyed({KEY: trace.set_span_in_context(consumed)}):
        span = start_publish("cxrmesh.study.embedded.v1", KEY, headers)
    end_publish(span, 3, 42)
    sent = of_trace(spans, consumed.get_span_context().trace_id)
    producer = next(s for s in sent if s.kind == SpanKind.PRODUCER)
    assert producer.parent is not None and producer.parent.span_id == consumed.get_span_context().span_id
    assert producer.attributes["messaging.destination.name"] == "cxrmesh.study.embedded.v1"
    assert producer.attributes["messaging.kafka.offset"] == 42
    carried = trace.get_current_span(tracing.context_from(headers)).get_span_context()
    assert carried.span_id == producer.context.span_id, "the record must carry the PRODUCER span's context"
    no_key_in(sent, KEY)


def test_an_explicit_traceparent_wins_and_a_publish_outside_a_trace_starts_none(
    spans: InMemorySpanExporter,
) -> None:
    stored = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with tracing.tracer().start_as_current_span("unrelated"):
        span = start_publish("t", KEY, headers := {"content-type": "x", **stored})
    end_publish(span, error=TimeoutError("broker gone"))
    assert span is not None and span.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert headers["traceparent"] != stored["traceparent"]  # now the PRODUCER span's
    (failed,) = of_trace(spans, 0x0AF7651916CD43DD8448EB211C80319C)
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["error.type"] == "TimeoutError"

    bare: dict[str, str] = {"content-type": "x"}
    assert start_publish("t", KEY, bare) is None and bare == {"content-type": "x"}


def _record(topic: str, offset: int, key: str, headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, -1, offset, 0, 0, key.encode(), b"", headers, None, 0, 0, 0)


def test_batch_spans_are_children_of_their_producers_and_map_keys(spans: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    producers = [tracer.start_span(f"send {i}") for i in range(3)]
    recs = [
        _record("t", i, key, tracing.inject_kafka([], trace.set_span_in_context(p)))
        for i, (key, p) in enumerate(zip(("k1", "k2", "k1"), producers, strict=True))
    ]
    batch = BatchSpans({("t", 0): recs}, "cxrmesh-test")
    event = Event("t", 0, 1, "k2", events_pb2.StudyIngested(), {}, 1)
    with batch.batch():
        k1 = trace.get_current_span(tracing.context_for_key("k1"))
        assert k1 is batch.span(recs[2]), "the latest record of a key must win"
        with batch.handling([event]):
            assert trace.get_current_span() is batch.span(recs[1]), "a lone event's span is current"
    batch.note(recs[0], "retry", RuntimeError("x"), 1)
    batch.failed(recs[2], ValueError("bad"), "dead_lettered")
    batch.end()
    done = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CONSUMER]
    assert len(done) == 3
    for span, producer in zip(
        sorted(done, key=lambda s: s.attributes["messaging.kafka.offset"]), producers, strict=True
    ):
        assert span.context.trace_id == producer.get_span_context().trace_id
        assert span.parent is not None and span.parent.span_id == producer.get_span_context().span_id
        assert span.attributes["messaging.consumer.group.name"] == "cxrmesh-test"
    retried = next(s for s in done if s.attributes["messaging.kafka.offset"] == 0)
    assert [e.name for e in retried.events] == ["retry"]
    failed = next(s for s in done if s.attributes["messaging.kafka.offset"] == 2)
    assert failed.status.status_code == StatusCode.ERROR
    no_key_in(done, "k1", "k2")


# ---------------------------------------------------------------- logs


def _line(formatter: JsonFormatter) -> dict[str, Any]:
    record = logging.LogRecord("cxrmesh.test", logging.INFO, __file__, 1, "handled", (), None)
    return json.loads(formatter.format(record))


def test_log_lines_carry_the_current_trace_and_span_ids() -> None:
    formatter = JsonFormatter("test")
    assert "trace_id" not in _line(formatter) and "span_id" not in _line(formatter)
    with tracing.tracer().start_as_current_span("work") as span:
        line = _line(formatter)
    ctx = span.get_span_context()
    assert line["trace_id"] == f"{ctx.trace_id:032x}" and line["span_id"] == f"{ctx.span_id:016x}"


# ---------------------------------------------------------------- gRPC


def _echo_handlers() -> grpc.GenericRpcHandler:
    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def refuse(request: bytes, context: grpc.ServicerContext) -> bytes:
        abort_with(context, InvalidArgument("bad_input", "refused on purpose"))
        return b""

    def crash(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("bug")

    def upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"".join(requests)

    def watch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (request, request)

    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
            "Crash": grpc.unary_unary_rpc_method_handler(crash),
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
        },
    )


@pytest.fixture(scope="module")
def echo() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[tracing.server_interceptor()])
    server.add_generic_rpc_handlers((_echo_handlers(),))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = tracing.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"))
    yield channel
    channel.close()
    server.stop(0)


def _call(channel: grpc.Channel, method: str, kind: str = "unary_unary") -> Any:
    stub = getattr(channel, kind)(f"/test.Echo/{method}")
    if kind == "stream_unary":
        return stub(iter([b"a", b"b"]), timeout=5)
    if kind == "unary_stream":
        return list(stub(b"x", timeout=5))
    return stub(b"x", timeout=5)


def _pair(spans: InMemorySpanExporter, method: str) -> tuple[ReadableSpan, ReadableSpan]:
    named = [s for s in spans.get_finished_spans() if s.name == f"/test.Echo/{method}"]
    server = next(s for s in named if s.kind == SpanKind.SERVER)
    client = next(s for s in named if s.kind == SpanKind.CLIENT)
    return client, server


@pytest.mark.parametrize(
    ("method", "kind"), [("Say", "unary_unary"), ("Upload", "stream_unary"), ("Watch", "unary_stream")]
)
def test_a_call_s_server_span_continues_the_client_s_trace(
    echo: grpc.Channel, spans: InMemorySpanExporter, method: str, kind: str
) -> None:
    _call(echo, method, kind)
    client, server = _pair(spans, method)
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.attributes["rpc.method"] == method and server.attributes["rpc.grpc.status_code"] == 0
    assert server.status.status_code == StatusCode.UNSET


def test_a_refusal_is_not_a_server_error_but_a_crash_is(
    echo: grpc.Channel, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _call(echo, "Refuse")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, server = _pair(spans, "Refuse")
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.status.status_code == StatusCode.UNSET

    with pytest.raises(grpc.RpcError):
        _call(echo, "Crash")
    _, server = _pair(spans, "Crash")
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]


def test_health_checks_are_not_traced(echo: grpc.Channel, spans: InMemorySpanExporter) -> None:
    health_pb2_grpc.HealthStub(echo).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert spans.get_finished_spans() == ()


# ---------------------------------------------------------------- export


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC receiver: keeps each exported span's (service.name, span name)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.received += [(attrs.get("service.name", ""), s.name) for s in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


def _collector(tls: TlsFiles | None) -> tuple[grpc.Server, _Collector, int]:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    collector = _Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    address = "127.0.0.1:0" if tls is None else "localhost:0"
    port = (
        server.add_insecure_port(address)
        if tls is None
        else server.add_secure_port(address, server_credentials(tls))
    )
    server.start()
    return server, collector, port


@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "mutual-tls"])
def test_spans_are_exported_to_the_configured_collector(tmp_path: Path, secure: bool) -> None:
    ca = LocalCA(tmp_path / "pki")
    collector_tls = ca.issue(server_identity("collector")) if secure else None
    server, collector, port = _collector(
        TlsFiles(collector_tls.cert, collector_tls.key, collector_tls.ca) if collector_tls else None
    )
    me = ca.issue(server_identity("embedding"))
    settings = ServiceSettings(
        service="embedding",
        otlp_endpoint=f"localhost:{port}",
        otlp_insecure=not secure,
        tls_cert_file=me.cert,
        tls_key_file=me.key,
        tls_ca_file=me.ca,
    )
    provider = tracing.build_provider(settings.service, settings.trace_export())
    try:
        provider.get_tracer("test").start_span("exported").end()
        assert provider.force_flush(10_000)
        assert collector.received == [("embedding", "exported")]
    finally:
        provider.shutdown()
        server.stop(0)


def test_without_an_endpoint_nothing_is_exported_but_spans_have_ids() -> None:
    provider = tracing.build_provider("x", ServiceSettings().trace_export())
    span = provider.get_tracer("test").start_span("local")
    assert span.get_span_context().is_valid and span.is_recording()
    span.end()
    assert provider.force_flush(1000)
    provider.shutdown()


def test_settings_name_the_collector_and_default_its_ca_to_the_mesh_s(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CXRMESH_OTLP_ENDPOINT", " otel-collector:4317 ")
    mesh_ca, own_ca = tmp_path / "mesh-ca.pem", tmp_path / "otel-ca.pem"
    assert ServiceSettings(tls_ca_file=mesh_ca).trace_export().ca == mesh_ca
    export = ServiceSettings(tls_ca_file=mesh_ca, otlp_ca_file=own_ca).trace_export()
    assert (export.endpoint, export.ca, export.insecure) == ("otel-collector:4317", own_ca, False)
    with pytest.raises(tracing.TracingConfigError):
        tracing.TraceExport("c:1", ca=tmp_path / "missing.pem").credentials()
