"""Prometheus metrics shared by the services (prometheus_client, default registry).

Names follow Prometheus conventions (base units, ``_total`` counters, ``_seconds`` histograms);
gRPC metrics use the names of go-grpc-prometheus so existing dashboards work. Labels are bounded
sets (service, method, code, model, topic): never a study or patient key.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from cxrmesh.runtime.tls import TlsFiles, metrics_server_options

M = TypeVar("M", Counter, Gauge, Histogram)
_lock = threading.Lock()
_made: dict[str, object] = {}

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def metric(kind: type[M], name: str, doc: str, labels: Sequence[str] = (), **kw: object) -> M:
    """Create a metric once per process (tests and several components share the registry)."""
    with _lock:
        if name not in _made:
            _made[name] = kind(name, doc, list(labels), registry=REGISTRY, **kw)
        return _made[name]  # type: ignore[return-value]


def grpc_handled() -> Counter:
    return metric(
        Counter,
        "grpc_server_handled_total",
        "RPCs completed on the server, by status code.",
        ("grpc_service", "grpc_method", "grpc_code"),
    )


def grpc_latency() -> Histogram:
    return metric(
        Histogram,
        "grpc_server_handling_seconds",
        "Time from receiving an RPC to sending its status.",
        ("grpc_service", "grpc_method"),
        buckets=LATENCY_BUCKETS,
    )


def triton_latency() -> Histogram:
    return metric(
        Histogram,
        "cxrmesh_triton_request_seconds",
        "Triton inference calls made by the services, including retries.",
        ("model", "outcome"),
        buckets=LATENCY_BUCKETS,
    )


def triton_batch() -> Histogram:
    return metric(
        Histogram,
        "cxrmesh_triton_batch_size",
        "Studies per Triton request sent by the services.",
        ("model",),
        buckets=(1, 2, 4, 8, 16, 32),
    )


def stage_latency() -> Histogram:
    return metric(
        Histogram,
        "cxrmesh_stage_seconds",
        "Time from ingestion of a study to the end of a pipeline stage.",
        ("stage",),
        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
    )


def studies_total() -> Counter:
    return metric(
        Counter, "cxrmesh_studies_total", "Studies processed by a stage, by outcome.", ("stage", "outcome")
    )


def dependency_up() -> Gauge:
    doc = "1 when a dependency of the service answers."
    return metric(Gauge, "cxrmesh_dependency_up", doc, ("service", "dependency"))


def start_metrics_server(port: int, host: str = "0.0.0.0", tls: TlsFiles | None = None) -> int:
    """Serve /metrics on its own port (0 = pick a free port; returns the port).

    With ``tls`` it is HTTPS that asks for a client certificate from the mesh's CA, like the gRPC port.
    """
    server, _ = start_http_server(port, addr=host, **metrics_server_options(tls))
    return int(server.server_address[1])
