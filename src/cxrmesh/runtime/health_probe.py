"""``python -m cxrmesh.runtime.health_probe``: the Kubernetes probe of a service whose port wants mTLS.

kubelet's built-in gRPC probe cannot present a client certificate, and every cxrmesh port requires
one. So the pod probes itself: an exec probe runs this module in the service's container, which
reads the same settings as the service (``CXRMESH_GRPC_PORT``, ``CXRMESH_TLS_*`` from the pod's
environment), calls ``grpc.health.v1.Health/Check`` on 127.0.0.1 with the pod's own certificate,
and exits 0 only on SERVING. A certificate that is missing, expired or from another CA makes the
probe fail as it would make every real caller fail, so the pod shows it as not ready.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tls import TlsFiles, open_channel

TIMEOUT_S = 4.0  # below the probes' timeoutSeconds (k8s/base/services/template/workload.yaml)


def health_status(target: str, tls: TlsFiles | None, timeout_s: float) -> str:
    """SERVING / NOT_SERVING / ... of the gRPC server at ``target`` (grpc.RpcError when it does not answer).

    The one health check of a cxrmesh port: this probe and the local mesh supervisor both use it.
    """
    with open_channel(target, tls) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def probe(settings: ServiceSettings, timeout_s: float = TIMEOUT_S) -> str:
    """The health status name of the service on this pod's gRPC port (UNREACHABLE on any RPC error)."""
    try:
        return health_status(f"127.0.0.1:{settings.grpc_port}", settings.tls(), timeout_s)
    except grpc.RpcError as exc:
        return f"UNREACHABLE ({exc.code().name})"


def main() -> int:
    status = probe(ServiceSettings())
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
