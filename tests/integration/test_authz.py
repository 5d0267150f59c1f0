"""Authorization and audit on a real ServiceRuntime with mutual TLS (certificates from the local CA).

A client's roles come from its certificate's OUs (and, optionally, a bearer token); each call of a
cxrmesh.v1 method leaves exactly one audit record, in the Kafka topic (real Tansu broker) and the log.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from cxrmesh.contracts.topics import AUDIT, PARTITIONS
from cxrmesh.local.broker import ensure_topics
from cxrmesh.local.pki import LOCAL_HOSTS, OPERATOR, Identity, LocalCA
from cxrmesh.runtime.grpc_server import ServiceRuntime, error_reason
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tls import TlsFiles, open_channel
from cxrmesh.v1 import (
    embedding_pb2,
    embedding_pb2_grpc,
    events_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    studyview_pb2,
    studyview_pb2_grpc,
)

EMBEDDING = "cxrmesh.v1.EmbeddingService"
INGESTION = "cxrmesh.v1.IngestionService"
VIEW = "cxrmesh.v1.StudyViewService"
ISSUER, AUDIENCE = "https://idp.example", "cxrmesh"


class Embedding(embedding_pb2_grpc.EmbeddingServiceServicer):
    def GetEmbedding(self, request: Any, context: grpc.ServicerContext) -> Any:
        return embedding_pb2.GetEmbeddingReply(study_key=request.study_key, embedding=[1.0])


class Ingestion(ingestion_pb2_grpc.IngestionServiceServicer):
    def SubmitClinical(self, request: Any, context: grpc.ServicerContext) -> Any:
        return ingestion_pb2.SubmitClinicalReply(study_key=request.study_key)


class StudyView(studyview_pb2_grpc.StudyViewServiceServicer):
    def WatchStudy(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for _ in range(3):
            yield studyview_pb2.StudyView(study_key=request.study_key)


class Mesh:
    """One served runtime and a way to open a channel as any identity of its CA."""

    def __init__(self, ca: LocalCA, runtime: ServiceRuntime, log_file: Path):
        self.ca, self.runtime, self.log_file = ca, runtime, log_file
        self.target = f"127.0.0.1:{runtime.port}"

    def channel(self, name: str, roles: tuple[str, ...] = ()) -> grpc.Channel:
        files = self.ca.issue(Identity(name, roles))
        return open_channel(self.target, TlsFiles(files.cert, files.key, files.ca))

    def audit_lines(self, study_key: str) -> list[dict[str, Any]]:
        """The audit log's lines about one study; the service log must never name it."""
        assert study_key not in self.log_file.read_text(), "a study key reached the service log"
        audit_file = self.log_file.parent / "audit.jsonl"
        lines = [json.loads(line) for line in audit_file.read_text().splitlines() if line.startswith("{")]
        return [ln for ln in lines if ln["logger"] == "cxrmesh.audit" and ln["study_pseudonym"] == study_key]


def _serve(tmp_path: Path, **settings: Any) -> tuple[ServiceRuntime, Path]:
    log_file = tmp_path / "service.log"
    base: dict[str, Any] = {
        "service": "authz-test",
        "grpc_port": 0,
        "metrics_port": 0,
        "health_interval_s": 0.05,
        "log_file": log_file,
        "audit_log_file": tmp_path / "audit.jsonl",
        "data_dir": tmp_path,
        "audit_to_kafka": False,
        "kafka_request_timeout_ms": 5000,
    }
    runtime = ServiceRuntime(ServiceSettings(**{**base, **settings}))
    runtime.add_service(EMBEDDING, embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server, Embedding())
    runtime.add_service(INGESTION, ingestion_pb2_grpc.add_IngestionServiceServicer_to_server, Ingestion())
    runtime.add_service(VIEW, studyview_pb2_grpc.add_StudyViewServiceServicer_to_server, StudyView())
    runtime.start()
    return runtime, log_file


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Callable[..., Mesh]]:
    ca = LocalCA(tmp_path / "pki")
    server = ca.issue(Identity("authz-test", ("mesh",), LOCAL_HOSTS))
    started: list[ServiceRuntime] = []

    def make(**settings: Any) -> Mesh:
        tls = {"tls_cert_file": server.cert, "tls_key_file": server.key, "tls_ca_file": server.ca}
        runtime, log_file = _serve(tmp_path, **{**tls, **settings})
        started.append(runtime)
        return Mesh(ca, runtime, log_file)

    yield make
    for runtime in started:
        runtime.stop()


def _key() -> str:
    return f"study-{uuid.uuid4().hex[:12]}"


def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), error_reason(exc), exc.details() or ""
    return grpc.StatusCode.OK, "", ""


def _denied(method: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "cxrmesh_authz_denied_total", {"service": EMBEDDING, "method": method, "reason": reason}
        )
        or 0.0
    )


def test_roles_decide_per_method_and_denials_are_counted(serve: Callable[..., Mesh]) -> None:
    mesh = serve()
    before = _denied("GetEmbedding", "missing_role")
    with mesh.channel("ingestor", ("ingest",)) as ch:
        ok = _code(
            lambda: ingestion_pb2_grpc.IngestionServiceStub(ch).SubmitClinical(
                ingestion_pb2.SubmitClinicalRequest(study_key=_key()), timeout=5
            )
        )
        assert ok[0] == grpc.StatusCode.OK
        code, reason, details = _code(
            lambda: embedding_pb2_grpc.EmbeddingServiceStub(ch).GetEmbedding(
                embedding_pb2.GetEmbeddingRequest(study_key=_key()), timeout=5
            )
        )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "missing_role")
    assert "clinical-read" in details and "ingestor" in details  # says which role the method needs
    assert _denied("GetEmbedding", "missing_role") == before + 1
    with mesh.channel("reader", ("clinical-read",)) as ch:
        reply = embedding_pb2_grpc.EmbeddingServiceStub(ch).GetEmbedding(
            embedding_pb2.GetEmbeddingRequest(study_key="s1"), timeout=5
        )
        assert reply.study_key == "s1"


def test_health_is_open_and_reflection_is_for_ops_only(serve: Callable[..., Mesh]) -> None:
    mesh = serve()

    def reflect(ch: grpc.Channel) -> Any:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        return [r.list_services_response for r in stub.ServerReflectionInfo(iter([request]), timeout=5)]

    with mesh.channel("nobody") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        code, reason, details = _code(lambda: reflect(ch))
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "missing_role")
        assert "ops" in details
    with mesh.channel(OPERATOR.name, OPERATOR.roles) as ch:
        names = {s.name for s in reflect(ch)[0].service}
    assert {EMBEDDING, INGESTION} <= names


def test_each_call_leaves_one_audit_record_in_kafka_and_the_log(
    serve: Callable[..., Mesh], kafka_bootstrap: str
) -> None:
    ensure_topics(kafka_bootstrap, {AUDIT: PARTITIONS})
    mesh = serve(kafka_bootstrap=kafka_bootstrap, audit_to_kafka=True)
    allowed, refused = _key(), _key()
    with mesh.channel("reader", ("clinical-read",)) as ch:
        embedding_pb2_grpc.EmbeddingServiceStub(ch).GetEmbedding(
            embedding_pb2.GetEmbeddingRequest(study_key=allowed), timeout=5
        )
        _code(
            lambda: ingestion_pb2_grpc.IngestionServiceStub(ch).SubmitClinical(
                ingestion_pb2.SubmitClinicalRequest(study_key=refused), timeout=5
            )
        )
    mesh.runtime.stop()  # closes the audit trail: what was queued is sent

    records = _audit_records(kafka_bootstrap, {allowed, refused})
    assert [r.study_key for r in records].count(allowed) == 1
    assert [r.study_key for r in records].count(refused) == 1
    ok = next(r for r in records if r.study_key == allowed)
    assert (ok.caller, list(ok.roles), ok.method, ok.outcome) == (
        "reader",
        ["clinical-read"],
        "GetEmbedding",
        "OK",
    )
    assert ok.server == "authz-test" and ok.grpc_service == EMBEDDING and ok.time.seconds > 0
    no = next(r for r in records if r.study_key == refused)
    assert (no.method, no.outcome, no.reason) == ("SubmitClinical", "PERMISSION_DENIED", "missing_role")

    (line,) = mesh.audit_lines(allowed)
    assert (line["caller"], line["grpc_method"], line["outcome"]) == ("reader", "GetEmbedding", "OK")
    assert "study_key" not in line  # the formatter's rule holds; the audit field is named for what it is
    (line,) = mesh.audit_lines(refused)
    assert line["outcome"] == "PERMISSION_DENIED"


def test_a_streamed_reply_is_audited_once_when_it_ends(serve: Callable[..., Mesh]) -> None:
    mesh = serve()
    key = _key()
    with mesh.channel("reader", ("clinical-read",)) as ch:
        views = list(
            studyview_pb2_grpc.StudyViewServiceStub(ch).WatchStudy(
                studyview_pb2.GetStudyRequest(study_key=key), timeout=5
            )
        )
    assert len(views) == 3
    mesh.runtime.stop()
    (line,) = mesh.audit_lines(key)
    assert (line["grpc_method"], line["outcome"]) == ("WatchStudy", "OK")


def _audit_records(bootstrap: str, keys: set[str], timeout_s: float = 20) -> list[events_pb2.AuditRecord]:
    reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(AUDIT, p) for p in sorted(reader.partitions_for_topic(AUDIT) or ())]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        out: list[events_pb2.AuditRecord] = []
        deadline, settle = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
            for batch in reader.poll(timeout_ms=200).values():
                out += [events_pb2.AuditRecord.FromString(r.value) for r in batch]
            if settle is None and keys <= {r.study_key for r in out}:
                settle = time.monotonic() + 1.0
        return [r for r in out if r.study_key in keys]
    finally:
        reader.close()


def test_plaintext_is_refused_unless_auth_is_off(tmp_path: Path) -> None:
    for mode, expect in (("enforce", grpc.StatusCode.UNAUTHENTICATED), ("off", grpc.StatusCode.OK)):
        runtime, _ = _serve(tmp_path / mode, insecure=True, auth_mode=mode)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{runtime.port}") as ch:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)  # open
                code, reason, _ = _code(
                    lambda: embedding_pb2_grpc.EmbeddingServiceStub(ch).GetEmbedding(
                        embedding_pb2.GetEmbeddingRequest(study_key="s"), timeout=5
                    )
                )
        finally:
            runtime.stop()
        assert code == expect, mode
        if mode == "enforce":
            assert reason == "no_client_certificate"


def test_a_bearer_token_adds_roles_to_a_certificate(serve: Callable[..., Mesh], tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "idp.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    mesh = serve(auth_jwt_issuer=ISSUER, auth_jwt_audience=AUDIENCE, auth_jwt_key_file=public)

    def token(roles: list[str], signer: Any = key) -> tuple[tuple[str, str]]:
        exp = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "dr-who", "exp": exp, "roles": roles}
        return (("authorization", "Bearer " + jwt.encode(claims, signer, algorithm="ES256")),)

    def get(ch: grpc.Channel, metadata: Any) -> tuple[grpc.StatusCode, str, str]:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(ch)
        request = embedding_pb2.GetEmbeddingRequest(study_key="s")
        return _code(lambda: stub.GetEmbedding(request, metadata=metadata, timeout=5))

    with mesh.channel("portal") as ch:  # a certificate without roles
        assert get(ch, None)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "missing_role")
        assert get(ch, token(["clinical-read"]))[0] == grpc.StatusCode.OK
        assert get(ch, token(["ingest"]))[:2] == (grpc.StatusCode.PERMISSION_DENIED, "missing_role")
        forged = token(["clinical-read"], ec.generate_private_key(ec.SECP256R1()))
        assert get(ch, forged)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "bad_bearer_token")
