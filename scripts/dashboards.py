"""cxrmesh's Grafana dashboards as code (grafana-foundation-sdk): one dashboard per concern.

    python scripts/dashboards.py          # writes k8s/monitoring/dashboards/*.json and
                                          # k8s/base/grafana-dashboards.yaml
    python scripts/dashboards.py --check  # exit 1 when the committed files differ from what it writes

Why a script and not a module of the package: it is tooling, like the trainers' launch scripts. Its
one dependency (grafana-foundation-sdk) is a dev extra, the services never import it, and the
package's layers (docs/architecture.md) stay as they are. tests/unit/test_dashboards.py checks that
the committed files are what this writes (no hand edits drift) and that every query parses.

The dashboards: mesh overview (golden signals of every service's gRPC API and the SLOs), pipeline
(stages, Kafka, outbox, reconciler), Triton (per model), model health (what the models see and say:
drift shows here first). Every query uses the ``job`` = service name convention (PodMonitor
``jobLabel``; ``cxrmesh up --monitoring`` locally) and ``$__rate_interval``. The ConfigMaps carry
``grafana_dashboard: "1"``, which kube-prometheus-stack's Grafana sidecar loads (it searches its own
namespace unless ``sidecar.dashboards.searchNamespace`` includes ``cxrmesh``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef

ROOT = Path(__file__).resolve().parents[1]
JSON_DIR = ROOT / "k8s" / "monitoring" / "dashboards"
CONFIGMAPS = ROOT / "k8s" / "base" / "grafana-dashboards.yaml"
RATE = "$__rate_interval"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# the caller's faults: not the service's errors, they spend no error budget (as k8s/monitoring/slo-rules.yaml)
CALLER_FAULTS = (
    "INVALID_ARGUMENT|FAILED_PRECONDITION|PERMISSION_DENIED|UNAUTHENTICATED|NOT_FOUND|ALREADY_EXISTS"
    "|OUT_OF_RANGE|CANCELLED"
)
SERVICE_JOBS = (
    'job=~"ingestion|embedding|search|segmentation|quantification|prognosis|studyview|pacs-sender|gateway"'
)
# the SLOs of k8s/monitoring/slo-rules.yaml (recorded as slo:sli_error:ratio_rate<window>{slo}) and
# their error budgets (1 - objective); tests/unit/test_dashboards.py checks these against the rules
SLO_BUDGETS = {
    "ingest-availability": 0.001,
    "study-latency": 0.05,
    "search-latency": 0.01,
    "rpc-errors": 0.01,
}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # or "stat"
    width: int = 12  # of 24 grid columns


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]


def rate(metric: str, by: str, selector: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"


def quantiles(histogram: str, by: str, selector: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)):
    """One query per quantile of a Prometheus histogram, grouped by ``by``."""
    legend = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(","))
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{{{selector}}}[{RATE}])))",
            f"{legend} p{round(q * 100)}",
        )
        for q in qs
    )


def _grpc_errors(by: str) -> str:
    """Server-side errors / valid calls (every status but the caller's faults), as the SLO rules count."""
    errors = rate("grpc_server_handled_total", by, f'{SERVICE_JOBS},grpc_code!~"OK|{CALLER_FAULTS}"')
    valid = rate("grpc_server_handled_total", by, f'{SERVICE_JOBS},grpc_code!~"{CALLER_FAULTS}"')
    return f"({errors} or 0 * {valid}) / {valid}"


def _burn_rate(slo: str, window: str = "1h") -> Query:
    sli = f'slo:sli_error:ratio_rate{window}{{slo="{slo}"}}'
    if slo == "rpc-errors":  # one series per job and method: the worst of each job
        return Query(f"max by (job) ({sli}) / {SLO_BUDGETS[slo]:g}", "rpc-errors {{job}}")
    return Query(f"{sli} / {SLO_BUDGETS[slo]:g}", slo)


OVERVIEW = Board(
    "cxrmesh-overview",
    "cxrmesh / Mesh overview",
    "Golden signals of every service's gRPC API (rate, errors, latency, healthy replicas) and the SLOs.",
    (
        (
            "Golden signals (per service)",
            (
                Panel(
                    "Requests per second",
                    "RPCs completed per second by each service (every method and status code).",
                    "reqps",
                    (Query(rate("grpc_server_handled_total", "job", SERVICE_JOBS), "{{job}}"),),
                ),
                Panel(
                    "Server error ratio",
                    "Share of valid RPCs (all but the caller's faults) that ended in a server-side error.",
                    "percentunit",
                    (Query(_grpc_errors("job"), "{{job}}"),),
                ),
                *(
                    Panel(
                        f"Latency p{p}",
                        f"The {p}th percentile of the time from receiving an RPC to sending its status.",
                        "s",
                        (
                            Query(
                                f"histogram_quantile({p / 100}, sum by (job, le) "
                                f"(rate(grpc_server_handling_seconds_bucket{{{SERVICE_JOBS}}}[{RATE}])))",
                                "{{job}}",
                            ),
                        ),
                        width=8,
                    )
                    for p in (50, 95, 99)
                ),
                Panel(
                    "Replicas up",
                    "Scrape targets answering, per job (0 means no healthy replica).",
                    "short",
                    (Query("sum by (job) (up)", "{{job}}"),),
                    width=24,
                ),
            ),
        ),
        (
            "SLOs (k8s/monitoring/slo-rules.yaml)",
            (
                Panel(
                    "SLIs over the last hour",
                    "Share of good events per SLO: Ingest calls without server error (objective 99.9 %), "
                    "studies complete within 120 s (95 %), FindSimilar within 1 s (99 %).",
                    "percentunit",
                    (Query('1 - slo:sli_error:ratio_rate1h{slo!="rpc-errors"}', "{{slo}}"),),
                    kind="stat",
                    width=8,
                ),
                Panel(
                    "Error budget burn rate (1 h window)",
                    "SLI error ratio / error budget: 1 spends the 30-day budget in 30 days; the paging "
                    "alerts fire at 14.4 (1 h) and 6 (6 h).",
                    "short",
                    tuple(_burn_rate(slo) for slo in SLO_BUDGETS),
                    width=16,
                ),
                Panel(
                    "RPC error ratio by method (5 m window)",
                    "The rpc-errors SLI: server-side errors / valid calls, per service and method.",
                    "percentunit",
                    (
                        Query(
                            'max by (job, grpc_method) (slo:sli_error:ratio_rate5m{slo="rpc-errors"})',
                            "{{job}} {{grpc_method}}",
                        ),
                    ),
                    width=24,
                ),
            ),
        ),
    ),
)

PIPELINE = Board(
    "cxrmesh-pipeline",
    "cxrmesh / Pipeline",
    "Studies through the stages (ingest, embed, segment, quantify, prognose, study view), Kafka, the "
    "ingestion outbox and the reconciler.",
    (
        (
            "Stages",
            (
                Panel(
                    "Studies per second by stage and outcome",
                    "cxrmesh_studies_total: accepted/duplicate at ingest, ok at every later stage.",
                    "ops",
                    (Query(rate("cxrmesh_studies_total", "stage, outcome"), "{{stage}} {{outcome}}"),),
                ),
                Panel(
                    "Time from ingestion to end of stage (p50, p95)",
                    "How long after ingestion a study finished each stage.",
                    "s",
                    quantiles("cxrmesh_stage_seconds", "stage", qs=(0.5, 0.95)),
                ),
                Panel(
                    "Studies finished by outcome",
                    "Study views that became complete, or failed (a stage dead-lettered).",
                    "ops",
                    (Query(rate("cxrmesh_study_complete_seconds_count", "outcome"), "{{outcome}}"),),
                ),
                Panel(
                    "Time from ingestion to complete study (p50, p95, p99)",
                    "The study-latency SLO's measure: complete within 120 s for 95 % of studies.",
                    "s",
                    quantiles("cxrmesh_study_complete_seconds", "outcome", 'outcome="complete"'),
                ),
            ),
        ),
        (
            "Kafka",
            (
                Panel(
                    "Consumer lag",
                    "Messages between each consumer group's position and the end of its topic.",
                    "short",
                    (Query("sum by (topic, group) (cxrmesh_kafka_consumer_lag)", "{{group}} ← {{topic}}"),),
                ),
                Panel(
                    "Consumed messages by outcome",
                    "ok, retried, unavailable (waiting for a dependency), dead_lettered, poison.",
                    "ops",
                    (Query(rate("cxrmesh_kafka_messages_total", "outcome"), "{{outcome}}"),),
                ),
                Panel(
                    "Dead letters",
                    "Messages sent to a dead-letter topic after their attempts ran out.",
                    "short",
                    (
                        Query(
                            "sum by (topic, group) (increase("
                            f'cxrmesh_kafka_messages_total{{outcome="dead_lettered"}}[{RATE}]))',
                            "{{group}} ← {{topic}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Publish failures",
                    "Records the producers could not get acknowledged (acks=all).",
                    "ops",
                    (Query(rate("cxrmesh_kafka_published_total", "topic", 'outcome="error"'), "{{topic}}"),),
                    width=8,
                ),
                Panel(
                    "Handler time p95",
                    "Time a consumer spent handling a batch of events, per topic.",
                    "s",
                    quantiles("cxrmesh_kafka_handle_seconds", "topic", qs=(0.95,)),
                    width=8,
                ),
            ),
        ),
        (
            "Outbox, reconciler, dependencies",
            (
                Panel(
                    "Outbox pending",
                    "Ingestion's events written to the database but not yet confirmed by Kafka.",
                    "short",
                    (Query("sum by (job) (cxrmesh_outbox_pending)", "{{job}}"),),
                    width=8,
                ),
                Panel(
                    "Reconciler",
                    "Studies the reconciler found stalled, and those it re-drove.",
                    "short",
                    (
                        Query("max(cxrmesh_reconciler_stuck_studies)", "stuck"),
                        Query(f"sum(increase(cxrmesh_reconciler_redriven_total[{RATE}]))", "re-driven"),
                    ),
                    width=8,
                ),
                Panel(
                    "Services that cannot reach a dependency",
                    "Per dependency (kafka, triton, milvus, database...), the services whose health check "
                    "cannot reach it: 0 when all is well.",
                    "short",
                    (Query("sum by (dependency) (1 - cxrmesh_dependency_up)", "{{dependency}}"),),
                    width=8,
                ),
            ),
        ),
    ),
)


def _per_request(duration_us: str) -> str:
    """Mean milliseconds per successful request of a Triton duration counter (microseconds)."""
    return (
        f"{rate(duration_us, 'model')} / 1000 / "
        f"clamp_min({rate('nv_inference_request_success', 'model')}, 1e-9)"
    )


TRITON = Board(
    "cxrmesh-triton",
    "cxrmesh / Triton",
    "tritonserver per model: requests, failures, where the time goes (queue, compute), batching; and "
    "the services' side of the same calls.",
    (
        (
            "Per model (tritonserver)",
            (
                Panel(
                    "Successful requests per second",
                    "nv_inference_request_success.",
                    "reqps",
                    (Query(rate("nv_inference_request_success", "model", 'job="triton"'), "{{model}}"),),
                ),
                Panel(
                    "Failed requests per second",
                    "nv_inference_request_failure (any reason).",
                    "reqps",
                    (Query(rate("nv_inference_request_failure", "model", 'job="triton"'), "{{model}}"),),
                ),
                Panel(
                    "Queue time per request",
                    "Mean time a request waited in Triton's scheduler queue.",
                    "ms",
                    (Query(_per_request("nv_inference_queue_duration_us"), "{{model}}"),),
                    width=8,
                ),
                Panel(
                    "Compute time per request",
                    "Mean time in the model itself (compute infer).",
                    "ms",
                    (Query(_per_request("nv_inference_compute_infer_duration_us"), "{{model}}"),),
                    width=8,
                ),
                Panel(
                    "Inferences per execution (batching)",
                    "nv_inference_count / nv_inference_exec_count: above 1 when Triton batched requests.",
                    "short",
                    (
                        Query(
                            f"{rate('nv_inference_count', 'model')} / "
                            f"clamp_min({rate('nv_inference_exec_count', 'model')}, 1e-9)",
                            "{{model}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
        (
            "As the services see it",
            (
                Panel(
                    "Triton call latency p95 (services' side)",
                    "cxrmesh_triton_request_seconds, retries included.",
                    "s",
                    quantiles("cxrmesh_triton_request_seconds", "model", qs=(0.95,)),
                ),
                Panel(
                    "Triton calls by outcome",
                    "Calls the services made, by model and outcome.",
                    "reqps",
                    (
                        Query(
                            rate("cxrmesh_triton_request_seconds_count", "model, outcome"),
                            "{{model}} {{outcome}}",
                        ),
                    ),
                ),
            ),
        ),
    ),
)

MODEL_HEALTH = Board(
    "cxrmesh-model-health",
    "cxrmesh / Model health",
    "What the models see and say, as distributions over time: a shift here (lung areas, landmark "
    "confidence, embedding norms, neighbour distances, refusals) is how input drift or a bad model "
    "version shows before anyone reads a report.",
    (
        (
            "Admission",
            (
                Panel(
                    "Ingest accepted and rejected",
                    "DICOM files accepted, and refused by reason.",
                    "ops",
                    (
                        Query(f"sum(rate(cxrmesh_ingest_accepted_total[{RATE}]))", "accepted"),
                        Query(rate("cxrmesh_ingest_rejected_total", "reason"), "rejected: {{reason}}"),
                    ),
                ),
                Panel(
                    "Quality gate verdicts",
                    "Studies by the image quality gate's verdict (pass, flagged, refused).",
                    "ops",
                    (Query(rate("cxrmesh_quality_gate_total", "verdict"), "{{verdict}}"),),
                ),
            ),
        ),
        (
            "Segmentation and landmarks",
            (
                Panel(
                    "Lung area fraction (p5, p50, p95)",
                    "Each lung's share of the model-input frame: a shift means the films or the segmenter "
                    "changed; near 0, a lung was lost.",
                    "percentunit",
                    quantiles("cxrmesh_lung_area_fraction", "side", qs=(0.05, 0.5, 0.95)),
                ),
                Panel(
                    "Landmark confidence (p10, p50)",
                    "Calibrated confidence of each detected landmark.",
                    "percentunit",
                    quantiles("cxrmesh_landmark_confidence", "landmark", qs=(0.1, 0.5)),
                ),
                Panel(
                    "Implausible landmarks",
                    "Detected landmarks rejected by the plausibility checks, by problem.",
                    "ops",
                    (Query(rate("cxrmesh_landmark_implausible_total", "problem"), "{{problem}}"),),
                ),
                Panel(
                    "Landmark fallbacks",
                    "Studies whose landmarks were estimated from the lung map instead.",
                    "ops",
                    (Query(f"sum(rate(cxrmesh_landmark_fallbacks_total[{RATE}]))", "fallbacks"),),
                ),
            ),
        ),
        (
            "Embeddings and retrieval",
            (
                Panel(
                    "Embedding norm (p5, p50, p95)",
                    "L2 norm of the served embeddings: 1 by contract (the embedder normalises in its graph); "
                    "any other value means a broken model export.",
                    "short",
                    quantiles("cxrmesh_embedding_norm", "job", qs=(0.05, 0.5, 0.95)),
                ),
                Panel(
                    "Nearest-neighbour distance (p50, p95)",
                    "Cosine distance from a query to its nearest case: rising means new studies look unlike "
                    "everything indexed (a new site or scanner, or a drifting embedder).",
                    "short",
                    quantiles("cxrmesh_neighbour_distance", "job", qs=(0.5, 0.95)),
                ),
            ),
        ),
    ),
)

BOARDS = (OVERVIEW, PIPELINE, TRITON, MODEL_HEALTH)


def _panel(spec: Panel, panel_id: int) -> timeseries.Panel | stat.Panel:
    builder = stat.Panel() if spec.kind == "stat" else timeseries.Panel()
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .unit(spec.unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(spec.width)
    )
    for ref, q in zip("ABCDEFGH", spec.queries, strict=False):
        builder = builder.with_target(
            Dataquery().expr(q.expr).legend_format(q.legend).ref_id(ref).datasource(DATASOURCE)
        )
    if isinstance(builder, timeseries.Panel):
        legend = VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST)
        builder = builder.legend(legend.placement(LegendPlacement.BOTTOM)).fill_opacity(10)
    return builder


def dashboard(board: Board) -> dict:
    """The dashboard's JSON model (what Grafana imports), built with the foundation SDK."""
    builder = (
        Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(["cxrmesh"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    panel_id = 1
    for row_title, panels in board.rows:
        builder = builder.with_row(Row(row_title).id(panel_id))
        panel_id += 1
        for spec in panels:
            builder = builder.with_panel(_panel(spec, panel_id))
            panel_id += 1
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def render() -> dict[Path, str]:
    """Every file this writes, by path: one JSON per dashboard and the ConfigMaps that carry them."""
    files: dict[Path, str] = {}
    configmaps = []
    for board in BOARDS:
        text = json.dumps(dashboard(board), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        files[JSON_DIR / f"{board.uid}.json"] = text
        configmaps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"grafana-dashboard-{board.uid.removeprefix('cxrmesh-')}",
                    "labels": {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "cxrmesh"},
                    "annotations": {"grafana_folder": "cxrmesh"},
                },
                "data": {f"{board.uid}.json": text},
            }
        )
    header = (
        "# Generated by scripts/dashboards.py from the same dashboards as k8s/monitoring/dashboards/:\n"
        "# do not edit. The Grafana sidecar of kube-prometheus-stack loads ConfigMaps labelled\n"
        '# grafana_dashboard: "1" (set sidecar.dashboards.searchNamespace to include this namespace;\n'
        "# grafana_folder is read when sidecar.dashboards.folderAnnotation is grafana_folder).\n"
    )
    files[CONFIGMAPS] = header + yaml.safe_dump_all(
        configmaps, sort_keys=False, width=110, allow_unicode=True
    )
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'} {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
