"""Mutual TLS on a real gRPC port and its /metrics: who gets in, who is refused, and how it fails closed.

The per-port checks of a whole running mesh (seven services and Triton) are in tests/e2e/test_mesh_e2e.py;
this runs one ServiceRuntime and tritonserver's TLS flags, without the mesh.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.tls_clients import health_code, refused_clients

from cxrmesh.local.pki import OPERATOR, LocalCA, server_identity
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tls import (
    PLAINTEXT_WARNING,
    TlsConfigError,
    TlsFiles,
    https_context,
    open_channel,
    triton_client_options,
)


def _settings(tmp_path: Path, **kw: object) -> ServiceSettings:
    return ServiceSettings(
        service="tls-test", grpc_port=0, metrics_port=0, log_format="text", data_dir=tmp_path, **kw
    )


@pytest.fixture()
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA(tmp_path / "pki")


@pytest.fixture()
def served(tmp_path: Path, ca: LocalCA) -> Iterator[tuple[ServiceRuntime, str]]:
    files = ca.issue(server_identity("tls-test"))
    settings = _settings(tmp_path, tls_cert_file=files.cert, tls_key_file=files.key, tls_ca_file=files.ca)
    runtime = ServiceRuntime(settings)
    port = runtime.start()
    yield runtime, f"127.0.0.1:{port}"
    runtime.stop()


def test_only_a_client_of_the_same_ca_gets_in(served, ca: LocalCA, tmp_path: Path) -> None:
    _, target = served
    client = ca.issue(OPERATOR)
    assert health_code(lambda t: open_channel(t, client), target) == grpc.StatusCode.OK
    for name, connect in refused_clients(client, tmp_path / "rogue").items():
        assert health_code(connect, target) == grpc.StatusCode.UNAVAILABLE, name


def test_metrics_need_a_client_certificate_too(served, ca: LocalCA, tmp_path: Path) -> None:
    runtime, _ = served
    url = f"https://127.0.0.1:{runtime.metrics_port}/metrics"
    client = ca.issue(OPERATOR)
    text = urllib.request.urlopen(url, timeout=5, context=https_context(client)).read().decode()
    assert "# TYPE" in text
    rogue = LocalCA(tmp_path / "rogue").issue(OPERATOR)
    no_cert = ssl.create_default_context(cafile=str(client.ca))
    for context in (no_cert, https_context(TlsFiles(rogue.cert, rogue.key, client.ca))):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(url, timeout=5, context=context).read()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url.replace("https:", "http:"), timeout=5).read()


def test_a_service_without_tls_files_refuses_to_start(tmp_path: Path, ca: LocalCA) -> None:
    with pytest.raises(TlsConfigError, match=r"CXRMESH_TLS_CERT_FILE.*CXRMESH_INSECURE"):
        ServiceRuntime(_settings(tmp_path))
    files = ca.issue(server_identity("tls-test"))
    with pytest.raises(TlsConfigError, match="incomplete"):
        ServiceRuntime(_settings(tmp_path, tls_cert_file=files.cert, tls_key_file=files.key))
    with pytest.raises(TlsConfigError, match="cannot read the TLS key"):
        missing = tmp_path / "missing.key"
        settings = _settings(tmp_path, tls_cert_file=files.cert, tls_key_file=missing, tls_ca_file=files.ca)
        ServiceRuntime(settings).start()


def test_insecure_is_plaintext_and_says_so(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    runtime = ServiceRuntime(_settings(tmp_path, insecure=True))
    port = runtime.start()
    try:
        # the service's own log handler (configure_logging) writes to stderr
        lines = capfd.readouterr().err.splitlines()
        assert any("WARNING" in line and PLAINTEXT_WARNING in line for line in lines)
        assert health_code(grpc.insecure_channel, f"127.0.0.1:{port}") == grpc.StatusCode.OK
    finally:
        runtime.stop()


def test_triton_gets_mutual_tls_flags_and_clients_its_files(ca: LocalCA, tmp_path: Path) -> None:
    from cxrmesh.local.triton_server import _grpc_tls_args

    files = ca.issue(server_identity("triton"))
    assert _grpc_tls_args(None) == []
    args = _grpc_tls_args(files)
    assert "--grpc-use-ssl-mutual=true" in args
    assert f"--grpc-root-cert={files.ca}" in args and f"--grpc-server-key={files.key}" in args
    options = triton_client_options(files)
    assert options["ssl"] is True and options["root_certificates"] == str(files.ca)
    assert triton_client_options(None) == {}


def test_the_mesh_issues_certificates_once_and_clients_find_them(tmp_path: Path) -> None:
    from cxrmesh.local.mesh import Mesh, MeshError, MeshState

    mesh = Mesh(tmp_path, services=("ingestion", "search"))
    with pytest.raises(MeshError, match="no client certificate"):
        MeshState(home=str(tmp_path)).tls()
    mesh._issue_certificates()
    env = mesh._tls_env("search")
    first = Path(env["CXRMESH_TLS_CERT_FILE"]).read_bytes()
    mesh._issue_certificates()  # the next `up` reuses what is still valid
    assert Path(env["CXRMESH_TLS_CERT_FILE"]).read_bytes() == first
    assert Path(env["CXRMESH_TLS_CA_FILE"]) == tmp_path / "pki" / "ca.pem"
    state = MeshState(home=str(tmp_path))
    state.save()
    assert MeshState.load(tmp_path).tls().cert == tmp_path / "pki" / "operator.pem"
    loose = Mesh(tmp_path / "debug", insecure=True)
    assert loose._tls_env("search") == {"CXRMESH_INSECURE": "true", "CXRMESH_AUTH_MODE": "off"}
    (tmp_path / "debug").mkdir()
    MeshState(home=str(tmp_path / "debug"), insecure=True).save()
    assert MeshState.load(tmp_path / "debug").tls() is None
