"""``Mesh(monitoring=True)`` with real processes: Prometheus scrapes every service (HTTPS with its own
client certificate from the mesh CA) and Triton, evaluates the rules of k8s/monitoring, and a killed
service raises the matching alert.

Why against a real mesh: a rule or dashboard query over a metric name no process exports is silent
(an empty panel, an alert that can never fire) and no unit test notices. So every metric name in any
rule (recording and alerting) and in any dashboard panel must have at least one series once a few
studies went through, except the names in ``ABSENT_ALLOWED`` (each with why), and every recording
rule must evaluate to something. Prometheus 2.42 from Debian (``make debs``); the mesh as in
tests/e2e (Tansu, Milvus Lite, tritonserver, the seven services), mutual TLS on.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from typer.testing import CliRunner

from cxrmesh.cli import app
from cxrmesh.client import ingest_bytes, manifest_headers
from cxrmesh.local.mesh import SERVICES, Mesh, MeshState
from cxrmesh.local.pki import LocalCA
from cxrmesh.local.prometheus import (
    PROMETHEUS,
    Target,
    copy_rules,
    monitoring_parts,
    rule_files,
    rule_groups,
)
from cxrmesh.v1 import ingestion_pb2_grpc, search_pb2, search_pb2_grpc, studyview_pb2, studyview_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
STUDIES = 4
KILLED = "prognosis"  # the service the fault test kills (one replica: its job has no healthy target left)
# metric names that may have no series after the happy path here, each with why; keep it short:
# labelled counters should be created at 0 in code instead (prometheus_client: .labels(...) once)
ABSENT_ALLOWED: dict[str, str] = {}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


# --------------------------------------------------------------------------- PromQL names
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
_KEYWORDS |= {"offset", "inf", "nan", "Inf", "NaN", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (no functions, labels, keywords or durations)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    expr = _STRINGS.sub('""', expr)
    expr = _MATCHERS.sub("", expr)
    expr = _RANGES.sub("", expr)
    expr = _GROUPING.sub("", expr)
    return set(_NAME.findall(expr)) - _KEYWORDS


def test_metric_names_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{job=~"x|y", le="1"}[$__rate_interval])))'
        " / clamp_min(sum without (instance) (b_total offset 5m), 1e-9) or on (job) vector(0)"
        " + slo:sli_error:ratio_rate5m{slo='x'} > bool 0"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "slo:sli_error:ratio_rate5m"}


def test_rule_files_are_found_and_test_files_left_out(tmp_path: Path) -> None:
    rule = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0"}]}]}
    crd = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"}}
    (tmp_path / "plain-rules.yaml").write_text(yaml.safe_dump(rule))
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump({**crd, "spec": rule}))
    (tmp_path / "plain-tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["plain-rules.yaml"], "tests": []})
    )
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"kind": "ConfigMap", "metadata": {"name": "y"}}))
    found = rule_files(tmp_path)
    assert [p.name for p in found] == ["crd.yaml", "plain-rules.yaml"]
    copies = copy_rules(found, tmp_path / "copies")
    assert all(yaml.safe_load(p.read_text()) == rule for p in copies)


def test_the_written_config_passes_promtool(tmp_path: Path) -> None:
    """What ``monitoring_parts`` writes is a configuration Prometheus accepts (promtool checks the
    certificate files exist and the rule files parse too)."""
    tls = LocalCA(tmp_path / "pki").issue(PROMETHEUS)
    targets = [
        Target("ingestion", 0, "https://127.0.0.1:20001/metrics"),
        Target("ingestion", 1, "https://127.0.0.1:20002/metrics"),
        Target("triton", 0, "http://127.0.0.1:20003/metrics"),
    ]
    parts = monitoring_parts(tmp_path, targets, tls, (20004, 20005))
    assert [p.name for p in parts] == ["alertmanager", "prometheus"]
    config = tmp_path / "monitoring" / "prometheus.yml"
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {j["job_name"]: j for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert [c["labels"]["replica"] for c in jobs["ingestion"]["static_configs"]] == ["0", "1"]
    assert (
        jobs["ingestion"]["tls_config"]["cert_file"] == str(tls.cert) and "tls_config" not in jobs["triton"]
    )
    prometheus = parts[1].argv
    assert "--web.listen-address=127.0.0.1:20005" in prometheus
    assert not any("lifecycle" in a or "admin-api" in a for a in prometheus)
    # closed like every port: both processes take the basic-auth web config, which holds a bcrypt
    # hash and never the password; the password file is the owner's only
    web = tmp_path / "monitoring" / "web-config.yml"
    assert all(f"--web.config.file={web}" in part.argv for part in parts)
    checked = subprocess.run(["promtool", "check", "web-config", str(web)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    password = (tmp_path / "monitoring" / "web.password").read_text()
    assert password not in web.read_text() and password not in config.read_text()
    assert (tmp_path / "monitoring" / "web.password").stat().st_mode & 0o077 == 0


def rules() -> list[dict[str, Any]]:
    return [r for path in rule_files() for g in rule_groups(path) or [] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted((ROOT / "k8s/monitoring/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


# --------------------------------------------------------------------------- the mesh
class Monitored:
    def __init__(self, mesh: Mesh, state: MeshState):
        self.mesh, self.state = mesh, state
        self.api = state.prometheus()


def _until(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(every_s)


def _traffic(state: MeshState, corpus: Path) -> None:
    """A few studies through every stage, one refused file, one search: the paths the rules watch."""
    with state.channel("ingestion") as ch, state.channel("studyview") as vch, state.channel("search") as sch:
        ingest = ingestion_pb2_grpc.IngestionServiceStub(ch)
        keys = [
            ingest_bytes(ingest, path.read_bytes(), header).study_key
            for path, header in sorted(manifest_headers(corpus / "manifest.jsonl").items())[:STUDIES]
        ]
        with pytest.raises(grpc.RpcError) as refused:  # a PNG sent instead of DICOM
            ingest_bytes(ingest, b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        view = studyview_pb2_grpc.StudyViewServiceStub(vch)

        def complete() -> bool:
            for key in keys:
                try:
                    got = view.GetStudy(studyview_pb2.GetStudyRequest(study_key=key), timeout=30)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
                    return False
                if not got.complete:
                    return False
            return True

        _until("every study complete", complete, 240, every_s=2)
        search = search_pb2_grpc.SearchServiceStub(sch)
        assert search.FindSimilar(search_pb2.FindSimilarRequest(study_key=keys[0], k=2), timeout=30).cases


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Iterator[Monitored]:
    home = tmp_path_factory.mktemp("monitored")
    mesh = Mesh(
        home,
        ports="auto",
        monitoring=True,
        pacs=True,  # the PACS sender has a destination: its per-destination series exist
        env={"CXRMESH_KAFKA_SESSION_TIMEOUT_MS": "2000", "CXRMESH_KAFKA_HEARTBEAT_MS": "500"},
    )
    run = Monitored(mesh, mesh.up(timeout_s=240))
    try:
        _traffic(run.state, corpus)
        # two scrapes (5 s apart) and a rule evaluation after the last event
        time.sleep(12)
        yield run
    finally:
        mesh.down()


# --------------------------------------------------------------------------- the checks
@pytest.mark.mesh
def test_every_target_is_up_with_job_and_replica(monitored: Monitored) -> None:
    targets = monitored.api.targets()
    jobs = {t["labels"]["job"] for t in targets}
    services = {s.replace("_", "-") for s in SERVICES}  # the job is the workload's name, as in the cluster
    assert jobs == {*services, "triton", "prometheus", "alertmanager"}
    down = [(t["labels"]["job"], t["lastError"]) for t in targets if t["health"] != "up"]
    assert not down, down
    assert all(t["labels"].get("replica") == "0" for t in targets)
    https = {t["labels"]["job"] for t in targets if t["scrapeUrl"].startswith("https://")}
    assert https == services  # the services' metrics need the client certificate; Triton's are plain
    alertmanager = next(p.endpoint for p in monitored.state.procs if p.name == "alertmanager")
    active = monitored.api.get("/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"{alertmanager}/api/v2/alerts"]


@pytest.mark.mesh
def test_prometheus_and_alertmanager_refuse_callers_without_the_password(monitored: Monitored) -> None:
    """Closed by default: no answer without the password, a wrong one is refused too (the
    targets above being up shows Prometheus signs in to Alertmanager and to itself)."""
    for name in ("prometheus", "alertmanager"):
        url = next(p.endpoint for p in monitored.state.procs if p.name == name)
        for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}):
            request = urllib.request.Request(f"{url}/-/ready", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 401, name


@pytest.mark.mesh
def test_every_metric_of_the_rules_and_dashboards_has_series(monitored: Monitored) -> None:
    all_rules = rules()
    assert all_rules, "no rule files in k8s/monitoring"
    recorded = {r["record"] for r in all_rules if "record" in r}
    wanted: dict[str, set[str]] = {}
    for rule in all_rules:
        for name in metric_names(rule["expr"]):
            wanted.setdefault(name, set()).add(f"rule {rule.get('record') or rule.get('alert')}")
    for expr in dashboard_exprs():
        for name in metric_names(expr):
            wanted.setdefault(name, set()).add("a dashboard")
    present = set(monitored.api.get("/api/v1/label/__name__/values"))
    # recorded names are checked through their expressions below (long-window groups run every few minutes)
    missing = {n: sorted(w) for n, w in wanted.items() if n not in present | recorded | ABSENT_ALLOWED.keys()}
    assert not missing, f"metric names without a series (used by): {missing}"
    stale_allowance = sorted(n for n in ABSENT_ALLOWED if n in present or n not in wanted)
    assert not stale_allowance, (
        f"ABSENT_ALLOWED lists names that do have series or are unused: {stale_allowance}"
    )

    def empty() -> list[str]:
        return sorted(
            {r["record"] for r in all_rules if "record" in r and not monitored.api.query(r["expr"])}
        )

    # a rule over another rule's output needs that one recorded first (a group's next evaluation)
    deadline = time.monotonic() + 30
    while empty() and time.monotonic() < deadline:
        time.sleep(2)
    assert not empty(), f"recording rules that evaluate to nothing: {empty()}"
    broken = [
        (rule["name"], rule.get("lastError"))
        for group in monitored.api.rules()
        for rule in group["rules"]
        if rule["health"] == "err"
    ]
    assert not broken, broken


@pytest.mark.mesh
def test_status_shows_the_monitoring_urls(monitored: Monitored) -> None:
    result = CliRunner().invoke(app, ["status", "--home", monitored.state.home])
    assert result.exit_code == 0, result.output
    prometheus = next(p.endpoint for p in monitored.state.procs if p.name == "prometheus")
    alertmanager = next(p.endpoint for p in monitored.state.procs if p.name == "alertmanager")
    assert f"{prometheus}/alerts" in result.output and f"{alertmanager}/" in result.output
    assert prometheus.startswith("http://127.0.0.1:") and alertmanager.startswith("http://127.0.0.1:")


@pytest.mark.mesh
def test_prometheus_restarts_like_any_process_of_the_mesh(monitored: Monitored) -> None:
    monitored.mesh.kill("prometheus")
    monitored.mesh.restart("prometheus", timeout_s=60)
    _until("targets after the restart", lambda: len(monitored.api.targets()) == len(SERVICES) + 3, 30)
    assert monitored.api.query("up") is not None


@pytest.mark.mesh
def test_a_killed_service_raises_its_alert(monitored: Monitored) -> None:
    """Killing the only replica of a service turns an alert over ``up`` pending (or firing)."""
    on_up = {r["alert"] for r in rules() if "alert" in r and "up" in metric_names(r["expr"])}
    assert on_up, "no alert in k8s/monitoring/*-rules.yaml watches `up` (a target or service down)"

    def raised() -> list[dict[str, Any]]:
        return [
            a
            for a in monitored.api.alerts()
            if a["labels"]["alertname"] in on_up
            and a["labels"].get("job", KILLED) == KILLED
            and a["state"] in ("pending", "firing")
        ]

    assert not raised(), "the alert was already raised before the fault"
    monitored.mesh.kill(KILLED)
    _until(f"an alert over `up` for {KILLED}", raised, 60)
