"""Local monitoring for ``cxrmesh up --monitoring``: Prometheus and Alertmanager next to the mesh.

Why: the cluster's rules (``k8s/monitoring/*-rules.yaml``) and dashboards should be seen working
against real processes before they reach a cluster, and an operator of the local mesh should see
the same alerts. This module writes the configs and the two launch commands; ``cxrmesh.local.mesh``
starts, records and restarts them like its other processes.

Scraping follows the cluster's conventions (k8s/base/monitoring.yaml): one job per service, named
after it as its workload is (``job`` = service name, ``_`` written ``-``, since Kubernetes names allow no
``_``: ``pacs-sender``), every target also labelled ``replica``; ``triton`` for Triton's
plain-HTTP metrics port. The services' /metrics is HTTPS that asks for a client certificate from the
mesh CA, so Prometheus presents the ``prometheus`` identity (role ``ops``, client use only), as it
does in a cluster. Alerts go to a local Alertmanager whose only receiver is a null one: locally they
are to be seen in the UIs and APIs, not sent anywhere.

Access: both bind 127.0.0.1 only and are closed like every other port of the mesh: HTTP basic
authentication (their ``--web.config.file``), user ``ops``, a password made once per mesh home and kept
0600 in ``<home>/monitoring/web.password`` (only its bcrypt hash is in the web configs; the
password itself is in no argv, log or URL). Prometheus signs in to Alertmanager and to itself with
the same file (``password_file``). ``cxrmesh status`` says where the file is. Prometheus runs without
``--web.enable-lifecycle`` and without the admin API, so no one can reload, stop it or delete data
over HTTP. Plain HTTP on loopback: no network hop to protect; a cluster's Prometheus is the
operator's (k8s/base/monitoring.yaml).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import secrets
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cxrmesh.local.pki import Identity
from cxrmesh.local.secret_files import keep_secret
from cxrmesh.runtime.tls import TlsFiles

PROMETHEUS = Identity("prometheus", ("ops",))  # CN prometheus, role ops, no server names: client only
SCRAPE_INTERVAL = "5s"  # locally; the cluster's PodMonitors use 30s
RETENTION = "3d"
RULES_DIR = Path(__file__).resolve().parents[3] / "k8s" / "monitoring"  # a source checkout's rules
FOLDER = "monitoring"  # under the mesh home: configs, rule copies, TSDB, Alertmanager's data
WEB_USER = "ops"
PASSWORD_FILE = "web.password"  # in FOLDER, 0600
WEB_CONFIG = "web-config.yml"  # in FOLDER: the bcrypt hash, for both processes' --web.config.file
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A process to scrape: its job (the service's name, or ``triton``), replica and /metrics URL."""

    job: str
    replica: int
    metrics: str


@dataclass(frozen=True)
class Part:
    """One monitoring process: its name (log file, mesh.json), command, URL, readiness probe."""

    name: str
    argv: list[str]
    url: str
    ready: Callable[[], bool]


def web_password(home: Path) -> Path:
    """The file holding the local Prometheus/Alertmanager password (made once, 0600, then reused)."""
    path = Path(home) / FOLDER / PASSWORD_FILE
    keep_secret(path, lambda: secrets.token_urlsafe(24))
    return path


def web_config(password_file: Path) -> dict[str, Any]:
    """The ``--web.config.file`` of both processes: basic auth for ``WEB_USER``, bcrypt only."""
    import bcrypt

    hashed = bcrypt.hashpw(Path(password_file).read_text().strip().encode(), bcrypt.gensalt(rounds=10))
    return {"basic_auth_users": {WEB_USER: hashed.decode()}}


def authorization(password_file: Path) -> str:
    """The ``Authorization`` header value that signs in as ``WEB_USER``."""
    pair = f"{WEB_USER}:{Path(password_file).read_text().strip()}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def binary(name: str) -> str:
    """The Debian binary (``prometheus``, ``prometheus-alertmanager``), or why it is missing."""
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed: `make debs` installs it (Debian package)")
    return path


def rule_groups(path: Path) -> list[dict[str, Any]] | None:
    """The rule groups of a YAML file, or None when it is not a rule file.

    A plain Prometheus rule file (top-level ``groups``) and a ``PrometheusRule`` resource (its
    ``spec.groups``) both count; promtool test files (``rule_files``/``tests``, named ``*-tests.yaml``)
    and any other manifest do not.
    """
    if path.name.endswith("-tests.yaml"):
        return None
    docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    groups: list[dict[str, Any]] = []
    for doc in docs:
        if "tests" in doc or "rule_files" in doc:
            return None
        if doc.get("kind") == "PrometheusRule":
            groups += doc.get("spec", {}).get("groups", [])
        elif isinstance(doc.get("groups"), list):
            groups += doc["groups"]
    return groups or None


def rule_files(folder: Path = RULES_DIR) -> list[Path]:
    """The rule files among ``folder``'s ``*.yaml`` (sorted); none when the folder is not there."""
    return [p for p in sorted(Path(folder).glob("*.yaml")) if rule_groups(p) is not None]


def copy_rules(sources: Sequence[Path], into: Path) -> list[Path]:
    """Each rule file as a plain Prometheus rule file in ``into`` (a PrometheusRule's spec unwrapped)."""
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("*.yaml"):
        old.unlink()
    out = []
    for src in sources:
        dest = into / src.name
        dest.write_text(yaml.safe_dump({"groups": rule_groups(src)}, sort_keys=False))
        out.append(dest)
    return out


def scrape_configs(targets: Iterable[Target], tls: TlsFiles | None) -> list[dict[str, Any]]:
    """One job per service (every replica a target with its ``replica`` label) and ``triton``."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    schemes: dict[str, str] = {}
    for t in targets:
        url = urllib.parse.urlsplit(t.metrics)
        t = dataclasses.replace(t, job=t.job.replace("_", "-"))  # the workload's name, as in the cluster
        jobs.setdefault(t.job, []).append({"targets": [url.netloc], "labels": {"replica": str(t.replica)}})
        schemes[t.job] = url.scheme
    configs = []
    for job, static in jobs.items():
        config: dict[str, Any] = {"job_name": job, "scheme": schemes[job], "static_configs": static}
        if schemes[job] == "https":
            if tls is None:
                raise ValueError(f"{job} serves https metrics: Prometheus needs a client certificate")
            config["tls_config"] = {
                "ca_file": str(tls.ca),
                "cert_file": str(tls.cert),
                "key_file": str(tls.key),
            }
        configs.append(config)
    return configs


def prometheus_config(
    targets: Iterable[Target],
    tls: TlsFiles | None,
    rules: Sequence[Path],
    alertmanager: str,
    self_address: str,
    password_file: Path | None = None,
) -> dict[str, Any]:
    """prometheus.yml for a running mesh: its targets, the rules, the local Alertmanager (signing in
    to it and to itself with ``password_file`` when given)."""
    auth = {}
    if password_file:
        auth = {"basic_auth": {"username": WEB_USER, "password_file": str(password_file)}}
    own = [
        {"job_name": name, "static_configs": [{"targets": [address], "labels": {"replica": "0"}}], **auth}
        for name, address in (("prometheus", self_address), ("alertmanager", alertmanager))
        if address
    ]
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            "external_labels": {"mesh": "local"},
        },
        "rule_files": [str(p) for p in rules],
        "scrape_configs": scrape_configs(targets, tls) + own,
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}], **auth}]}
    return config


ALERTMANAGER_CONFIG = {
    # locally alerts are looked at (Alertmanager's UI and API), never sent: one receiver, which does nothing
    "route": {"receiver": "null", "group_by": ["alertname", "job"]},
    "receivers": [{"name": "null"}],
}


def _answers(url: str, password_file: Path) -> Callable[[], bool]:
    def ready() -> bool:
        request = urllib.request.Request(url, headers={"Authorization": authorization(password_file)})
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    return ready


def monitoring_parts(
    home: Path,
    targets: Sequence[Target],
    tls: TlsFiles | None,
    ports: tuple[int, int],
    rules_dir: Path = RULES_DIR,
) -> list[Part]:
    """Alertmanager, then Prometheus (start in this order), with their configs written under
    ``<home>/monitoring``. ``ports``: Alertmanager's and Prometheus' loopback ports."""
    folder = Path(home) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    am_port, prom_port = ports
    am_address, prom_address = f"127.0.0.1:{am_port}", f"127.0.0.1:{prom_port}"

    password = web_password(home)
    web = folder / WEB_CONFIG
    web.write_text(yaml.safe_dump(web_config(password), sort_keys=False))
    am_config = folder / "alertmanager.yml"
    am_config.write_text(yaml.safe_dump(ALERTMANAGER_CONFIG, sort_keys=False))
    alertmanager = Part(
        "alertmanager",
        [
            binary("prometheus-alertmanager"),
            f"--config.file={am_config}",
            f"--storage.path={folder / 'alertmanager'}",
            f"--web.listen-address={am_address}",
            f"--web.external-url=http://{am_address}",
            f"--web.config.file={web}",
            "--cluster.listen-address=",  # one instance: no gossip port
        ],
        f"http://{am_address}",
        _answers(f"http://{am_address}/-/ready", password),
    )

    sources = rule_files(rules_dir)
    if not sources:
        log.warning("no rule files in %s: Prometheus runs without alerts", rules_dir)
    rules = copy_rules(sources, folder / "rules")
    config = prometheus_config(targets, tls, rules, am_address, prom_address, password)
    prom_config = folder / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump(config, sort_keys=False))
    prometheus = Part(
        "prometheus",
        [
            binary("prometheus"),
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={prom_address}",
            f"--web.external-url=http://{prom_address}",
            f"--web.config.file={web}",
            # no --web.enable-lifecycle, no --web.enable-admin-api: nothing changes it over HTTP
        ],
        f"http://{prom_address}",
        _answers(f"http://{prom_address}/-/ready", password),
    )
    return [alertmanager, prometheus]


def monitoring_urls(endpoints: Iterable[tuple[str, str]]) -> dict[str, str]:
    """What ``cxrmesh status`` shows, from the monitoring processes' (name, URL): the Prometheus UI,
    its alerts page, Alertmanager's alerts (empty for a mesh started without monitoring)."""
    urls = dict(endpoints)
    out = {}
    if "prometheus" in urls:
        out["prometheus"] = urls["prometheus"] + "/graph"
        out["alerts"] = urls["prometheus"] + "/alerts"
    if "alertmanager" in urls:
        out["alertmanager"] = urls["alertmanager"] + "/#/alerts"
    return out


class PrometheusAPI:
    """The few calls of Prometheus' HTTP API (v1) that the tests and the figure script make."""

    def __init__(self, url: str, password_file: Path | None = None, timeout_s: float = 10.0):
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self._headers = {"Authorization": authorization(password_file)} if password_file else {}

    @classmethod
    def of_mesh(cls, home: Path, url: str, timeout_s: float = 10.0) -> PrometheusAPI:
        """The API of the Prometheus of the mesh in ``home`` (signed in with its password file)."""
        return cls(url, Path(home) / FOLDER / PASSWORD_FILE, timeout_s)

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        request = urllib.request.Request(f"{self.url}{path}?{query}", headers=self._headers)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
            body = json.load(reply)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self.get("/api/v1/query_range", query=expr, start=str(start), end=str(end), step=str(step))[
            "result"
        ]

    def targets(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/targets", state="active")["activeTargets"]

    def alerts(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/alerts")["alerts"]

    def rules(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/rules")["groups"]
