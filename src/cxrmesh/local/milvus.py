"""Milvus Lite as a server process (``milvus-lite server``) for the single-machine stack and the tests.

A store given ``uri=http://host:port`` takes the same code path as against a real Milvus deployment,
which an embedded ``*.db`` path does not; this launcher gives tests and ``cxrmesh up`` that server.
The data directory outlives the process, so a server stopped and started again on the same
directory and port serves the same collections.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from cxrmesh.local.ports import free_port

__all__ = ["MilvusLiteServer", "accepts_connections", "find_milvus_lite", "milvus_lite_command"]

_STOP_GRACE_S = 10.0


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


class MilvusLiteServer:
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
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                milvus_lite_command(self.data_dir, self.port, self.host), stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        """SIGTERM, wait, then kill; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_GRACE_S)

    def __enter__(self) -> MilvusLiteServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
