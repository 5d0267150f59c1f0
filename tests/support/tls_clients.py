"""Clients that must be refused by a mutual-TLS port, and one that must get through (tests only).

Each is a way a caller could try a port: plaintext, TLS without a client certificate, a client
certificate from another CA, and the proper one (the mesh's CA, a certificate it signed). The refused
ones never reach the RPC: the handshake fails, which gRPC reports as UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxrmesh.local.pki import OPERATOR, LocalCA
from cxrmesh.runtime.tls import TlsFiles, channel_credentials

Connect = Callable[[str], grpc.Channel]


def refused_clients(tls: TlsFiles, elsewhere: Path) -> dict[str, Connect]:
    """Name -> channel factory of each client a port must refuse; ``elsewhere`` holds a rogue CA."""
    rogue = LocalCA(elsewhere).issue(OPERATOR)  # same name and roles, signed by another CA
    ca = tls.ca.read_bytes()
    return {
        "plaintext": grpc.insecure_channel,
        "no client certificate": lambda target: grpc.secure_channel(
            target, grpc.ssl_channel_credentials(root_certificates=ca)
        ),
        "certificate from another CA": lambda target: grpc.secure_channel(
            target, channel_credentials(TlsFiles(rogue.cert, rogue.key, tls.ca))
        ),
    }


def health_code(connect: Connect, target: str, timeout_s: float = 5.0) -> grpc.StatusCode:
    """The status of one grpc.health.v1 Check over a channel from ``connect`` (OK when it answered)."""
    with connect(target) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK
