"""Free loopback ports for the single-machine stack (broker, Milvus, Triton, services, tests).

One definition: every launcher that may pick a port at random asks here.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it; a race is possible, not likely)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
