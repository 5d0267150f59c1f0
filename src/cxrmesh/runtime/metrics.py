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
# ingestion -> verdict: seconds on a quiet mesh, up to an hour while a dependency outage is waited out
STUDY_COMPLETE_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
# one lung's share of the model-input frame: ~0.1-0.25 on a frontal chest film, near 0 when a lung is lost
AREA_FRACTION_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5)
# a probability: finer at both ends, where "the detector fails" and "the detector works" live
PROBABILITY_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
# the norm of a served embedding: 1 by contract (the embedder L2-normalises in its graph), so tight there
EMBEDDING_NORM_BUCKETS = (0.5, 0.9, 0.99, 0.999, 1.001, 1.01, 1.1, 2.0, 10.0)
# cosine distance (1 - cosine similarity) of unit vectors: 0 identical, 1 orthogonal, 2 opposite
COSINE_DISTANCE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)


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


# ----------------------------------------------------------------------------- SLIs and model health
# Label values are fixed sets, created at zero so alert rules see a series before the first event.


def study_complete_seconds() -> Histogram:
    """Ingestion to the study view's first verdict, once per study (the mesh's end-to-end SLI).

    Observed by the study view replica whose update gave the study its verdict (``services/studyview``);
    ``outcome`` is ``complete`` (every stage done) or ``failed`` (a stage failed).
    """
    h = metric(
        Histogram,
        "cxrmesh_study_complete_seconds",
        "Time from a study's ingestion to the study view's first verdict on it (once per study).",
        ("outcome",),
        buckets=STUDY_COMPLETE_BUCKETS,
    )
    for outcome in ("complete", "failed"):
        h.labels(outcome)
    return h


def lung_area_fraction() -> Histogram:
    """Each lung's share of the lung map per study (segmentation): a shift means the segmenter or the
    films changed; a lung near 0 is a lung lost."""
    h = metric(
        Histogram,
        "cxrmesh_lung_area_fraction",
        "Lung-map area of one lung / area of the model-input frame, per segmented study.",
        ("side",),
        buckets=AREA_FRACTION_BUCKETS,
    )
    for side in ("right", "left"):
        h.labels(side)
    return h


def landmark_confidence() -> Histogram:
    """The landmark detector's calibrated confidence per measured study (quantification): falls when
    the films leave what the detector was trained on, before the fallbacks and warnings pile up."""
    h = metric(
        Histogram,
        "cxrmesh_landmark_confidence",
        "Landmark detector's calibrated confidence (chance within 10 mm) per measured study, "
        "before any replacement by the estimate.",
        ("landmark",),
        buckets=PROBABILITY_BUCKETS,
    )
    for landmark in ("carina", "left_hilum"):
        h.labels(landmark)
    return h


def landmark_implausible() -> Counter:
    """Plausibility failures of detected landmark pairs, by problem code: the fixed vocabulary
    ``analysis.regions.LandmarkProblem`` (the quantification service creates each code at zero)."""
    return metric(
        Counter,
        "cxrmesh_landmark_implausible_total",
        "Plausibility failures of the detector's landmark pairs (one per problem found), by problem code.",
        ("problem",),
    )


def embedding_norm() -> Histogram:
    """The L2 norm of each embedding the embedder serves. The served graph normalises, so this is 1 by
    contract: anything else is a wrong or broken model export (no drift signal: see neighbour distance)."""
    return metric(
        Histogram,
        "cxrmesh_embedding_norm",
        "L2 norm of each embedding as the embedder model returns it "
        "(1 when the model is the L2-normalising one).",
        buckets=EMBEDDING_NORM_BUCKETS,
    )


def neighbour_distance() -> Histogram:
    """How far a query is from its nearest stored case (search): rises when new studies look unlike
    everything indexed (a new site, a new modality, a drifting embedder)."""
    return metric(
        Histogram,
        "cxrmesh_neighbour_distance",
        "Cosine distance (1 - cosine similarity; the case index's metric is COSINE) from a FindSimilar "
        "query to its nearest returned case.",
        buckets=COSINE_DISTANCE_BUCKETS,
    )


def ingest_accepted() -> Counter:
    """Uploads ingestion accepted (new studies and re-sent duplicates alike): the denominator, with
    ``cxrmesh_ingest_rejected_total``, of the share of uploads refused by reason."""
    return metric(
        Counter,
        "cxrmesh_ingest_accepted_total",
        "DICOM uploads accepted at ingestion (new studies and re-sent duplicates).",
    )


def tls_certificate_expiry() -> Gauge:
    """notAfter of the service's own certificate and of its CA bundle's earliest one, set at start."""
    return metric(
        Gauge,
        "cxrmesh_tls_certificate_expiry_timestamp_seconds",
        "When the service's TLS certificate (server) or the earliest certificate of its CA bundle (ca) "
        "stops being valid, as a unix timestamp.",
        ("certificate",),
    )


def start_metrics_server(port: int, host: str = "0.0.0.0", tls: TlsFiles | None = None) -> int:
    """Serve /metrics on its own port (0 = pick a free port; returns the port).

    With ``tls`` it is HTTPS that asks for a client certificate from the mesh's CA, like the gRPC port.
    """
    server, _ = start_http_server(port, addr=host, **metrics_server_options(tls))
    return int(server.server_address[1])
