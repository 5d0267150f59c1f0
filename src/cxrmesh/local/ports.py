"""Free loopback ports for the single-machine stack (broker, Milvus, Triton, services, tests).

One definition: every launcher that may pick a port at random asks here.

Why not "bind port 0 and read the number back": the kernel hands out such a port from the
*ephemeral* range (``net.ipv4.ip_local_port_range``, 32768-60999 on Linux), the same range it
draws the local port of every outgoing connection from. Between the moment a launcher learns the
number and the moment the child process binds it, any client socket on the machine (the Milvus
server alone opens hundreds) may be given that very port, and the child dies with "Address already
in use" (seen in a fresh-clone CI run of the two-replica mesh). A port *below* the ephemeral range
is never given to an outgoing connection, so only another explicit bind can take it; choosing at
random among ~12,000 of them, checking that each binds, and never handing the same one out twice
from this process makes that unlikely enough for a test machine.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000  # above the well-known and most registered service ports (e.g. 11112, 19530)
_handed_out: set[tuple[str, int]] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; the IANA range elsewhere)."""
    try:
        low, high = (int(v) for v in _RANGE_FILE.read_text().split())
        return low, high
    except (OSError, ValueError):
        return 49152, 65535


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that binds now, lies outside the ephemeral range, and has not been
    handed out before by this process (see the module docstring for why)."""
    low, high = ephemeral_range()
    candidates = (_LOWEST, low - 1) if low - 1 - _LOWEST >= 1000 else (max(high + 1, 1024), 65535)
    with _lock:
        for _ in range(200):
            port = _random.randint(*candidates)
            if (host, port) in _handed_out or not _bindable(host, port):
                continue
            _handed_out.add((host, port))
            return port
    raise OSError(f"no free port on {host} in {candidates[0]}-{candidates[1]} after 200 tries")
