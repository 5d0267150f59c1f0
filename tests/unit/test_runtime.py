"""The shared runtime with a real gRPC server on loopback: health, reflection, errors, metrics."""

from __future__ import annotations

import json
import logging
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cxrmesh.contracts.errors import InvalidArgument
from cxrmesh.local.pki import OPERATOR, LocalCA, server_identity
from cxrmesh.runtime.blobs import NPY, BlobCorrupt, LocalBlobStore, array_bytes, bytes_array, open_blob_store
from cxrmesh.runtime.grpc_server import ServiceRuntime, error_reason
from cxrmesh.runtime.log import JsonFormatter
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tls import TlsFiles, https_context, open_channel
from cxrmesh.v1 import embedding_pb2, embedding_pb2_grpc

SERVICE = "cxrmesh.v1.EmbeddingService"


class Servicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def GetEmbedding(self, request, context):
        if request.study_key == "bad":
            raise InvalidArgument("bad_key", "study key 'bad' is refused; send another")
        if request.study_key == "boom":
            raise RuntimeError("secret internals")
        return embedding_pb2.GetEmbeddingReply(study_key=request.study_key, embedding=[1.0])


@pytest.fixture()
def pki(tmp_path: Path) -> tuple[TlsFiles, TlsFiles]:
    """(server, client) certificates from one local CA: the runtime serves mutual TLS only."""
    ca = LocalCA(tmp_path / "pki")
    return ca.issue(server_identity("test")), ca.issue(OPERATOR)


@pytest.fixture()
def served(tmp_path: Path, pki: tuple[TlsFiles, TlsFiles]):
    server, client = pki
    settings = ServiceSettings(
        service="test",
        grpc_port=0,
        metrics_port=0,
        health_interval_s=0.05,
        log_format="text",
        data_dir=tmp_path,
        tls_cert_file=server.cert,
        tls_key_file=server.key,
        tls_ca_file=server.ca,
        audit_to_kafka=False,  # no broker in a unit test (the audit log still gets every record)
    )
    runtime = ServiceRuntime(settings)
    dep = {"up": False}
    runtime.add_service(SERVICE, embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server, Servicer())
    runtime.add_dependency("thing", lambda: dep["up"])
    port = runtime.start()
    channel = open_channel(f"127.0.0.1:{port}", client)
    yield runtime, channel, dep
    channel.close()
    runtime.stop()


def _health(channel: grpc.Channel, service: str = "") -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _wait_health(channel: grpc.Channel, want: str) -> None:
    import time

    deadline = time.monotonic() + 5
    while _health(channel) != want:
        assert time.monotonic() < deadline, f"health never became {want}"
        time.sleep(0.05)


def test_health_follows_dependencies(served) -> None:
    _, channel, dep = served
    _wait_health(channel, "NOT_SERVING")
    dep["up"] = True
    _wait_health(channel, "SERVING")
    assert _health(channel, SERVICE) == "SERVING"
    dep["up"] = False
    _wait_health(channel, "NOT_SERVING")


def test_reflection_lists_the_service(served) -> None:
    _, channel, _ = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_errors_map_to_status_with_reason_and_metrics_count_them(served, pki) -> None:
    runtime, channel, _ = served
    stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
    assert stub.GetEmbedding(embedding_pb2.GetEmbeddingRequest(study_key="ok"), timeout=5).study_key == "ok"
    with pytest.raises(grpc.RpcError) as bad:
        stub.GetEmbedding(embedding_pb2.GetEmbeddingRequest(study_key="bad"), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(bad.value) == "bad_key"
    assert "send another" in bad.value.details()
    with pytest.raises(grpc.RpcError) as boom:
        stub.GetEmbedding(embedding_pb2.GetEmbeddingRequest(study_key="boom"), timeout=5)
    assert boom.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in boom.value.details()
    url = f"https://127.0.0.1:{runtime.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5, context=https_context(pki[1])).read().decode()
    line = (
        'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="GetEmbedding",'
        'grpc_service="cxrmesh.v1.EmbeddingService"}'
    )
    assert line in text
    assert "grpc_server_handling_seconds_bucket" in text
    assert "bad" not in {v for ln in text.splitlines() if ln.startswith("grpc_") for v in ln.split('"')[1::2]}


def test_json_logs_drop_identifier_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "accepted", (), None)
    record.study_key = "abc123"
    record.duration_s = 0.5
    out = json.loads(JsonFormatter("svc").format(record))
    assert out["msg"] == "accepted" and out["duration_s"] == 0.5 and out["service"] == "svc"
    assert "study_key" not in out


def test_settings_from_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "svc.toml"
    toml.write_text('grpc_port = 6000\ntriton_url = "triton:8001"\n')
    monkeypatch.setenv("CXRMESH_CONFIG_FILE", str(toml))
    monkeypatch.setenv("CXRMESH_GRPC_PORT", "7000")
    s = ServiceSettings()
    assert s.grpc_port == 7000  # the environment beats the file
    assert s.triton_url == "triton:8001"
    monkeypatch.setenv("CXRMESH_GRPC_PORT", "99999")
    with pytest.raises(ValueError, match="grpc_port"):
        ServiceSettings()


def test_local_blob_store_is_content_addressed_and_verified(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri())
    assert isinstance(store, LocalBlobStore)
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref = store.put(array_bytes(arr), NPY)
    again = store.put(array_bytes(arr), NPY)
    assert ref == again and ref.size_bytes > 0
    assert np.array_equal(bytes_array(store.get(ref)), arr)
    path = tmp_path / "blobs" / "sha256" / ref.sha256[:2] / ref.sha256
    path.write_bytes(b"tampered")
    with pytest.raises(BlobCorrupt):
        store.get(ref)
