"""Mutual TLS for every gRPC port and every client: the one place that makes credentials and opens channels.

Every server asks for a client certificate signed by the mesh's CA (``require_client_auth``), and every
client presents one and verifies the server against the same CA, so a plaintext client, a client without
a certificate and a client from another CA are all refused at the handshake. The files come from settings
(``CXRMESH_TLS_CERT_FILE``, ``CXRMESH_TLS_KEY_FILE``, ``CXRMESH_TLS_CA_FILE``): Kubernetes mounts them
from cert-manager Secrets, ``cxrmesh up`` issues them with ``cxrmesh.local.pki``. Plaintext exists only
when asked for by name (``insecure=True``), for debugging.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from cxrmesh.runtime import tracing

log = logging.getLogger(__name__)

TLS_ENV = ("CXRMESH_TLS_CERT_FILE", "CXRMESH_TLS_KEY_FILE", "CXRMESH_TLS_CA_FILE")
PLAINTEXT_WARNING = "plaintext gRPC: debugging only"


class TlsConfigError(ValueError):
    """The TLS settings are missing or incomplete, and plaintext was not asked for."""


@dataclass(frozen=True)
class TlsFiles:
    """One identity's PEM files: its certificate (chain), its private key and the CA it trusts."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(certificate chain, private key, CA) as bytes; names the file that cannot be read."""
        out = []
        for what, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise TlsConfigError(f"cannot read the TLS {what} file {path}: {exc.strerror}") from exc
        return out[0], out[1], out[2]


def certificate_expiry(tls: TlsFiles) -> dict[str, float]:
    """When the identity's certificate (``server``: the first of its chain file) and the earliest
    certificate of its CA bundle (``ca``) stop being valid, as unix timestamps: for the expiry metric,
    so an operator is warned before a handshake starts failing."""
    chain, _, ca = tls.read()
    out = {}
    for name, pem, path in (("server", chain, tls.cert), ("ca", ca, tls.ca)):
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except ValueError as exc:
            raise TlsConfigError(f"no PEM certificate in the TLS file {path}: {exc}") from exc
        ends = [c.not_valid_after_utc.timestamp() for c in certs]
        out[name] = ends[0] if name == "server" else min(ends)
    return out


def resolve_tls(cert: Path | None, key: Path | None, ca: Path | None, insecure: bool) -> TlsFiles | None:
    """The TLS files from settings, or None when plaintext was asked for; refuses anything in between."""
    given = [p for p in (cert, key, ca) if p is not None]
    if len(given) == 3:
        return TlsFiles(Path(cert), Path(key), Path(ca))  # type: ignore[arg-type]
    if insecure and not given:
        return None
    if given:
        raise TlsConfigError(f"incomplete TLS settings: set all of {', '.join(TLS_ENV)}")
    raise TlsConfigError(
        f"no TLS files: set {', '.join(TLS_ENV)} (mutual TLS), "
        "or CXRMESH_INSECURE=true to serve plaintext for debugging"
    )


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Server side of mutual TLS: present ``tls.cert``, accept only clients that ``tls.ca`` signed."""
    chain, key, ca = tls.read()
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: verify the server against ``tls.ca``, present ``tls.cert``."""
    chain, key, ca = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)


def open_channel(target: str, tls: TlsFiles | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to ``target`` with mutual TLS; plaintext only when ``tls`` is None (``insecure``).
    Its calls carry the current trace (a client span each, the context in the metadata)."""
    if tls is None:
        channel = grpc.insecure_channel(target, options=list(options))
    else:
        channel = grpc.secure_channel(target, channel_credentials(tls), options=list(options))
    return tracing.intercept_channel(channel)


def triton_client_options(tls: TlsFiles | None) -> dict[str, Any]:
    """Keyword arguments of ``tritonclient.grpc.InferenceServerClient`` for mutual TLS with Triton."""
    if tls is None:
        return {}
    return {
        "ssl": True,
        "root_certificates": str(tls.ca),
        "private_key": str(tls.key),
        "certificate_chain": str(tls.cert),
    }


def metrics_server_options(tls: TlsFiles | None) -> dict[str, Any]:
    """Keyword arguments of ``prometheus_client.start_http_server``: HTTPS with client certificates."""
    if tls is None:
        return {}
    return {
        "certfile": str(tls.cert),
        "keyfile": str(tls.key),
        "client_cafile": str(tls.ca),
        "client_auth_required": True,
    }


def https_context(tls: TlsFiles) -> ssl.SSLContext:
    """An ``ssl`` client context that trusts ``tls.ca`` and presents ``tls.cert`` (to scrape /metrics)."""
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context
