"""The local mesh's certificate authority: one CA, one certificate per service and per client role.

``cxrmesh up`` is closed by default: every gRPC port asks for a client certificate signed by this CA
(mutual TLS), and the authorization interceptor reads the caller's roles from the certificate. In a
cluster, cert-manager issues the same shape of certificate (k8s/); here this module does, with the
``cryptography`` library (no openssl shell-outs, no hand-written ASN.1).

The identity convention, shared with cert-manager's ``Certificate`` resources:

* subject CN = the caller's name (a service name, or a client such as ``operator``);
* one subject OU per role (``ingest``, ``clinical-read``, ``ops``, ``mesh``...);
* server certificates carry ``localhost``/``127.0.0.1`` (and the service name) as subject
  alternative names, so clients verify the host they dial.

Files live in ``<home>/pki/``: ``ca.pem`` (+ ``ca.key``), ``<name>.pem`` + ``<name>.key`` per identity,
keys mode 0600. An existing, still-valid certificate is reused on the next start (so clients that
already hold the CA keep working); one within ``RENEW_BEFORE`` of expiry is reissued.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cxrmesh.runtime.tls import TlsFiles

CA_NAME = "ca"
CA_DAYS = 3650
LEAF_DAYS = 397  # the CA/Browser Forum ceiling; rotation is a restart of `cxrmesh up`
RENEW_BEFORE = dt.timedelta(days=30)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Identity:
    """One certificate's subject: who it is, what it may do, where it serves (servers only)."""

    name: str
    roles: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # non-empty: a server certificate valid for these names/addresses


CertFiles = TlsFiles  # where one identity's PEM files are: what settings name (cert, key, CA to trust)

MESH_ROLE = "mesh"  # service-to-service calls; every service certificate carries it
OPERATOR = Identity("operator", ("ingest", "clinical-read", "ops"))  # the CLI, the demo, the supervisor


# services that call the API as a client would, beyond ``mesh``: the gateway sends studies (ingest),
# the PACS sender reads a finished study's results (clinical-read). Nothing else gets these roles.
SERVICE_ROLES: dict[str, tuple[str, ...]] = {"gateway": ("ingest",), "pacs_sender": ("clinical-read",)}


def server_identity(name: str) -> Identity:
    """A service's (or Triton's) identity: serves on loopback, calls the other services as ``mesh``."""
    return Identity(name, (MESH_ROLE, *SERVICE_ROLES.get(name, ())), LOCAL_HOSTS)


def identity_files(folder: Path, name: str) -> CertFiles:
    """The files of identity ``name`` in a CA folder (whether or not they exist yet)."""
    folder = Path(folder)
    return CertFiles(folder / f"{name}.pem", folder / f"{name}.key", folder / f"{CA_NAME}.pem")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a key readable by its owner only (created 0600, never world-readable for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _subject(name: str, roles: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cxrmesh")]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role) for role in roles]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, name))
    return x509.Name(attrs)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _still_good(cert_path: Path, key_path: Path) -> bool:
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc - _now() > RENEW_BEFORE


class LocalCA:
    """A CA kept in a folder; issues (or reuses) one certificate per identity."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.ca_cert_path = self.folder / f"{CA_NAME}.pem"
        self.ca_key_path = self.folder / f"{CA_NAME}.key"
        if not _still_good(self.ca_cert_path, self.ca_key_path):
            self._create_ca()
        self._ca_key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        self._ca_cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())

    def _create_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _subject("cxrmesh local CA")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key_path, _key_pem(key))
        self.ca_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        # a new CA invalidates every leaf it did not sign
        for old in self.folder.glob("*.pem"):
            if old != self.ca_cert_path:
                old.unlink()

    def files(self, name: str) -> CertFiles:
        return identity_files(self.folder, name)

    def issue(self, identity: Identity) -> CertFiles:
        """The identity's certificate and key, issued now or reused while valid and signed by this CA."""
        files = self.files(identity.name)
        if _still_good(files.cert, files.key) and self._signed_here(files.cert, identity):
            return files
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if identity.hosts:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(identity.name, identity.roles))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        # every certificate names its holder in the SAN too (gRPC exposes SANs to the server)
        builder = builder.add_extension(_san((*identity.hosts, identity.name)), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())  # type: ignore[arg-type]
        _write_private(files.key, _key_pem(key))
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return files

    def _signed_here(self, cert_path: Path, identity: Identity) -> bool:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        roles = tuple(a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME))
        return cert.issuer == self._ca_cert.subject and roles == identity.roles

    def expiry(self, name: str) -> dt.datetime:
        """When the named certificate stops being valid (for status and the certificate-expiry metric)."""
        return x509.load_pem_x509_certificate(self.files(name).cert.read_bytes()).not_valid_after_utc
