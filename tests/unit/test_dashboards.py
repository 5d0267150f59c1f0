"""The dashboards as code (scripts/dashboards.py): committed files match the generator, every panel
has queries that Prometheus' own parser (promtool) accepts, and the ConfigMaps follow the Grafana
sidecar's convention.

Why promtool and not a regex: a query Grafana cannot run shows as an empty panel, found only when
someone needs it. promtool parses each expression exactly as Prometheus will: here as recording
rules in a throwaway rule file (Grafana's own ``$__rate_interval``/``$__range`` replaced by durations).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# labels whose values are a short, fixed list (the project's label rule, src/cxrmesh/runtime/metrics.py)
BOUNDED_LABELS = {
    "job",
    "stage",
    "outcome",
    "topic",
    "group",
    "model",
    "service",
    "dependency",
    "reason",
    "verdict",
    "side",
    "landmark",
    "problem",
    "grpc_code",
    "grpc_method",
    "replica",
    "slo",
}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "scripts" / "dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["dashboards"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return _generator()


def promql(expr: str) -> str:
    """A panel's expression as Prometheus would get it from Grafana (its variables expanded)."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_committed_files_are_what_the_generator_writes(generator: ModuleType) -> None:
    rendered = generator.render()
    assert rendered, "the generator wrote nothing"
    for path, text in rendered.items():
        assert path.is_file(), f"{path} missing: run `python scripts/dashboards.py`"
        assert path.read_text() == text, (
            f"{path} differs from the generator: run `python scripts/dashboards.py`"
        )
    committed = set((ROOT / "k8s/monitoring/dashboards").glob("*.json"))
    assert committed == {p for p in rendered if p.suffix == ".json"}, "a dashboard JSON no generator writes"
    assert generator.main(["--check"]) == 0


def test_every_panel_has_a_query_that_promtool_parses(generator: ModuleType, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: `make debs`"
    rules = []
    for board in map(generator.dashboard, generator.BOARDS):
        for panel in panels(board):
            exprs = [t.get("expr", "") for t in panel.get("targets", [])]
            assert exprs and all(exprs), f"{board['uid']}: panel {panel['title']!r} has no query"
            for i, expr in enumerate(exprs):
                assert "$" not in promql(expr), f"an unexpanded Grafana variable in {expr}"
                rules.append(
                    {
                        "record": f"dashboard:{board['uid'].replace('-', '_')}:{panel['id']}_{i}",
                        "expr": promql(expr),
                    }
                )
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_check_can_fail(tmp_path: Path) -> None:
    """The check above means something: promtool refuses a broken expression."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(a[1m]"}]}]})
    )
    result = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode != 0


def test_dashboards_are_well_formed(generator: ModuleType) -> None:
    uids = [b.uid for b in generator.BOARDS]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)  # Grafana's uid limit
    for board in map(generator.dashboard, generator.BOARDS):
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), f"{board['uid']}: duplicate panel ids"
        assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
        for panel in panels(board):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_configmaps_follow_the_sidecar_convention(generator: ModuleType) -> None:
    docs = list(yaml.safe_load_all((ROOT / "k8s/base/grafana-dashboards.yaml").read_text()))
    assert len(docs) == len(generator.BOARDS)
    for doc in docs:
        assert doc["kind"] == "ConfigMap" and doc["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = doc["data"].items()
        assert json.loads(text) == json.loads((ROOT / "k8s/monitoring/dashboards" / name).read_text())
        assert len(text.encode()) < 1 << 20  # a ConfigMap holds at most 1 MiB


def test_queries_group_by_bounded_labels_only(generator: ModuleType) -> None:
    """Dashboards group and name series by bounded labels only: a study or patient key never is one."""
    for board in map(generator.dashboard, generator.BOARDS):
        for panel in panels(board):
            for target in panel["targets"]:
                grouped = re.findall(r"\bby \(([^)]*)\)", target["expr"])
                labels = {x.strip() for g in grouped for x in g.split(",")} - {"le"}
                labels |= set(re.findall(r"{{(\w+)}}", target["legendFormat"]))
                assert labels <= BOUNDED_LABELS, (panel["title"], labels - BOUNDED_LABELS)


def test_slo_budgets_match_the_rules(generator: ModuleType) -> None:
    """The burn-rate panels divide by the same error budgets as the alerts of the SLO rule files."""
    alerts = [
        rule["expr"]
        for path in sorted((ROOT / "k8s/monitoring").glob("*-rules.yaml"))
        for group in yaml.safe_load(path.read_text()).get("groups", [])
        for rule in group["rules"]
        if "alert" in rule
    ]
    for slo, budget in generator.SLO_BUDGETS.items():
        assert any(f'slo="{slo}"' in e and f"{budget:g}" in e for e in alerts), f"{slo}: budget {budget:g}"
