"""Server-side ``ssl`` contexts for the gateway's two non-gRPC ports, from the service's TLS files.

DICOM TLS asks every sender for a certificate signed by the mesh's CA, like the gRPC ports
(``cxrmesh.runtime.tls.server_credentials``), and by that CA only: not the system's public CAs, which
``ssl.create_default_context`` would also trust for client certificates. STOW-RS is HTTPS with the same
server certificate but authenticates callers by bearer token, so it asks for no client certificate.
``cxrmesh.runtime.tls.https_context`` is the client side of the same files.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from cxrmesh.runtime.tls import TlsFiles

HANDSHAKE_TIMEOUT_S = 30.0


class _BoundedHandshake(ssl.SSLContext):
    """pynetdicom runs the TLS handshake in its accept loop: a peer that opens a connection and never
    says hello would hold every other sender off, so the handshake gets a deadline."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        timeout = sock.gettimeout()
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        wrapped.settimeout(timeout)
        return wrapped


def server_context(tls: TlsFiles, require_client_cert: bool) -> ssl.SSLContext:
    """TLS 1.2 or later, presenting ``tls.cert``; with ``require_client_cert`` only ``tls.ca``'s clients."""
    tls.read()  # names a missing file, as the gRPC side does
    context = _BoundedHandshake(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key))
    if require_client_cert:
        context.load_verify_locations(cafile=str(tls.ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
