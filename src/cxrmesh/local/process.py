"""Child processes of the local launchers (broker, S3, Milvus, the mesh's services): one way to start
one in its own session with its output appended to a log, to stop it, to SIGKILL it, and to show the
end of its log in an error.

Why its own session: a Ctrl-C in the terminal of ``cxrmesh up`` reaches the supervisor first, which
then stops its children in order; and a SIGKILL of the group (fault tests) takes a child's helpers too.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # some children (Tansu) colour their log lines


def spawn(
    argv: list[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, stdin closed, stdout and stderr appended to ``log_path``.

    The child's environment is ``base_env`` (default: this process's) with ``env`` on top."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**(os.environ if base_env is None else base_env), **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the child's whole session and reap it (fault tests): no goodbye, nothing flushed."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop(
    proc: subprocess.Popen[bytes] | None,
    what: str,
    sig: signal.Signals = signal.SIGTERM,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """Send ``sig`` (the child's clean-shutdown signal), wait ``grace_s``, then SIGKILL; idempotent."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("%s ignored %s, killing it", what, sig.name, extra={"pid": proc.pid})
        proc.kill()
        proc.wait()


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's log, colour codes removed, for an error message."""
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(_ANSI.sub("", path.read_text(errors="replace")).splitlines()[-lines:])


class StartStop:
    """``with launcher:`` for the local launchers: ``start()`` on entry, ``stop()`` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
