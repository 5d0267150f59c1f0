"""Offline checks of the Kubernetes deployment (k8s/) and the container build files (docker/).

No cluster and no Docker here. Each service is a folder of k8s/base/services/ that states only what
is its own (name, ports, a patch) on a shared template (a kustomize Component), so the objects exist
only once rendered: ``kustomize build`` (or ``kubectl kustomize``, which embeds it) renders the base
and the overlays, and the tests compare the rendered objects with the code - the services that exist,
their pydantic settings classes (``cxrmesh.services.settings``), their ports, the Kafka topics and
partitions (``cxrmesh.contracts.topics``), what each service consumes (``cxrmesh.services.flow``) and
the database connections each replica may open (``cxrmesh.runtime.db``) - and check probes, secrets,
security and network policy (evaluated here: who reaches the database, the pods that handle
identifiable data, the hospital network's one CIDR at the DICOM gateway and the PACS sender). The files
themselves (YAML, the kustomizations' references, each service folder's name and ports) are checked
without a renderer; the tests of rendered objects are skipped when
neither kustomize nor kubectl is installed. ``kubernetes-validate`` checks every object of a Kubernetes
API group against the 1.27 schema when it is installed; custom resources (CloudNativePG, Strimzi,
cert-manager, the Prometheus operator, KEDA) have no schema offline and are checked field by field here.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import ipaddress
import math
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from pydantic import SecretStr

from cxrmesh.contracts import topics
from cxrmesh.local import mesh
from cxrmesh.local.pki import server_identity
from cxrmesh.runtime import health_probe
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.search.schema import DEFAULT_BUILD_PARAMS, DEFAULT_SEARCH_PARAMS
from cxrmesh.services import settings as settings_module
from cxrmesh.services.flow import FLOW

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
BASE = K8S / "base"
# plain Prometheus rule files and dashboard JSON: checked by test_alert_rules and test_dashboards
MONITORING = K8S / "monitoring"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
SERVICE_FOLDERS = BASE / "services"
TEMPLATE = SERVICE_FOLDERS / "template"
SERVICES_DIR = ROOT / "services"
DOCKER = ROOT / "docker"

WORKLOAD_KINDS = ("Deployment", "StatefulSet")
SERVICE_COMMAND = re.compile(r"^cxrmesh\.services\.(\w+)$")
MIN_K8S = "1.27.0"  # gRPC probes are GA from 1.27
SERVICES_UID = 10001  # USER of docker/Dockerfile.services, runAsUser of the manifests
KAFKA_CLUSTER_LABEL = "strimzi.io/cluster"
KAFKA_CLUSTER_PLACEHOLDER = "set-by-overlay"  # base/kafka-topics.yaml; every overlay names its Kafka
KEDA = K8S / "components" / "kafka-lag-autoscaling"
# besides its pool, a replica holds a LISTEN connection per change feed (cxrmesh.runtime.db.changes)
CHANGE_FEED = re.compile(r"\bChangeFeed\(")
# connections max_connections keeps beyond the services: the operator, the metrics exporter, backups, psql
DB_HEADROOM = 10
PLACEHOLDER = re.compile(r"^<[^<>]+>$")
SECRET_LIKE = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|PRIVATE")
# mutual TLS (docs/security.md): each service's certificate, mounted from the Secret cert-manager fills
TLS_ENV = {
    "CXRMESH_TLS_CERT_FILE": "tls.crt",
    "CXRMESH_TLS_KEY_FILE": "tls.key",
    "CXRMESH_TLS_CA_FILE": "ca.crt",
}
HEALTH_PROBE = ["python", "-m", "cxrmesh.runtime.health_probe"]
ISSUER = {"name": "cxrmesh-ca", "kind": "Issuer", "group": "cert-manager.io"}
DEV = K8S / "overlays" / "dev"
# Services that talk to no Kafka, and why: their pods carry no Kafka credentials and send no audit there.
NO_KAFKA = {"gateway": "touches no topic (FLOW): it hands each instance to ingestion, whose outbox publishes"}
# Services that open no database, and why: no password, no CA, and the database does not admit them.
NO_DATABASE = {"gateway": "keeps nothing: ingestion commits each study; and it faces the hospital network"}
# Pods that handle identifiable data (label cxrmesh.io/phi: "true"), and why.
PHI = {
    "ingestion": "receives identifiable DICOM and de-identifies it",
    "gateway": "receives identifiable DICOM from the hospital network",
    "pacs_sender": "re-identifies the results it stores to the PACS",
}
PHI_LABEL = "cxrmesh.io/phi"
# The hospital network (base/kustomization.yaml: the one literal the replacements copy into every ipBlock)
HOSPITAL_NETWORK = "hospital-network"
# the ports of the gateway open to the hospital network (GatewaySettings dicom_port / stow_port)
FRONT_DOOR_PORTS = {"dicom": "dicom_port", "stow": "stow_port"}
OUTSIDE = ""  # the namespace of a host outside the cluster (a modality, a PACS)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ----------------------------------------------------------------------------------------------- loading


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(directory: Path) -> dict[str, Any]:
    return load_docs(directory / "kustomization.yaml")[0]


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def referenced_paths(directory: Path) -> Iterator[tuple[Path, str]]:
    """(path, field) of every file or directory a kustomization names, relative paths resolved."""
    k = kustomization(directory)
    for field in ("resources", "components", "crds"):
        for entry in k.get(field) or []:
            yield (directory / entry).resolve(), field
    for patch in k.get("patches") or []:
        if "path" in patch:
            yield (directory / patch["path"]).resolve(), "patches"
    for field in ("patchesStrategicMerge", "patchesJson6902"):
        for entry in k.get(field) or []:
            yield (directory / (entry["path"] if isinstance(entry, dict) else entry)).resolve(), field
    for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for entry in (gen.get("files") or []) + (gen.get("envs") or []):
            yield (directory / entry.split("=", 1)[-1]).resolve(), "generator"


def reachable_files(directory: Path) -> set[Path]:
    """Every file a kustomization uses, through the kustomizations and components it names."""
    files: set[Path] = set()
    for path, _ in referenced_paths(directory):
        files |= reachable_files(path) if path.is_dir() else {path}
    return files


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def rendered(directory: Path) -> tuple[dict[str, Any], ...]:
    cmd = kustomize_command()
    if cmd is None:
        pytest.skip("neither kustomize nor kubectl is installed: the services exist only rendered")
    out = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def base_docs() -> tuple[dict[str, Any], ...]:
    """Every object of the base kustomization as kustomize renders it."""
    return rendered(BASE)


def service_folders() -> dict[str, Path]:
    """service name -> its folder: the kustomizations (not the shared components) in k8s/base/services."""
    return {
        p.name: p
        for p in sorted(SERVICE_FOLDERS.iterdir())
        if (p / "kustomization.yaml").is_file()
        and kustomization(p).get("kind", "Kustomization") == "Kustomization"
    }


def k8s_name(service: str) -> str:
    """The service's Kubernetes name: names are DNS labels, so the package pacs_sender runs as pacs-sender."""
    return service.replace("_", "-")


def hospital_cidr() -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The hospital network's CIDR, the literal of base/kustomization.yaml's hospital-network."""
    generators = kustomization(BASE).get("configMapGenerator") or []
    found = [g for g in generators if g["name"] == HOSPITAL_NETWORK]
    assert len(found) == 1, f"base/kustomization.yaml: no {HOSPITAL_NETWORK} generator"
    assert (found[0]["options"].get("annotations") or {}).get("config.kubernetes.io/local-config") == "true"
    literals = dict(literal.split("=", 1) for literal in found[0]["literals"])
    return ipaddress.ip_network(literals["cidr"])


def service_values(folder: Path) -> dict[str, str]:
    """The ``<name>-values`` literals (name, grpc-port, metrics-port) a service folder gives the template."""
    generators = kustomization(folder).get("configMapGenerator") or []
    found = [g for g in generators if g["name"] == f"{folder.name}-values"]
    assert len(found) == 1, f"{folder}: no {folder.name}-values generator"
    options = found[0].get("options") or {}
    assert options.get("disableNameSuffixHash") is True, f"{folder}: the replacements need a stable name"
    assert (options.get("annotations") or {}).get("config.kubernetes.io/local-config") == "true", (
        f"{folder}: {folder.name}-values must be local-config (never applied)"
    )
    return dict(literal.split("=", 1) for literal in found[0]["literals"])


def of_kind(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") in kinds]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def service_name(container: dict[str, Any]) -> str | None:
    """``X`` of a container running ``python -m cxrmesh.services.X`` (else None)."""
    cmd = [*(container.get("command") or []), *(container.get("args") or [])]
    if len(cmd) == 3 and cmd[0] in ("python", "python3") and cmd[1] == "-m":
        found = SERVICE_COMMAND.match(cmd[2])
        return found.group(1) if found else None
    return None


@functools.cache
def service_workloads() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """service name -> (workload, its service container)."""
    found: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for workload in of_kind(base_docs(), *WORKLOAD_KINDS):
        for container in pod_spec(workload)["containers"]:
            name = service_name(container)
            if name:
                assert name not in found, f"two workloads run the {name} service"
                found[name] = (workload, container)
    return found


def service_packages() -> set[str]:
    return {p.parent.name for p in SERVICES_DIR.glob("*/__main__.py")}


def settings_class(service: str) -> type[ServiceSettings]:
    """The settings class whose ``service`` default is ``service``."""
    classes = [
        cls
        for cls in vars(settings_module).values()
        if isinstance(cls, type)
        and issubclass(cls, ServiceSettings)
        and cls is not ServiceSettings
        and cls.model_fields["service"].default == service
    ]
    assert len(classes) == 1, f"expected one settings class for {service}, found {classes}"
    return classes[0]


def env_name(cls: type[ServiceSettings], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def env_fields(cls: type[ServiceSettings]) -> dict[str, str]:
    """CXRMESH_* variable -> settings field."""
    return {env_name(cls, f): f for f in cls.model_fields}


def secret_fields(cls: type[ServiceSettings]) -> set[str]:
    return {f for f, info in cls.model_fields.items() if info.annotation is SecretStr}


@functools.cache
def direct_env_reads() -> frozenset[str]:
    """CXRMESH_* variables the code reads from os.environ itself (not settings fields), e.g. S3_ENDPOINT."""
    patterns = [
        re.compile(r"environ(?:\.get)?\(\s*[\"'](CXRMESH_\w+)[\"']"),
        re.compile(r"environ\[\s*[\"'](CXRMESH_\w+)[\"']\s*\]"),
        re.compile(r"^\s*ENV_\w+\s*=\s*[\"'](CXRMESH_\w+)[\"']", re.M),
    ]
    names: set[str] = set()
    for folder in ("src", "services", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern in patterns:
                names.update(pattern.findall(text))
    return frozenset(names)


def config_maps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data") or {} for d in of_kind(base_docs(), "ConfigMap")}


def container_env(container: dict[str, Any]) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(literal values from envFrom ConfigMaps then env, valueFrom sources by name)."""
    maps = config_maps()
    values: dict[str, str] = {}
    refs: dict[str, dict[str, Any]] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        assert ref, f"{container['name']}: envFrom only from ConfigMaps (secrets by key, see the template)"
        assert ref["name"] in maps, f"{container['name']}: no ConfigMap {ref['name']} in the base"
        values.update(maps[ref["name"]])
    for item in container.get("env") or []:
        key_ref = (item.get("valueFrom") or {}).get("configMapKeyRef")
        if key_ref:  # a value kept in a ConfigMap of the base: it is known here
            data = maps.get(key_ref["name"])
            assert data is not None, f"{container['name']}: no ConfigMap {key_ref['name']} in the base"
            assert key_ref["key"] in data, f"{container['name']}: ConfigMap {key_ref['name']} lacks {key_ref}"
            values[item["name"]] = data[key_ref["key"]]
            refs.pop(item["name"], None)
        elif "value" in item:
            values[item["name"]] = str(item["value"])
            refs.pop(item["name"], None)
        else:
            refs[item["name"]] = item["valueFrom"]
            values.pop(item["name"], None)
    return values, refs


def config_map_readers() -> dict[str, set[str]]:
    """ConfigMap -> the services whose container reads it (envFrom or a configMapKeyRef)."""
    readers: dict[str, set[str]] = {}
    for service, (_, container) in service_workloads().items():
        for source in container.get("envFrom") or []:
            readers.setdefault(source["configMapRef"]["name"], set()).add(service)
        for item in container.get("env") or []:
            key_ref = (item.get("valueFrom") or {}).get("configMapKeyRef")
            if key_ref:
                readers.setdefault(key_ref["name"], set()).add(service)
    return readers


def effective_settings(service: str, container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service's settings as the pod would build them, from its environment (JSON values parsed as
    pydantic-settings parses them there; secrets as placeholders)."""
    for key in list(os.environ):
        if key.startswith("CXRMESH_"):
            monkeypatch.delenv(key)
    values, refs = container_env(container)
    for name, value in values.items():
        if name.startswith("CXRMESH_"):
            monkeypatch.setenv(name, value)
    for name in refs:
        if name.startswith("CXRMESH_"):
            monkeypatch.setenv(name, "value-from-a-kubernetes-secret")
    return settings_class(service)()


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports") or [] if "name" in p}


def the_one(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def database_cluster() -> dict[str, Any]:
    """The CloudNativePG Cluster of the base (k8s/base/database.yaml)."""
    cluster = the_one(base_docs(), "Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    return cluster


def autoscalers() -> dict[str, dict[str, Any]]:
    """service name -> the HorizontalPodAutoscaler that scales its workload."""
    by_workload = {(w["kind"], w["metadata"]["name"]): name for name, (w, _) in service_workloads().items()}
    found: dict[str, dict[str, Any]] = {}
    for hpa in of_kind(base_docs(), "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        service = by_workload.get((ref["kind"], ref["name"]))
        assert service, f"HPA {hpa['metadata']['name']} scales {ref}, not a cxrmesh service's workload"
        assert service not in found, f"two autoscalers on {service}"
        found[service] = hpa
    return found


def topic_partitions(docs: tuple[dict[str, Any], ...]) -> dict[str, int]:
    """topic -> partitions, from the KafkaTopics (one each; the name is the topic unless topicName)."""
    found: dict[str, int] = {}
    for topic in of_kind(docs, "KafkaTopic"):
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        name = topic["spec"].get("topicName") or topic["metadata"]["name"]
        assert name not in found, f"two KafkaTopics create {name}"
        found[name] = topic["spec"]["partitions"]
    return found


def surge(workload: dict[str, Any], replicas: int) -> int:
    """Pods a rollout adds beyond ``replicas`` (the Deployment's maxSurge; default 25 %, rounded up)."""
    rolling = (workload["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    value = rolling.get("maxSurge", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * replicas / 100)
    return int(value)


# ------------------------------------------------------------------------- NetworkPolicy evaluation


@dataclasses.dataclass(frozen=True)
class Pod:
    """A peer of a connection as NetworkPolicies see it: its labels and namespace, or, for a host outside
    the cluster, its address."""

    labels: dict[str, str]
    namespace: str = "cxrmesh"  # OUTSIDE: a host outside the cluster
    ports: dict[str, int] = dataclasses.field(default_factory=dict)  # named, for rules naming them
    ip: str | None = None  # hosts outside the cluster only: what ipBlock peers name


def label_selected(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions); {} selects everything."""
    selector = selector or {}
    if not selects(selector.get("matchLabels") or {}, labels):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], pod: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:  # addresses outside the cluster (the hospital network), never pods here
        if pod.ip is None:
            return False
        address = ipaddress.ip_address(pod.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except") or []
        )
    if pod.namespace == OUTSIDE:
        return False  # pod and namespace selectors name pods of the cluster only
    if "namespaceSelector" in peer:
        in_namespace = label_selected(
            peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod.namespace}
        )
    else:
        in_namespace = pod.namespace == policy_namespace
    return in_namespace and label_selected(peer.get("podSelector"), pod.labels)


def _allowed(direction: str, subject: Pod, peer: Pod, port: int, port_owner: Pod) -> bool:
    """Whether the policies selecting ``subject`` let traffic ``direction`` (Ingress/Egress) with ``peer``."""
    key, peers_key = direction.lower(), "from" if direction == "Ingress" else "to"
    applying = [
        p
        for p in of_kind(base_docs(), "NetworkPolicy")
        if direction in p["spec"]["policyTypes"]
        and p["metadata"].get("namespace", "cxrmesh") == subject.namespace
        and label_selected(p["spec"]["podSelector"], subject.labels)
    ]
    if not applying:
        return True  # not isolated in this direction
    names = {name for name, number in port_owner.ports.items() if number == port}
    for policy in applying:
        for rule in policy["spec"].get(key) or []:
            ports = rule.get("ports")
            if ports and not any("port" not in p or p["port"] == port or p["port"] in names for p in ports):
                continue
            peers = rule.get(peers_key)
            if not peers or any(_peer_matches(x, peer, policy["metadata"]["namespace"]) for x in peers):
                return True
    return False


def connects(source: Pod, target: Pod, port: int) -> bool:
    """Source's egress and target's ingress both let a connection to ``target``:``port`` through."""
    egress = _allowed("Egress", source, target, port, target)
    return egress and _allowed("Ingress", target, source, port, target)


def database_pod(cluster: dict[str, Any], role: str = "primary") -> Pod:
    """An instance pod of the Cluster as CloudNativePG labels it (plus the Cluster's inheritedMetadata)."""
    labels = dict(((cluster["spec"].get("inheritedMetadata") or {}).get("labels")) or {})
    labels |= {"cnpg.io/cluster": cluster["metadata"]["name"], "cnpg.io/podRole": "instance", "role": role}
    labels["cnpg.io/instanceRole"] = role
    return Pod(
        labels, cluster["metadata"]["namespace"], {"postgresql": 5432, "status": 8000, "metrics": 9187}
    )


def workload_pod(workload: dict[str, Any]) -> Pod:
    ports: dict[str, int] = {}
    for c in pod_spec(workload)["containers"]:
        ports.update(named_ports(c))
    return Pod(
        dict(workload["spec"]["template"]["metadata"]["labels"]), workload["metadata"]["namespace"], ports
    )


# --------------------------------------------------------------------------------------------- structure


def test_every_yaml_parses_into_kubernetes_objects() -> None:
    files = [
        p for p in sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml")) if MONITORING not in p.parents
    ]
    assert len(files) > 10
    for path in files:
        docs = load_docs(path)  # raises on invalid YAML
        assert docs, f"{path} is empty"
        if path.name == "kustomization.yaml":
            assert docs[0].get("kind", "Kustomization") in ("Kustomization", "Component")
            continue
        if isinstance(docs[0], list):  # an RFC 6902 JSON patch
            assert all({"op", "path"} <= set(op) for op in docs[0]), path
            continue
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: {doc.get('kind')}"
            assert doc["metadata"].get("name"), f"{path}: {doc['kind']} without a name"


def test_kustomizations_reference_files_that_exist() -> None:
    assert {p.name for p in OVERLAYS} >= {"cpu", "gpu"}
    for directory in kustomization_dirs():
        for path, field in referenced_paths(directory):
            assert path.exists(), f"{directory / 'kustomization.yaml'}: {field} {path} does not exist"
            if path.is_dir():
                assert (path / "kustomization.yaml").is_file(), f"{path} is not a kustomization"
                kind = kustomization(path).get("kind", "Kustomization")
                expected = "Component" if field == "components" else "Kustomization"
                assert kind == expected, f"{directory}: {field} {path} is a {kind}"


def test_base_uses_every_manifest_but_the_secret_template() -> None:
    used = reachable_files(BASE)
    on_disk = {p.resolve() for p in BASE.rglob("*.yaml") if p.name != "kustomization.yaml"}
    template = (BASE / "secret.template.yaml").resolve()
    assert template.is_file()
    assert template not in used, "the Secret template must never be applied with its placeholders"
    assert on_disk - used == {template}, f"manifests the base kustomization does not use: {on_disk - used}"


def test_every_service_is_a_folder_on_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """One folder per service: its name and ports (the settings defaults), the shared template."""
    base_resources = {p for p, field in referenced_paths(BASE) if field == "resources"}
    assert set(service_folders()) == service_packages(), "one folder per service package"
    for service, folder in service_folders().items():
        assert folder.resolve() in base_resources, f"the base does not list {folder}"
        components = [(folder / c).resolve() for c in kustomization(folder).get("components") or []]
        assert components[:1] == [TEMPLATE.resolve()], f"{folder}: the template must come first"
        values = service_values(folder)
        cls = settings_class(service)
        assert values["name"] == k8s_name(service)
        assert int(values["grpc-port"]) == cls.model_fields["grpc_port"].default, f"{service}: gRPC port"
        assert int(values["metrics-port"]) == cls.model_fields["metrics_port"].default, f"{service}: metrics"


def test_no_placeholder_or_local_config_is_rendered() -> None:
    docs = base_docs()
    assert not of_kind(docs, "Secret"), "Secrets are created by hand (k8s/README.md), not applied"
    assert not [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-values")]
    assert not [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == HOSPITAL_NETWORK]
    for doc in docs:
        assert not doc["metadata"]["name"].startswith("service"), f"a template placeholder: {doc['kind']}"
        annotations = doc["metadata"].get("annotations") or {}
        assert "config.kubernetes.io/local-config" not in annotations, doc["metadata"]["name"]
    for workload, container in service_workloads().values():
        assert container["name"] == workload["metadata"]["name"], "the container is named after its service"
        assert 0 not in named_ports(container).values(), f"{container['name']}: a placeholder port"


@pytest.mark.parametrize("overlay", [BASE, *OVERLAYS], ids=["base", *[o.name for o in OVERLAYS]])
def test_names_are_dns_names(overlay: Path) -> None:
    """What the API server would refuse (the schemas do not say it): object names are DNS subdomains,
    Service names and container names DNS labels (RFC 1035 for Services), and so are the Secrets and
    ConfigMaps the pods name - no underscore, which a package name may have (pacs_sender)."""
    for doc in rendered(overlay):
        name = doc["metadata"]["name"]
        assert len(name) <= 253 and DNS_SUBDOMAIN.match(name), f"{doc['kind']} {name!r}"
        if doc["kind"] == "Service":
            assert len(name) <= 63 and DNS_LABEL.match(name) and name[0].isalpha(), f"Service {name!r}"
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for c in all_containers(doc):
            assert len(c["name"]) <= 63 and DNS_LABEL.match(c["name"]), f"container {c['name']!r}"
            for item in c.get("env") or []:
                for ref in (item.get("valueFrom") or {}).values():
                    assert "name" not in ref or DNS_SUBDOMAIN.match(ref["name"]), f"{c['name']}: {ref}"
        for volume in pod_spec(doc).get("volumes") or []:
            secret = (volume.get("secret") or {}).get("secretName")
            assert secret is None or DNS_SUBDOMAIN.match(secret), f"{name}: Secret {secret!r}"


def test_namespace_and_unique_names() -> None:
    k = kustomization(BASE)
    namespaces = of_kind(base_docs(), "Namespace")
    assert [n["metadata"]["name"] for n in namespaces] == [k["namespace"]]
    seen = set()
    for doc in base_docs():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


# ------------------------------------------------------------------------------------- services vs code


def test_every_service_has_a_workload() -> None:
    manifests = set(service_workloads())
    assert set(mesh.SERVICES) <= manifests, f"no manifest for {set(mesh.SERVICES) - manifests}"
    assert service_packages() <= manifests, f"no manifest for {service_packages() - manifests}"
    assert manifests <= service_packages(), f"manifests run unknown services {manifests - service_packages()}"


@pytest.mark.parametrize("service", sorted(service_packages()))
def test_env_names_are_settings_of_that_service(service: str) -> None:
    _, container = service_workloads()[service]
    cls = settings_class(service)
    known = set(env_fields(cls)) | direct_env_reads()
    values, refs = container_env(container)
    unknown = {n for n in [*values, *refs] if n.startswith("CXRMESH_")} - known
    assert not unknown, f"{service}: {sorted(unknown)} are not settings of {cls.__name__}"


def test_shared_config_holds_only_common_settings() -> None:
    """A ConfigMap holds settings of every service that reads it: the shared one (read by all) only
    common settings, a service's own (gateway-config, pacs-destinations) that service's; none a secret."""
    common = set(env_fields(ServiceSettings)) | direct_env_reads()
    assert "CXRMESH_S3_ENDPOINT" in direct_env_reads()  # the scan finds what blobs.py reads
    secrets = {env_name(ServiceSettings, f) for f in secret_fields(ServiceSettings)}
    for service in service_packages():
        cls = settings_class(service)
        secrets |= {env_name(cls, f) for f in secret_fields(cls)}
    readers = config_map_readers()
    assert readers["cxrmesh-config"] == service_packages(), "every service reads the shared settings"
    for name, data in config_maps().items():
        keys = {k for k in data if k.startswith("CXRMESH_")}
        known = set(common)
        if readers.get(name):
            known |= set.intersection(*(set(env_fields(settings_class(s))) for s in readers[name]))
        assert keys <= known, f"ConfigMap {name}: {sorted(keys - known)} are not settings of its readers"
        assert not keys & secrets, f"ConfigMap {name} holds secrets {sorted(keys & secrets)}"
        assert not [k for k in data if SECRET_LIKE.search(k)], f"ConfigMap {name} holds a secret-like key"


@pytest.mark.parametrize("service", sorted(service_packages()))
def test_settings_are_complete_and_ports_match(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    workload, container = service_workloads()[service]
    s = effective_settings(service, container, monkeypatch)  # required settings (deid_secret) present
    ports = named_ports(container)
    assert ports.get("grpc") == s.grpc_port, f"{service}: container port grpc != CXRMESH_GRPC_PORT"
    assert ports.get("metrics") == s.metrics_port, f"{service}: port metrics != CXRMESH_METRICS_PORT"
    defaults = settings_class(service).model_fields
    assert s.grpc_port == defaults["grpc_port"].default, f"{service}: gRPC port is not the settings default"
    assert s.metrics_port == defaults["metrics_port"].default, f"{service}: metrics port is not the default"
    assert s.grpc_host in ("0.0.0.0", "::", "[::]"), f"{service}: binds {s.grpc_host}, unreachable to probes"
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        assert kind == "startupProbe" or probe, f"{service}: no {kind}"
        if probe:  # grpc.health.v1 on CXRMESH_GRPC_PORT (= s.grpc_port) over mTLS, from inside the pod
            assert probe.get("exec", {}).get("command") == HEALTH_PROBE, (
                f"{service}: {kind} is not the mTLS probe"
            )
            assert probe["timeoutSeconds"] > health_probe.TIMEOUT_S, f"{service}: {kind} times out first"
    annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations.get("prometheus.io/port") == str(s.metrics_port)
    assert annotations.get("prometheus.io/path") == "/metrics"


@pytest.mark.parametrize("service", sorted(service_packages()))
def test_storage_grace_and_endpoints(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    workload, container = service_workloads()[service]
    s = effective_settings(service, container, monkeypatch)
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes") or []}
    data_dir = str(s.data_dir)
    assert data_dir in mounts, f"{service}: CXRMESH_DATA_DIR {data_dir} is not a mounted volume"
    assert "/tmp" in mounts, f"{service}: read-only root filesystem needs a /tmp volume"
    # stateless pods: the durable state is in the database, CXRMESH_DATA_DIR is scratch (the audit log copy)
    assert workload["kind"] == "Deployment", f"{service}: a {workload['kind']}, not a Deployment"
    assert "emptyDir" in volumes[mounts[data_dir]], f"{service}: CXRMESH_DATA_DIR is not an emptyDir"
    # blobs are shared across pods and nodes: an S3-compatible store (or an explicit shared file path)
    assert s.blob_uri.startswith(("s3://", "file:///")), f"{service}: CXRMESH_BLOB_URI {s.blob_uri!r}"
    if s.blob_uri.startswith("s3://"):
        dockerfile = (DOCKER / "Dockerfile.services").read_text()
        assert re.search(r'"\.\[serve,s3\]"|pip install boto3', dockerfile), "s3:// needs boto3 in the image"
    # SIGTERM: grpc drain (grace_s) + worker joins (grace_s) + the preStop sleep must fit
    pre_stop = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
    sleep = float(pre_stop[-1]) if pre_stop and pre_stop[0] == "sleep" else 0.0
    grace = pod_spec(workload).get("terminationGracePeriodSeconds", 30)
    assert grace > 2 * s.grace_s + sleep, f"{service}: terminationGracePeriodSeconds {grace} too short"
    services = {d["metadata"]["name"]: d for d in of_kind(base_docs(), "Service")}
    triton_host, triton_port = s.triton_url.rsplit(":", 1)
    triton = services[triton_host]
    assert int(triton_port) in [p["port"] for p in triton["spec"]["ports"] if p["name"] == "grpc"]
    for peer in ("search", "ingestion", "studyview"):  # the services it calls: their Service's gRPC port
        if hasattr(s, f"{peer}_url"):
            host, port = getattr(s, f"{peer}_url").rsplit(":", 1)
            grpc = [p["port"] for p in services[k8s_name(peer)]["spec"]["ports"] if p["name"] == "grpc"]
            assert host == k8s_name(peer) and [int(port)] == grpc, f"{service}: {peer}_url"
    if hasattr(s, "milvus_uri"):
        assert s.milvus_uri, "search needs a Milvus server (CXRMESH_MILVUS_URI), not Milvus Lite"
        # a server's growing corpus: a graph index, with parameters the index type knows
        assert s.milvus_index == "HNSW"
        assert set(s.milvus_index_params or {}) <= set(DEFAULT_BUILD_PARAMS["HNSW"]), s.milvus_index_params
        assert set(s.milvus_search_params or {}) <= set(DEFAULT_SEARCH_PARAMS["HNSW"]), s.milvus_search_params


def test_services_route_to_their_pods() -> None:
    workloads = of_kind(base_docs(), *WORKLOAD_KINDS)
    for svc in of_kind(base_docs(), "Service"):
        selector = svc["spec"]["selector"]
        targets = [w for w in workloads if selects(selector, w["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, f"Service {svc['metadata']['name']} selects {len(targets)} workloads"
        ports = {}
        for c in pod_spec(targets[0])["containers"]:
            ports.update(named_ports(c))
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {svc['metadata']['name']}: no port {port['name']}"
            assert port["port"] == ports[port["targetPort"]], f"{svc['metadata']['name']}: port differs"


def test_no_service_keeps_a_volume_claim() -> None:
    """Every replica answers for every study only if none keeps state of its own: no StatefulSet, no
    PersistentVolumeClaim (templated, referenced or standalone) for any service."""
    assert not of_kind(base_docs(), "StatefulSet", "PersistentVolumeClaim")
    for service, (workload, _) in service_workloads().items():
        assert "volumeClaimTemplates" not in workload["spec"], service
        for volume in pod_spec(workload).get("volumes") or []:
            assert not {"persistentVolumeClaim", "ephemeral", "hostPath"} & set(volume), (
                f"{service}: volume {volume['name']} keeps state on a node or a claim"
            )


# ---------------------------------------------------------------------------------------------- database


def test_the_database_is_replicated_backed_up_and_monitored() -> None:
    """The CloudNativePG Cluster: three PostgreSQL 15 instances, continuous backup to an object store
    with a retention, a daily base backup, its metrics scraped."""
    cluster = database_cluster()
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    assert spec["instances"] >= 3, "a primary and two standbys: failover without losing quorum"
    assert spec.get("minSyncReplicas", 0) >= 1, "an acknowledged commit is on a standby too"
    assert re.search(r"/postgresql:15(\.\d+)?(-|$)", spec["imageName"]), spec["imageName"]
    assert spec["storage"]["size"] and spec.get("enableSuperuserAccess") is False
    store = spec["backup"]["barmanObjectStore"]
    assert store["destinationPath"].startswith("s3://")
    template = {d["metadata"]["name"]: d for d in load_docs(BASE / "secret.template.yaml")}
    for ref in store["s3Credentials"].values():  # from a Secret the operator creates by hand (template)
        assert ref["key"] in template[ref["name"]]["stringData"], f"{ref} is not in secret.template.yaml"
    assert re.fullmatch(r"\d+[dwm]", spec["backup"]["retentionPolicy"])
    backups = [b for b in of_kind(base_docs(), "ScheduledBackup") if b["spec"]["cluster"]["name"] == name]
    assert len(backups) == 1, "one ScheduledBackup of the Cluster"
    fields = backups[0]["spec"]["schedule"].split()
    assert len(fields) == 6 and fields[3:] == ["*", "*", "*"], "six-field cron (seconds first), every day"
    assert all(f.isdigit() for f in fields[:3]), "once a day, at a fixed time"
    monitors = [
        m
        for m in of_kind(base_docs(), "PodMonitor")
        if label_selected(m["spec"]["selector"], database_pod(cluster).labels)
    ]
    assert [e["port"] for m in monitors for e in m["spec"]["podMetricsEndpoints"]] == ["metrics"]


@pytest.mark.parametrize("service", sorted(service_packages()))
def test_every_service_uses_the_cnpg_database(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CXRMESH_DATABASE_URL names the Cluster's read-write Service and the database and owner it
    bootstraps, checks the server's certificate (verify-full) against the CA CloudNativePG made, mounted
    from its Secret; the password comes from the Cluster's app Secret, never from the URL or a literal."""
    cluster = database_cluster()
    name, initdb = cluster["metadata"]["name"], cluster["spec"]["bootstrap"]["initdb"]
    workload, container = service_workloads()[service]
    if service in NO_DATABASE:  # no credential it does not need
        _, refs = container_env(container)
        assert "CXRMESH_DATABASE_PASSWORD" not in refs, f"{service}: {NO_DATABASE[service]}"
        assert f"{name}-ca" not in secret_mounts(workload, container).values(), service
        return
    s = effective_settings(service, container, monkeypatch)
    url = urlsplit(s.database_url)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    assert url.scheme == "postgresql", f"{service}: {url.scheme}"
    assert (url.hostname, url.port) == (f"{name}-rw", 5432), f"{service}: not the Cluster's rw Service"
    assert url.path.lstrip("/") == initdb["database"], f"{service}: not the database the Cluster makes"
    assert url.username == initdb["owner"] and url.password is None, f"{service}: user / password in URL"
    assert query.get("sslmode") == "verify-full", f"{service}: the server's name and CA must be checked"
    ca = Path(query["sslrootcert"])
    mounts = secret_mounts(workload, container)
    assert mounts.get(str(ca.parent)) == f"{name}-ca", f"{service}: sslrootcert is not the Cluster's CA"
    volume = next(
        v for v in pod_spec(workload)["volumes"] if v.get("secret", {}).get("secretName") == f"{name}-ca"
    )
    assert [i["key"] for i in volume["secret"].get("items") or []] == [ca.name] == ["ca.crt"], (
        f"{service}: mount only ca.crt (the CA Secret also holds the CA's key)"
    )
    _, refs = container_env(container)
    assert refs["CXRMESH_DATABASE_PASSWORD"] == {"secretKeyRef": {"name": f"{name}-app", "key": "password"}}


def test_database_connections_fit_max_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """max_connections holds every service at its autoscaler's maximum plus a rollout's surge pods, each
    pod with its whole pool (pool_size + overflow, as cxrmesh.runtime.db opens it) and its LISTEN
    connections, plus PostgreSQL's reserved slots and room for the operator and people."""
    params = database_cluster()["spec"]["postgresql"]["parameters"]
    needed = int(params.get("superuser_reserved_connections", 3)) + DB_HEADROOM
    for service, (workload, container) in service_workloads().items():
        if service in NO_DATABASE:
            continue
        settings = effective_settings(service, container, monkeypatch)
        db = Database("postgresql://budget@localhost/budget", "", settings.database_pool_size, migrate=False)
        try:  # no connection is made: only the pool's limits are read
            per_pod = db.engine.pool.size() + db.engine.pool._max_overflow  # type: ignore[attr-defined]
        finally:
            db.close()
        per_pod += sum(
            len(CHANGE_FEED.findall(f.read_text())) for f in (SERVICES_DIR / service).rglob("*.py")
        )
        pods = autoscalers()[service]["spec"]["maxReplicas"]
        needed += (pods + surge(workload, pods)) * per_pod
    assert needed <= int(params["max_connections"]), f"max_connections must be at least {needed}"


def test_only_the_services_reach_the_database() -> None:
    """PostgreSQL answers the cxrmesh services (whose egress lets them reach it), its own instances and
    the operator; not Triton, not other pods of the namespace (a DICOM router), not other namespaces."""
    cluster = database_cluster()
    primary, standby = database_pod(cluster), database_pod(cluster, "replica")
    for service, (workload, _) in service_workloads().items():
        if service in NO_DATABASE:  # the database's own policy refuses it, whatever its egress says
            pod = workload_pod(workload)
            assert not _allowed("Ingress", primary, pod, 5432, primary), f"{service}: {NO_DATABASE[service]}"
            continue
        assert connects(workload_pod(workload), primary, 5432), f"{service} cannot reach the database"
        assert not connects(workload_pod(workload), primary, 8000), f"{service} reaches the status port"
    assert connects(standby, primary, 5432), "streaming replication"
    operator = Pod({"app.kubernetes.io/name": "cloudnative-pg"}, "cnpg-system")
    assert connects(operator, primary, 8000) and connects(operator, primary, 5432), "the operator"
    assert connects(Pod({}, "monitoring"), primary, 9187), "Prometheus scrapes its metrics"
    outsiders = [
        workload_pod(triton(base_docs())),
        Pod({"app.kubernetes.io/name": "dicom-router", "app.kubernetes.io/part-of": "cxrmesh"}),
        Pod({}),
        Pod(workload_pod(service_workloads()["search"][0]).labels, "default"),  # a look-alike elsewhere
        Pod({"app.kubernetes.io/name": "cloudnative-pg"}, "other"),
    ]
    for pod in outsiders:
        assert not connects(pod, primary, 5432), f"{pod} reaches the database"


# ----------------------------------------------------------------------------------- secrets, security


def test_no_secret_value_is_committed() -> None:
    for path in K8S.rglob("*.y*ml"):
        for doc in load_docs(path):
            if not isinstance(doc, dict) or doc.get("kind") != "Secret":
                continue
            values = dict(doc.get("stringData") or {})
            values.update({k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()})
            assert values, f"{path}: empty Secret"
            for key, value in values.items():
                assert PLACEHOLDER.match(value), f"{path}: {key} holds a value, not a <placeholder>"


def test_secrets_come_from_secret_refs() -> None:
    for workload in of_kind(base_docs(), *WORKLOAD_KINDS):
        for container in all_containers(workload):
            for item in container.get("env") or []:
                if SECRET_LIKE.search(item["name"]):
                    assert "secretKeyRef" in (item.get("valueFrom") or {}), (
                        f"{container['name']}: {item['name']} must come from a Secret"
                    )
    for service, (_, container) in service_workloads().items():
        cls = settings_class(service)
        _, refs = container_env(container)
        for field in secret_fields(cls):
            name = env_name(cls, field)
            if name in refs:
                assert "secretKeyRef" in refs[name], f"{service}: {name} not from a Secret"


def test_every_secret_a_pod_needs_is_documented() -> None:
    """Each Secret a pod reads (by key or as a volume) is either made by an operator (cert-manager's
    certificates, CloudNativePG's -app and -ca) or in secret.template.yaml with that key, and the
    README's steps create it (the per-service <name>-kafka Secrets follow ingestion-kafka's example)."""
    template = {d["metadata"]["name"]: d["stringData"] for d in load_docs(BASE / "secret.template.yaml")}
    readme = (K8S / "README.md").read_text()
    cluster = database_cluster()["metadata"]["name"]
    operators = set(certificates(base_docs())) | {f"{cluster}-app", f"{cluster}-ca"}

    def documented(name: str) -> dict[str, str] | None:
        return template.get(name) or (template["ingestion-kafka"] if name.endswith("-kafka") else None)

    for workload in of_kind(base_docs(), *WORKLOAD_KINDS):
        for container in all_containers(workload):
            for item in container.get("env") or []:
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"] not in operators:
                    data = documented(ref["name"])
                    assert data and ref["key"] in data, f"{container['name']}: {ref} not in the template"
        for volume in pod_spec(workload).get("volumes") or []:
            secret = (volume.get("secret") or {}).get("secretName")
            assert secret is None or secret in operators or documented(secret), f"Secret {secret}"
    for name in template:
        assert name.endswith("-kafka") or f"create secret generic {name}" in readme, (
            f"k8s/README.md does not create Secret {name}"
        )
    kafka_users = {k8s_name(s) for s in service_packages() - set(NO_KAFKA)}
    for text in (readme, (BASE / "secret.template.yaml").read_text()):
        loops = re.findall(r"for svc in ([\w -]+); do", text)
        assert [set(loop.split()) for loop in loops] == [kafka_users], f"the <name>-kafka Secrets: {loops}"


def test_pods_are_locked_down() -> None:
    for workload in of_kind(base_docs(), *WORKLOAD_KINDS):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_ctx = spec.get("securityContext") or {}
        assert pod_ctx.get("runAsNonRoot") is True, name
        assert pod_ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in all_containers(workload):
            ctx = c.get("securityContext") or {}
            assert ctx.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert ctx.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
            assert "ALL" in ((ctx.get("capabilities") or {}).get("drop") or []), f"{name}/{c['name']}"
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind) or {}), f"{name}/{c['name']}: {kind}"
    uid = f"USER {SERVICES_UID}"
    assert uid in (DOCKER / "Dockerfile.services").read_text()
    for workload, _ in service_workloads().values():
        assert pod_spec(workload)["securityContext"].get("runAsUser") == SERVICES_UID


def test_exactly_the_phi_services_are_labelled() -> None:
    labelled = {
        service
        for service, (workload, _) in service_workloads().items()
        if workload["spec"]["template"]["metadata"]["labels"].get(PHI_LABEL) == "true"
    }
    assert labelled == set(PHI), f"{PHI_LABEL} on {sorted(labelled)}; PHI is handled by {sorted(PHI)}"


def applying_policies(labels: dict[str, str], direction: str) -> list[dict[str, Any]]:
    return [
        p
        for p in of_kind(base_docs(), "NetworkPolicy")
        if direction in p["spec"]["policyTypes"] and label_selected(p["spec"]["podSelector"], labels)
    ]


@pytest.mark.parametrize("service", sorted(PHI))
def test_phi_stays_in_the_namespace(service: str) -> None:
    """Pods that handle identifiable data: nothing outside the namespace reaches them but Prometheus (the
    metrics port) and the hospital network (the gateway's DICOM and STOW-RS ports, nothing else), and
    their egress is restricted, outside the cluster to the hospital network alone."""
    policies = of_kind(base_docs(), "NetworkPolicy")
    workload, container = service_workloads()[service]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    ports = named_ports(container)
    front_door = {name for name in FRONT_DOOR_PORTS if name in ports} | {
        ports[name] for name in FRONT_DOOR_PORTS if name in ports
    }
    hospital = str(hospital_cidr())
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"]["policyTypes"]
        and not p["spec"].get("ingress")
    ]
    assert deny, "a default-deny ingress policy is needed"
    for policy in applying_policies(labels, "Ingress"):
        name = policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress") or []:
            rule_ports = {p.get("port") for p in rule.get("ports") or []}
            if rule_ports and rule_ports <= {"metrics", ports["metrics"]}:
                continue  # Prometheus may scrape from its namespace
            peers = rule.get("from")
            assert peers, f"{name}: an ingress rule open to everyone reaches {service}"
            for peer in peers:
                if set(peer) == {"ipBlock"}:  # the hospital network, on the front-door ports only
                    assert peer["ipBlock"]["cidr"] == hospital, f"{name}: {peer} is not the hospital CIDR"
                    assert rule_ports and rule_ports <= front_door, f"{name}: {service} {rule_ports} opened"
                    continue
                assert set(peer) == {"podSelector"}, f"{name}: {service} (identifiable data) open to {peer}"
    egress = applying_policies(labels, "Egress")
    assert egress, f"{service}: egress is not restricted"
    for policy in egress:
        for rule in policy["spec"].get("egress") or []:
            for peer in rule.get("to") or []:
                if "ipBlock" in peer:
                    assert peer["ipBlock"]["cidr"] == hospital, f"{policy['metadata']['name']}: {peer}"


def test_the_hospital_network_is_one_cidr() -> None:
    """Every ipBlock of the base is the hospital CIDR of base/kustomization.yaml (the replacements put it
    there): never the whole internet, never a placeholder left over."""
    cidr = hospital_cidr()
    assert cidr.prefixlen > 0, "the hospital network must not be every address"
    blocks = [
        peer["ipBlock"]
        for policy in of_kind(base_docs(), "NetworkPolicy")
        for rule in (policy["spec"].get("ingress") or []) + (policy["spec"].get("egress") or [])
        for peer in (rule.get("from") or []) + (rule.get("to") or [])
        if "ipBlock" in peer
    ]
    assert blocks, "no policy names the hospital network"
    assert all(ipaddress.ip_network(b["cidr"]) == cidr for b in blocks), blocks


def outside_hosts() -> tuple[str, str]:
    """An address of the hospital network and one outside it (TEST-NET-3, unless that is the hospital's)."""
    cidr = hospital_cidr()
    inside = str(next(cidr.hosts()))
    outside = next(
        a for a in ("203.0.113.7", "198.51.100.7", "2001:db8::7") if ipaddress.ip_address(a) not in cidr
    )
    return inside, outside


def test_the_gateway_opens_dicom_and_stow_to_the_hospital_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DICOM gateway: its Storage SCP and STOW-RS listen on the pod IP on the ports of its settings,
    behind the gateway-dicom Service (named ports dicom, stow); the hospital network reaches those two
    ports and nothing else of the mesh, other addresses nothing; senders are refused until the site
    lists them; STOW-RS needs a token from a Secret; the gateway reaches ingestion and no database."""
    workload, container = service_workloads()["gateway"]
    s = effective_settings("gateway", container, monkeypatch)
    ports = named_ports(container)
    for name, field in FRONT_DOOR_PORTS.items():
        assert ports.get(name) == getattr(s, field), f"container port {name} != {field}"
    assert s.dicom_host == s.stow_host == "0.0.0.0", "the SCP and STOW-RS must listen on the pod IP"
    assert s.allowed_senders == [], "closed by default: no calling AE title may store until listed"
    _, refs = container_env(container)
    assert refs["CXRMESH_STOW_TOKEN"]["secretKeyRef"] == {"name": "gateway-stow", "key": "token"}
    service = next(d for d in of_kind(base_docs(), "Service") if d["metadata"]["name"] == "gateway-dicom")
    assert service["spec"]["type"] == "ClusterIP", "the base exposes nothing: an overlay chooses how"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {n: ports[n] for n in FRONT_DOOR_PORTS}
    cert = certificates(base_docs())["gateway-tls"]["spec"]
    assert "gateway-dicom.cxrmesh.svc" in cert["dnsNames"], "DICOM TLS serves the service certificate"

    gateway = workload_pod(workload)
    inside, outside = outside_hosts()
    modality, stranger = Pod({}, OUTSIDE, ip=inside), Pod({}, OUTSIDE, ip=outside)
    for name in FRONT_DOOR_PORTS:
        assert connects(modality, gateway, ports[name]), f"the hospital network cannot reach {name}"
        assert not connects(stranger, gateway, ports[name]), f"{outside} reaches {name}"
    for name in ("grpc", "metrics"):
        assert not connects(modality, gateway, ports[name]), f"the hospital network reaches {name}"
    ingestion, _ = service_workloads()["ingestion"]
    ingestion_pod = workload_pod(ingestion)
    assert connects(gateway, ingestion_pod, ingestion_pod.ports["grpc"]), "the gateway cannot reach ingestion"
    assert not connects(gateway, Pod({}, OUTSIDE, {"dicom": 104}, ip=inside), 104), "the gateway sends out"
    for other in service_packages() - {"gateway", "ingestion"}:
        pod = workload_pod(service_workloads()[other][0])
        assert not connects(gateway, pod, pod.ports["grpc"]), f"the gateway reaches {other}"
    assert not [
        d for d in of_kind(base_docs(), "Service") if d["spec"].get("type") not in (None, "ClusterIP")
    ]


def test_the_pacs_sender_sends_to_the_hospital_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PACS sender: no destination until the site names one, the de-identification key from the
    Secret (it opens the sealed re-identification table), and a way out to the hospital network and to
    the study view, not to other addresses."""
    workload, container = service_workloads()["pacs_sender"]
    s = effective_settings("pacs_sender", container, monkeypatch)
    assert s.destinations == [], "send nothing until the site names its PACS"
    _, refs = container_env(container)
    assert refs["CXRMESH_DEID_SECRET"]["secretKeyRef"] == {
        "name": "cxrmesh-secrets",
        "key": "CXRMESH_DEID_SECRET",
    }
    sender = workload_pod(workload)
    inside, outside = outside_hosts()
    for port in (104, 11112, 2762):
        assert connects(sender, Pod({}, OUTSIDE, ip=inside), port), (
            f"the PACS sender cannot reach port {port}"
        )
        assert not connects(sender, Pod({}, OUTSIDE, ip=outside), port), f"the PACS sender reaches {outside}"
    studyview = workload_pod(service_workloads()["studyview"][0])
    assert connects(sender, studyview, studyview.ports["grpc"]), "the PACS sender cannot reach the study view"


# ----------------------------------------------------------------------------- availability and scaling


def test_every_workload_has_a_disruption_budget() -> None:
    budgets = of_kind(base_docs(), "PodDisruptionBudget")
    for workload in of_kind(base_docs(), *WORKLOAD_KINDS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert any(selects(b["spec"]["selector"]["matchLabels"], labels) for b in budgets), (
            f"no PodDisruptionBudget for {workload['metadata']['name']}"
        )


def test_every_service_is_autoscaled_within_the_partitions_it_consumes() -> None:
    """One CPU autoscaler per service; its ceiling is the cluster's partition count and never more than
    the partitions of any topic the service consumes (FLOW): consumers past them would sit idle."""
    partitions = topic_partitions(base_docs())
    hpas = autoscalers()
    assert set(hpas) == service_packages(), f"not autoscaled: {service_packages() - set(hpas)}"
    for service, hpa in hpas.items():
        workload, _ = service_workloads()[service]
        spec = hpa["spec"]
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"] == topics.CLUSTER_PARTITIONS, service
        for topic in FLOW[service].consumes:
            assert spec["maxReplicas"] <= partitions[topic], (
                f"{service}: {spec['maxReplicas']} replicas, {topic} has {partitions[topic]} partitions"
            )
        assert [m["resource"]["name"] for m in spec["metrics"]] == ["cpu"]
        assert "replicas" not in workload["spec"], (
            f"{service}: replicas in the manifest would reset the autoscaler's count at every apply"
        )
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300, (
            f"{service}: every scale step rebalances the consumer group; scale down slowly"
        )


def test_every_topic_is_a_kafka_topic_with_the_cluster_partitions() -> None:
    """kafka-topics.yaml creates exactly the topics of topics.MESSAGE_TYPES, each once, all with
    CLUSTER_PARTITIONS partitions (a study's events of different topics share a partition number),
    replicated so that one broker may fail without losing an acknowledged event."""
    docs = base_docs()
    partitions = topic_partitions(docs)
    assert sorted(partitions) == sorted(topics.MESSAGE_TYPES), "KafkaTopics differ from topics.MESSAGE_TYPES"
    assert set(partitions.values()) == {topics.CLUSTER_PARTITIONS}
    retention: dict[str, int] = {}
    for topic in of_kind(docs, "KafkaTopic"):
        spec, name = topic["spec"], topic["metadata"]["name"]
        config = spec["config"]
        assert spec["replicas"] >= 3, name
        assert 2 <= int(config["min.insync.replicas"]) < spec["replicas"], name
        assert topic["metadata"]["labels"][KAFKA_CLUSTER_LABEL] == KAFKA_CLUSTER_PLACEHOLDER, name
        retention[name] = int(config["retention.ms"])
    study = [t for t in topics.MESSAGE_TYPES if t.startswith("cxrmesh.study.")]
    dead = [topics.DEAD_LETTER, topics.STUDYVIEW_DEAD_LETTER]
    assert min(retention[t] for t in study) >= 3 * 86_400_000, "study topics: days, to outlast an outage"
    assert min(retention[t] for t in dead) >= max(retention[t] for t in study), "dead letters: longer"
    assert retention[topics.AUDIT] == max(retention.values()), "the audit trail is kept the longest"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.name for o in OVERLAYS])
def test_every_overlay_names_its_kafka_cluster(overlay: Path) -> None:
    clusters = {
        t["metadata"]["labels"][KAFKA_CLUSTER_LABEL] for t in of_kind(rendered(overlay), "KafkaTopic")
    }
    assert len(clusters) == 1 and KAFKA_CLUSTER_PLACEHOLDER not in clusters, f"{overlay.name}: {clusters}"
    assert len(of_kind(rendered(overlay), "KafkaTopic")) == len(topics.MESSAGE_TYPES)


def test_lag_autoscaling_component_follows_the_flow(tmp_path: Path) -> None:
    """The optional KEDA component: per consuming service one ScaledObject with a trigger per consumed
    topic on its consumer group, within the partitions; it replaces that service's CPU autoscaler."""
    overlay = {  # an overlay that uses it (kustomize takes other kustomizations by relative path only)
        "resources": [os.path.relpath(K8S / "overlays" / "cpu", tmp_path)],
        "components": [os.path.relpath(KEDA, tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    docs = rendered(tmp_path)
    partitions = topic_partitions(docs)
    bootstrap = config_maps()["cxrmesh-config"]["CXRMESH_KAFKA_BOOTSTRAP"]
    services = {k8s_name(s): s for s in service_packages()}  # Deployment -> service
    scaled = {services[s["spec"]["scaleTargetRef"]["name"]]: s for s in of_kind(docs, "ScaledObject")}
    consumers = {name for name, stage in FLOW.items() if stage.consumes}
    assert set(scaled) == consumers
    hpas = {services[h["spec"]["scaleTargetRef"]["name"]] for h in of_kind(docs, "HorizontalPodAutoscaler")}
    assert hpas == service_packages() - consumers, "one autoscaler per service: KEDA's or the CPU one"
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert obj["metadata"]["namespace"] == kustomization(BASE)["namespace"]
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        assert spec["maxReplicaCount"] == topics.CLUSTER_PARTITIONS
        assert spec["minReplicaCount"] == autoscalers()[name]["spec"]["minReplicas"], name
        triggers = spec["triggers"]
        assert sorted(tr["metadata"]["topic"] for tr in triggers) == sorted(FLOW[name].consumes), name
        for tr in triggers:
            meta = tr["metadata"]
            assert tr["type"] == "kafka" and meta["consumerGroup"] == FLOW[name].group, name
            assert meta["bootstrapServers"] == bootstrap, f"{name}: not the services' Kafka"
            assert spec["maxReplicaCount"] <= partitions[meta["topic"]]
            assert meta.get("allowIdleConsumers", "false") == "false"
            assert meta.get("offsetResetPolicy") == "earliest", "the consumers start at earliest"


def test_prometheus_scrapes_every_metrics_port() -> None:
    monitors = of_kind(base_docs(), "PodMonitor", "ServiceMonitor")
    assert monitors, "no PodMonitor/ServiceMonitor"
    for workload in of_kind(base_docs(), *WORKLOAD_KINDS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports: dict[str, int] = {}
        for c in pod_spec(workload)["containers"]:
            ports.update(named_ports(c))
        assert "metrics" in ports, workload["metadata"]["name"]
        assert any(
            m["kind"] == "PodMonitor"
            and label_selected(m["spec"]["selector"], labels)
            and "metrics" in [e["port"] for e in m["spec"]["podMetricsEndpoints"]]
            for m in monitors
        ), f"{workload['metadata']['name']} is not scraped"
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        assert annotations.get("prometheus.io/port") == str(ports["metrics"])


# ------------------------------------------------------------------------------ certificates and mTLS


def secret_mounts(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mount path -> Secret name, for the container's mounts of Secret volumes."""
    volumes = {
        v["name"]: v["secret"]["secretName"] for v in pod_spec(workload).get("volumes") or [] if "secret" in v
    }
    return {
        m["mountPath"]: volumes[m["name"]]
        for m in container.get("volumeMounts") or []
        if m["name"] in volumes
    }


def certificates(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """secretName -> the cert-manager Certificate that fills it."""
    return {c["spec"]["secretName"]: c for c in of_kind(docs, "Certificate")}


@pytest.mark.parametrize("service", sorted(service_packages()))
def test_every_service_mounts_its_certificate(service: str) -> None:
    """The three TLS settings name files of a mounted Secret that cert-manager fills with this service's
    certificate: CN = the service, role OU mesh, its Service names and localhost (the probe) as SANs."""
    workload, container = service_workloads()[service]
    values, _ = container_env(container)
    mounts = secret_mounts(workload, container)
    secrets = set()
    for env, file in TLS_ENV.items():
        path = Path(values.get(env, ""))
        assert path.name == file, f"{service}: {env} is {values.get(env)!r}, not the Secret's {file}"
        assert str(path.parent) in mounts, f"{service}: {env} points outside a mounted Secret"
        secrets.add(mounts[str(path.parent)])
    assert len(secrets) == 1, f"{service}: the TLS files come from more than one Secret"
    cert = certificates(base_docs()).get(secrets.pop())
    assert cert is not None, f"{service}: its TLS Secret is not a cert-manager Certificate's"
    spec = cert["spec"]
    identity = server_identity(service)  # the local mesh's: same name, same roles
    assert spec["commonName"] == identity.name == service
    assert spec["subject"]["organizationalUnits"] == list(identity.roles), f"{service}: roles differ"
    assert identity.roles[0] == "mesh", "service certificates carry the mesh role"
    assert {"server auth", "client auth"} <= set(spec["usages"])
    name = k8s_name(service)  # the names its Service answers to
    assert {name, f"{name}.cxrmesh.svc", "localhost"} <= set(spec["dnsNames"])
    assert "127.0.0.1" in spec["ipAddresses"], "the pod's own health probe calls 127.0.0.1"
    assert spec["issuerRef"] == ISSUER
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert (container.get(kind) or {}).get("exec", {}).get("command") == HEALTH_PROBE


def test_every_certificate_secret_is_mounted() -> None:
    mounted = set()
    for workload in of_kind(base_docs(), *WORKLOAD_KINDS):
        for container in all_containers(workload):
            mounted |= set(secret_mounts(workload, container).values())
    for secret, cert in certificates(base_docs()).items():
        if cert["metadata"]["name"] == "prometheus":  # read by the Prometheus operator (monitoring.yaml)
            monitors = [m for m in of_kind(base_docs(), "PodMonitor") if secret in str(m)]
            assert monitors, "the prometheus certificate is used by no PodMonitor"
            continue
        assert secret in mounted, (
            f"Certificate {cert['metadata']['name']}: Secret {secret} is mounted nowhere"
        )
        assert cert["spec"]["issuerRef"] == ISSUER, f"{cert['metadata']['name']}: another issuer"


def test_triton_serves_grpc_with_mutual_tls() -> None:
    server = pod_spec(triton(base_docs()))["containers"][0]
    args = dict(a.split("=", 1) for a in server["args"] if "=" in a)
    assert args.get("--grpc-use-ssl-mutual") == "true"
    mounts = secret_mounts(triton(base_docs()), server)
    for flag, file in [
        ("--grpc-server-cert", "tls.crt"),
        ("--grpc-server-key", "tls.key"),
        ("--grpc-root-cert", "ca.crt"),
    ]:
        path = Path(args[flag])
        assert path.name == file and mounts.get(str(path.parent)) == "triton-tls", flag
    assert certificates(base_docs())["triton-tls"]["spec"]["commonName"] == "triton"
    service = next(d for d in of_kind(base_docs(), "Service") if d["metadata"]["name"] == "triton")
    assert "http" not in [p["name"] for p in service["spec"]["ports"]], (
        "Triton's HTTP has no TLS: probes only"
    )


def test_the_issuer_is_brought_by_the_dev_overlay() -> None:
    """The base names the issuer and does not define it (production brings its own); dev makes a CA."""
    assert not of_kind(base_docs(), "Issuer", "ClusterIssuer")
    docs = rendered(DEV)
    issuers = {i["metadata"]["name"]: i for i in of_kind(docs, "Issuer")}
    ca_issuer = issuers[ISSUER["name"]]
    ca_secret = ca_issuer["spec"]["ca"]["secretName"]
    ca_cert = certificates(tuple(docs))[ca_secret]
    assert ca_cert["spec"]["isCA"] is True
    assert "selfSigned" in issuers[ca_cert["spec"]["issuerRef"]["name"]]["spec"]
    assert len(of_kind(docs, "Certificate")) == len(of_kind(base_docs(), "Certificate")) + 1


@pytest.mark.parametrize("service", sorted(service_packages()))
def test_kafka_and_milvus_credentials_come_from_secrets(service: str) -> None:
    _, container = service_workloads()[service]
    values, refs = container_env(container)
    names = ("CXRMESH_KAFKA_SASL_USERNAME", "CXRMESH_KAFKA_SASL_PASSWORD")
    if service in NO_KAFKA:
        stage = FLOW[service]
        assert not stage.consumes and not stage.produces, f"{service} uses Kafka: {stage}"
        assert not set(names) & set(refs), f"{service}: Kafka credentials, but {NO_KAFKA[service]}"
        assert values.get("CXRMESH_AUDIT_TO_KAFKA") == "false", f"{service}: would send its audit to Kafka"
        return
    for name in names:
        ref = refs[name]["secretKeyRef"]
        assert ref["name"] == f"{k8s_name(service)}-kafka", f"{service}: {name} is not from its own Secret"
    assert values.get("CXRMESH_KAFKA_SECURITY_PROTOCOL") in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    if service == "search":
        assert "secretKeyRef" in refs["CXRMESH_MILVUS_TOKEN"]


def test_the_health_probe_answers_over_mutual_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the exec probe runs: Health/Check on 127.0.0.1 with the pod's own certificate and settings."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from cxrmesh.local.pki import LocalCA, server_identity
    from cxrmesh.runtime.tls import server_credentials

    files = LocalCA(tmp_path).issue(server_identity("search"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
    server.start()
    try:
        for key in list(os.environ):
            if key.startswith("CXRMESH_"):
                monkeypatch.delenv(key)
        monkeypatch.setenv("CXRMESH_GRPC_PORT", str(port))
        monkeypatch.setenv("CXRMESH_TLS_CERT_FILE", str(files.cert))
        monkeypatch.setenv("CXRMESH_TLS_KEY_FILE", str(files.key))
        monkeypatch.setenv("CXRMESH_TLS_CA_FILE", str(files.ca))
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert health_probe.main() == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert health_probe.main() == 0
        monkeypatch.setenv(
            "CXRMESH_TLS_CA_FILE", str(LocalCA(tmp_path / "other").issue(server_identity("x")).ca)
        )
        assert health_probe.probe(ServiceSettings()).startswith("UNREACHABLE"), (
            "a certificate from another CA"
        )
    finally:
        server.stop(None)


# ---------------------------------------------------------------------------------------------- Triton


def triton(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> dict[str, Any]:
    found = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "triton"]
    assert len(found) == 1
    return found[0]


def test_triton_base_is_the_gpu_form_with_the_repository_delivered() -> None:
    deployment = triton(base_docs())
    server = pod_spec(deployment)["containers"][0]
    assert server["resources"]["limits"].get("nvidia.com/gpu") == 1
    args = server["args"]
    assert "--model-repository=/models" in args
    assert not any(a.startswith("--model-config-name") for a in args), "base = the default config.pbtxt"
    assert "/models" in [m["mountPath"] for m in server["volumeMounts"]]
    assert "/dev/shm" in [m["mountPath"] for m in server["volumeMounts"]], "python backend needs /dev/shm"
    init = {c["name"]: c for c in pod_spec(deployment)["initContainers"]}
    dockerfile = (DOCKER / "Dockerfile.triton").read_text()
    assert "/opt/cxrmesh/model_repository" in " ".join(init["models"]["command"])
    assert "COPY --chown=1000:1000 model_repository /opt/cxrmesh/model_repository" in dockerfile
    exit_timeout = next(int(a.split("=")[1]) for a in args if a.startswith("--exit-timeout-secs="))
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > exit_timeout


# ----------------------------------------------------------------------------------- container builds


def test_container_build_files() -> None:
    services = (DOCKER / "Dockerfile.services").read_text()
    assert re.search(r"pip install -c constraints\.txt \"\.\[serve(,s3)?\]\"", services)
    assert not re.search(r"\[[^\]]*\btrain\b", services), "no training extra (torch) in the services image"
    assert "torch must not be" in services
    triton_file = (DOCKER / "Dockerfile.triton").read_text()
    assert re.search(
        r"^FROM nvcr\.io/nvidia/tritonserver:\$\{NGC_VERSION\}-py3 AS triton$", triton_file, re.M
    )
    assert re.search(
        r"^FROM nvcr\.io/nvidia/tensorrt:\$\{NGC_VERSION\}-py3 AS trt-builder$", triton_file, re.M
    )
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "data", "weights", "runs"} <= ignored
    assert not ignored & {
        "src",
        "export",
        "services",
        "model_repository",
        "pyproject.toml",
        "constraints.txt",
    }


def test_every_service_package_is_in_the_wheel() -> None:
    """The image installs the project as a wheel: `python -m cxrmesh.services.X` needs X listed there."""
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = {f"cxrmesh.services.{s}" for s in service_folders()} - packages
    assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"


# ------------------------------------------------------------------------------ rendered and validated


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.name for o in OVERLAYS])
def test_overlay_renders(overlay: Path) -> None:
    docs = rendered(overlay)
    namespace = kustomization(BASE)["namespace"]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']} {doc['metadata']['name']}"
    assert not of_kind(docs, "Secret")
    server = triton(docs)
    containers = all_containers(server)
    args = pod_spec(server)["containers"][0]["args"]
    gpus = [c["name"] for c in containers if "nvidia.com/gpu" in (c["resources"].get("limits") or {})]
    if overlay.name == "cpu":
        assert "--model-config-name=cpu" in args
        assert not gpus and "nodeSelector" not in pod_spec(server) and "tolerations" not in pod_spec(server)
    if overlay.name == "gpu":
        assert not any(a.startswith("--model-config-name") for a in args)
        init = [c["name"] for c in pod_spec(server)["initContainers"]]
        assert init == ["models", "build-plans"], "plans are built after the repository is copied"
        build = pod_spec(server)["initContainers"][1]
        assert build["command"][-2:] == ["cxrmesh.export.build_trt", "/models"]
        assert set(gpus) == {"build-plans", "triton"}
    for doc in docs:  # every container image is one the Dockerfiles build
        if doc["kind"] in WORKLOAD_KINDS:
            for c in all_containers(doc):
                assert c["image"].split(":")[0] in (
                    "cxrmesh/services",
                    "cxrmesh/triton",
                    "cxrmesh/trt-builder",
                )


def validate_schema(docs: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate to check schemas")
    problems = []
    for doc in docs:
        group = doc["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):
            continue  # a custom resource (Cluster, KafkaTopic, PodMonitor, ...): no schema offline
        try:
            kv.validate(doc, MIN_K8S, strict=True)
        except kv.ValidationError as err:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: {err.message} at {list(err.path)}")
    return problems


def test_base_objects_match_the_kubernetes_schema() -> None:
    assert validate_schema(base_docs()) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.name for o in OVERLAYS])
def test_rendered_overlay_matches_the_kubernetes_schema(overlay: Path) -> None:
    assert validate_schema(rendered(overlay)) == []
