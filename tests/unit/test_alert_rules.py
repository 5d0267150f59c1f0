"""The SLO, recording and alert rules (k8s/monitoring/*-rules.yaml) checked by the real promtool.

Why: an alert that never fires, fires on noise, or points to a runbook that does not exist is found
during an outage, which is the worst time. So: promtool checks the rules and runs their unit tests
(k8s/monitoring/*-tests.yaml: synthetic series on which every alert fires once and stays quiet once);
every alert carries a severity, a summary, a description and a runbook URL whose anchor is a heading of
docs/operations.md; every thresholded bucket (`le`) and median bound sits on a bucket boundary of the
histogram the services export (else the SLI silently interpolates); the PodMonitors give the `job`
label the rules group by; and k8s/base/prometheus-rules.yaml is exactly what
scripts/monitoring_rules.py writes from the rule files (no hand edit drifts). `make test` installs
promtool (Debian package prometheus); without it the promtool tests skip and say so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from cxrmesh.runtime import metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s" / "monitoring"
RULE_FILES = sorted(MONITORING.glob("*-rules.yaml"))
TEST_FILES = sorted(MONITORING.glob("*-tests.yaml"))
GENERATED = ROOT / "k8s" / "base" / "prometheus-rules.yaml"
SCRIPT = ROOT / "scripts" / "monitoring_rules.py"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/cxrmesh/cxrmesh/blob/main/docs/operations.md#"
SEVERITIES = {"page", "ticket"}
# histogram -> the buckets the services export it with (src/cxrmesh/runtime/metrics.py)
BUCKETS = {
    "grpc_server_handling_seconds": metrics.LATENCY_BUCKETS,
    "cxrmesh_study_complete_seconds": metrics.STUDY_COMPLETE_BUCKETS,
    "cxrmesh_lung_area_fraction": metrics.AREA_FRACTION_BUCKETS,
    "cxrmesh_landmark_confidence": metrics.PROBABILITY_BUCKETS,
    "cxrmesh_embedding_norm": metrics.EMBEDDING_NORM_BUCKETS,
    "cxrmesh_neighbour_distance": metrics.COSINE_DISTANCE_BUCKETS,
}
LE_MATCHER = re.compile(r"\b(\w+)_bucket\{[^}]*\ble=~?\"([0-9.]+)")
MEDIAN_BOUND = re.compile(r"\b(?:\w+:)?(\w+):median\w*\s*[<>]=?\s*([0-9.]+)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian package prometheus; `make test` installs it)")
    return found


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=MONITORING
    )


def rule_groups() -> list[dict[str, Any]]:
    return [g for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def alert_cases() -> list[tuple[str, list[dict[str, Any]]]]:
    """(alertname, expected alerts) of every alert_rule_test case of the promtool unit tests."""
    cases = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test") or []:
                cases.append((case["alertname"], case.get("exp_alerts") or []))
    return cases


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered (-1, -2, ...). Headings inside fenced code blocks are not headings."""
    anchors: set[str] = set()
    seen: Counter[str] = Counter()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return anchors


# ------------------------------------------------------------------------------------------ promtool


def test_the_rule_and_test_files_are_there() -> None:
    assert {p.name for p in RULE_FILES} >= {
        "slo-rules.yaml",
        "platform-rules.yaml",
        "model-health-rules.yaml",
    }
    assert len(TEST_FILES) >= len(RULE_FILES)


def test_promtool_checks_the_rules() -> None:
    out = run_promtool("check", "rules", *RULE_FILES)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("tests", TEST_FILES, ids=[p.name for p in TEST_FILES])
def test_promtool_unit_tests_pass(tests: Path) -> None:
    out = run_promtool("test", "rules", tests.name)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_checks_the_generated_prometheusrule(tmp_path: Path) -> None:
    """What the operator loads is valid too (its spec, as a plain rule file)."""
    resource = yaml.safe_load(GENERATED.read_text())
    plain = tmp_path / "prometheusrule.yaml"
    plain.write_text(yaml.safe_dump({"groups": resource["spec"]["groups"]}, sort_keys=False))
    out = run_promtool("check", "rules", plain)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------------- alert contents


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    alerts = alert_rules()
    assert len({a["alert"] for a in alerts}) >= 20
    for rule in alerts:
        name, labels, notes = rule["alert"], rule.get("labels") or {}, rule.get("annotations") or {}
        assert labels.get("severity") in SEVERITIES, f"{name}: severity {labels.get('severity')!r}"
        for key in ("summary", "description"):
            assert str(notes.get(key, "")).strip(), f"{name}: no {key}"
        assert notes.get("runbook_url") == RUNBOOK_BASE + name.lower(), f"{name}: runbook_url"


def test_every_runbook_anchor_is_a_heading_of_operations_md() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    missing = {
        a["alert"]: a["annotations"]["runbook_url"]
        for a in alert_rules()
        if a["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE) not in anchors
    }
    assert not missing, f"no heading in docs/operations.md for {missing}"


def test_github_anchors_are_computed_as_github_does() -> None:
    text = "# A `cxrmesh` title: v2\n## Point-in-time restore\n```sh\n# not a heading\n```\n"
    text += "## Point-in-time restore\n"
    assert github_anchors(text) == {"a-cxrmesh-title-v2", "point-in-time-restore", "point-in-time-restore-1"}


def test_every_alert_fires_and_stays_quiet_in_a_promtool_test() -> None:
    """Each alert has a case where it fires (each of its severities) and one where it is expected quiet."""
    cases = alert_cases()
    firing = {(name, alert["exp_labels"]["severity"]) for name, exp in cases for alert in exp}
    quiet = {name for name, exp in cases if not exp}
    for rule in alert_rules():
        name, severity = rule["alert"], rule["labels"]["severity"]
        assert (name, severity) in firing, f"{name} ({severity}) never fires in k8s/monitoring/*-tests.yaml"
        assert name in quiet, f"{name} is never expected quiet in k8s/monitoring/*-tests.yaml"
    unknown = {name for name, _ in cases} - {r["alert"] for r in alert_rules()}
    assert not unknown, f"tests of alerts that do not exist: {unknown}"


def test_thresholds_sit_on_bucket_boundaries() -> None:
    """An `le` the rules select, or a median they bound, is a bucket the service exports: a bucket
    that does not exist selects nothing, and a bound between buckets is decided by interpolation."""
    checked: set[str] = set()
    for group in rule_groups():
        for rule in group["rules"]:
            expr = rule["expr"]
            for metric, value in LE_MATCHER.findall(expr) + MEDIAN_BOUND.findall(expr):
                assert metric in BUCKETS, f"{rule.get('alert') or rule.get('record')}: buckets of {metric}?"
                assert float(value) in BUCKETS[metric], f"{metric}: {value} is not one of {BUCKETS[metric]}"
                checked.add(metric)
    assert checked == set(BUCKETS), f"no bounded bucket or median found for {set(BUCKETS) - checked}"


def test_podmonitors_name_the_job_after_the_service() -> None:
    """The rules group by `job` = service name (ingestion, ..., triton): the PodMonitors' jobLabel."""
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "base" / "monitoring.yaml").read_text()) if d]
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    assert len(monitors) == 2
    for monitor in monitors:
        assert monitor["spec"].get("jobLabel") == "app.kubernetes.io/name", monitor["metadata"]["name"]


# ------------------------------------------------------------------------------------ generated copy


def test_prometheusrule_is_what_the_script_writes() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr + "\n(run: python scripts/monitoring_rules.py)"


def test_prometheusrule_carries_every_group_for_the_operator() -> None:
    resource = yaml.safe_load(GENERATED.read_text())
    assert (resource["apiVersion"], resource["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert resource["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "cxrmesh",
        "release": "kube-prometheus-stack",
    }
    assert resource["spec"]["groups"] == rule_groups()
    kustomization = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())
    assert "prometheus-rules.yaml" in kustomization["resources"]
