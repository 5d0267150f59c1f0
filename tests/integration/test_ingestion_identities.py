"""Ingestion keeps each study's original identity sealed, committed with the study or not at all.

Real parts: the ingestion service in-process on loopback gRPC with mutual TLS, a Tansu broker of this
module's own (the relay publishes to it), the mesh database on SQLite and on PostgreSQL (the
``database`` fixture), pydicom-data's RG1 radiograph, and the vault's real encryption. The service
logs to a file, which must hold none of the identifiers.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pydicom
import pytest
from plugins.postgres import DatabaseTarget
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from cxrmesh.client import ingest_bytes
from cxrmesh.contracts import topics
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.dicom.burned_in import PixelPolicy
from cxrmesh.dicom.reidentify import capture
from cxrmesh.local.broker import LocalBroker, ensure_topics
from cxrmesh.local.pki import OPERATOR, LocalCA, server_identity
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db import identities as identities_module
from cxrmesh.runtime.db.identities import IdentityStore, IdentityVault
from cxrmesh.runtime.db.schema import outbox, studies, study_identities
from cxrmesh.runtime.grpc_server import error_reason
from cxrmesh.runtime.tls import open_channel
from cxrmesh.services.ingestion import outbox as outbox_module
from cxrmesh.services.ingestion.service import build
from cxrmesh.services.ingestion.settings import IngestionSettings
from cxrmesh.v1 import ingestion_pb2_grpc

SECRET = "identities-test-secret-of-32-bytes-00"


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of this module's own: the relay's StudyIngested records reach no other test."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with LocalBroker(cluster_id="identities", log_path=log_path) as broker:
        ensure_topics(broker.bootstrap, topics.all_topics())
        yield broker.bootstrap


@pytest.fixture
def rg1() -> bytes:
    return Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()


class Ingestion:
    """A started ingestion service, its database, and what it logged."""

    def __init__(self, tmp: Path, bootstrap: str, database: DatabaseTarget):
        self.tmp, self.log_file = tmp, tmp / "ingestion.log"
        tls = LocalCA(tmp / "pki").issue(server_identity("ingestion"))
        settings = IngestionSettings(
            tls_cert_file=tls.cert,
            tls_key_file=tls.key,
            tls_ca_file=tls.ca,
            grpc_port=0,
            metrics_port=0,
            data_dir=tmp,
            database_url=database.url,
            database_password=database.password,
            kafka_bootstrap=bootstrap,
            kafka_request_timeout_ms=2000,
            deid_secret=SECRET,
            outbox_interval_s=0.2,
            grace_s=2,
            log_file=self.log_file,
        )
        self.runtime = build(settings)
        self.port = self.runtime.start()
        self.db = Database(database.url, database.password)

    def ingest(self, raw: bytes):
        with open_channel(f"127.0.0.1:{self.port}", LocalCA(self.tmp / "pki").issue(OPERATOR)) as ch:
            return ingest_bytes(ingestion_pb2_grpc.IngestionServiceStub(ch), raw)

    def rows(self, table) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

    def close(self) -> None:
        self.runtime.stop()
        self.db.close()


@pytest.fixture
def ingestion(tmp_path: Path, bootstrap: str, database: DatabaseTarget) -> Iterator[Ingestion]:
    service = Ingestion(tmp_path, bootstrap, database)
    try:
        yield service
    finally:
        service.close()


def _identifiers(raw: bytes) -> list[str]:
    """What RG1 identifies its patient and study by (values of 4+ characters)."""
    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    keywords = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "StudyInstanceUID")
    values = [str(ds[kw].value) for kw in (*keywords, "SeriesInstanceUID", "SOPInstanceUID") if kw in ds]
    return [v for v in values if len(v) >= 4]


def test_an_ingested_study_keeps_its_original_identity_sealed(ingestion: Ingestion, rg1: bytes) -> None:
    reply = ingestion.ingest(rg1)
    assert reply.study_key and not reply.duplicate

    original = pydicom.dcmread(io.BytesIO(rg1), stop_before_pixels=True)
    deid, _ = process_dicom(rg1, SECRET.encode(), PixelPolicy(ocr=False))
    identity = IdentityStore(ingestion.db, IdentityVault(SECRET.encode())).get(reply.study_key)
    assert identity == capture(original, deid.dataset)
    assert identity.uids[str(deid.dataset.StudyInstanceUID)] == original.StudyInstanceUID
    assert identity.attributes["PatientName"] == "CompressedSamples^RG1"
    assert IdentityStore(ingestion.db, IdentityVault(b"x" * 32)).get("no-such-study") is None

    with ingestion.db.read() as conn:
        (sealed, created_at) = conn.execute(
            select(study_identities.c.sealed, study_identities.c.created_at)
        ).one()
    stored = bytes(sealed)
    logged = ingestion.log_file.read_bytes()
    assert b"study accepted" in logged  # the log file is the service's
    for value in _identifiers(rg1):
        assert value.encode() not in stored, "the identity is stored in the clear"
        assert value.encode() not in logged, "an identifier reached the log"

    again = ingestion.ingest(rg1)  # the same file again: a duplicate writes nothing new
    assert again.duplicate and again.study_key == reply.study_key
    with ingestion.db.read() as conn:
        assert conn.execute(select(study_identities.c.sealed, study_identities.c.created_at)).all() == [
            (sealed, created_at)
        ]
    assert (ingestion.rows(studies), ingestion.rows(study_identities)) == (1, 1)


def test_a_refused_upload_leaves_no_identity(ingestion: Ingestion, rg1: bytes) -> None:
    lateral = pydicom.dcmread(io.BytesIO(rg1))
    lateral.ViewPosition = "LL"
    buf = io.BytesIO()
    lateral.save_as(buf, enforce_file_format=True)
    with pytest.raises(grpc.RpcError) as refused:
        ingestion.ingest(buf.getvalue())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(refused.value) == "not_frontal"
    assert (ingestion.rows(studies), ingestion.rows(study_identities)) == (0, 0)


def test_the_identity_and_the_study_commit_together(
    ingestion: Ingestion, rg1: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identity row is written, then the transaction fails: study, event and identity all vanish."""
    written: list[str] = []

    def write_then_fail(conn, study_key: str, sealed: bytes) -> None:
        identities_module.add_identity(conn, study_key, sealed)  # the real row, inside the transaction
        written.append(study_key)
        raise RuntimeError("the database went away mid-transaction")

    monkeypatch.setattr(outbox_module, "add_identity", write_then_fail)
    with pytest.raises(grpc.RpcError) as failed:
        ingestion.ingest(rg1)
    assert failed.value.code() != grpc.StatusCode.OK and len(written) == 1
    assert (ingestion.rows(studies), ingestion.rows(outbox), ingestion.rows(study_identities)) == (0, 0, 0)

    monkeypatch.undo()  # the sender retries: a new study (not a duplicate without its identity)
    reply = ingestion.ingest(rg1)
    assert not reply.duplicate
    assert (ingestion.rows(studies), ingestion.rows(study_identities)) == (1, 1)
    assert IdentityStore(ingestion.db, IdentityVault(SECRET.encode())).get(reply.study_key) is not None
