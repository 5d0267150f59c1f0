"""The DICOM gateway against real peers: dcmtk's storescu/echoscu, pynetdicom and dicomweb-client as
senders, a real ingestion service (mutual TLS, SQLite, blobs, a Tansu broker for its outbox relay) as
the receiver, the mesh's CA for every certificate.

What it shows: an instance is answered Success only once ingestion committed it (the study row and
its outbox event are there, even after the gateway is SIGKILLed right after the answer); a bad instance
gets a failure status with ingestion's reason and the association goes on; strangers, plaintext on a TLS
port, Secondary Capture (unless enabled) and STOW-RS without the token are refused; ingestion down is
0xA700, so the sender keeps the instance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)
from sqlalchemy import select

from cxrmesh.contracts import topics
from cxrmesh.dicom.pseudonyms import keyed_hex
from cxrmesh.local.pki import OPERATOR, Identity, LocalCA, server_identity
from cxrmesh.local.ports import free_port
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db.schema import outbox, studies
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.tls import TlsFiles, https_context, open_channel
from cxrmesh.services.gateway.service import GatewayRuntime, build
from cxrmesh.services.gateway.settings import GatewaySettings
from cxrmesh.services.ingestion.service import build as build_ingestion
from cxrmesh.services.ingestion.settings import IngestionSettings

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "data" / "hostile"
SECRET = "test-secret-of-32-bytes-for-hmac-00"
TOKEN = "stow-test-token-not-for-production"
SENDER = "MODALITY"
CALLED = "CXRMESH"
# the four encodings of one radiograph, with the storescu option that proposes each one's transfer syntax
RG1 = {"RG1_UNCR.dcm": "-x=", "RG1_UNCI.dcm": "-x=", "RG1_J2KR.dcm": "-xv", "RG1_J2KI.dcm": "-xw"}
READY_S = 30


# --------------------------------------------------------------------------- peers


class Mesh:
    """The running ingestion and what the gateway needs to reach it."""

    def __init__(self, home: Path, ca: LocalCA, runtime: ServiceRuntime, database_url: str):
        self.home, self.ca, self.runtime, self.database_url = home, ca, runtime, database_url
        self.url = f"127.0.0.1:{runtime.port}"
        self.gateway_tls = ca.issue(server_identity("gateway"))

    def committed(self, study_key: str) -> bool:
        """The study row and its StudyIngested outbox event are in ingestion's database."""
        db = Database(self.database_url, "")
        try:
            with db.read() as conn:
                row = conn.execute(
                    select(studies.c.study_key).where(studies.c.study_key == study_key)
                ).first()
                event = conn.execute(
                    select(outbox.c.id).where(
                        outbox.c.key == study_key, outbox.c.topic == topics.STUDY_INGESTED
                    )
                ).first()
        finally:
            db.close()
        return row is not None and event is not None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("gateway-mesh")
    ca = LocalCA(home / "pki")
    tls = ca.issue(server_identity("ingestion"))
    database_url = f"sqlite:///{home}/state.sqlite"
    settings = IngestionSettings(
        tls_cert_file=tls.cert,
        tls_key_file=tls.key,
        tls_ca_file=tls.ca,
        grpc_port=0,
        metrics_port=0,
        data_dir=home / "ingestion",
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        kafka_request_timeout_ms=2000,
        deid_secret=SECRET,
        burned_in_ocr=False,  # the OCR check is ingestion's, tested there; here it would only cost time
        audit_to_kafka=False,
        outbox_interval_s=0.2,
        grace_s=2,
        log_format="text",
    )
    runtime = build_ingestion(settings)
    runtime.start()
    try:
        yield Mesh(home, ca, runtime, database_url)
    finally:
        runtime.stop()


def gateway_settings(mesh: Mesh, **overrides: Any) -> GatewaySettings:
    tls = mesh.gateway_tls
    values: dict[str, Any] = {
        "tls_cert_file": tls.cert,
        "tls_key_file": tls.key,
        "tls_ca_file": tls.ca,
        "grpc_port": 0,
        "metrics_port": 0,
        "data_dir": mesh.home / "gateway",
        "audit_to_kafka": False,
        "ae_title": CALLED,
        "dicom_port": free_port(),
        "stow_port": free_port(),
        "stow_token": TOKEN,
        "allowed_senders": [SENDER],
        "ingestion_url": mesh.url,
        "ingest_timeout_s": 30,
        "grace_s": 2,
        "health_interval_s": 0.2,
        "log_format": "text",
    }
    values.update(overrides)
    return GatewaySettings(**values)


def serving(mesh: Mesh, runtime: GatewayRuntime) -> bool:
    """The gateway's gRPC health (its port serves nothing else), asked over mutual TLS."""
    with open_channel(f"127.0.0.1:{runtime.port}", mesh.ca.issue(OPERATOR)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_for_health(mesh: Mesh, runtime: GatewayRuntime, expected: bool) -> None:
    deadline = time.monotonic() + READY_S
    while serving(mesh, runtime) != expected:
        assert time.monotonic() < deadline, f"the gateway's health never became serving={expected}"
        time.sleep(0.1)


@contextmanager
def running(settings: GatewaySettings) -> Iterator[GatewayRuntime]:
    runtime = build(settings)
    runtime.start()
    try:
        assert runtime.scp.ready.wait(READY_S), "the Storage SCP never listened"
        assert runtime.stow is None or runtime.stow.ready.wait(READY_S), "STOW-RS never listened"
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture(scope="module")
def gateway(mesh: Mesh) -> Iterator[GatewayRuntime]:
    with running(gateway_settings(mesh)) as runtime:
        yield runtime


# --------------------------------------------------------------------------- files and senders


def fresh_copy(name: str, folder: Path, sop_class: str | None = None) -> tuple[Path, str]:
    """A pydicom-data radiograph as a new instance of a new study (the four RG1 files share their UIDs),
    and the study key ingestion will give it."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if sop_class is not None:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    path = folder / f"{Path(name).stem}-{ds.SOPInstanceUID[-6:]}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, keyed_hex(SECRET.encode(), "study", ds.StudyInstanceUID, ds.SOPInstanceUID)


def dcmtk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def storescu(port: int, *files: Path, options: tuple[str, ...] = (), tls: tuple[str, ...] = ()) -> str:
    args = ("-v", *options, *tls, "-aet", SENDER, "-aec", CALLED, "127.0.0.1", str(port), *map(str, files))
    out = dcmtk("storescu", *args)
    return out.stdout + out.stderr


def successes(output: str) -> int:
    return output.count("Received Store Response (Success)")


@contextmanager
def associate(
    port: int, *contexts: tuple[str, str], aet: str = SENDER, tls: Any = None
) -> Iterator[Association]:
    """A pynetdicom SCU association (one presentation context per (SOP class, transfer syntax))."""
    ae = AE(ae_title=aet)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED, tls_args=(tls, "127.0.0.1") if tls else None)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def counted(protocol: str, outcome: str) -> float:
    labels = {"protocol": protocol, "outcome": outcome}
    return REGISTRY.get_sample_value("cxrmesh_gateway_instances_total", labels) or 0.0


# --------------------------------------------------------------------------- DIMSE


def test_echoscu_is_answered_and_health_follows_ingestion(gateway: GatewayRuntime, mesh: Mesh) -> None:
    out = dcmtk("echoscu", "-v", "-aet", SENDER, "-aec", CALLED, "127.0.0.1", str(gateway.scp.port))
    assert out.returncode == 0, out.stderr
    assert "Received Echo Response (Success)" in out.stdout + out.stderr
    wait_for_health(mesh, gateway, True)
    # every outcome is exported from the start, before the first instance of its kind
    labels = {"protocol": "stow", "outcome": "unavailable"}
    assert REGISTRY.get_sample_value("cxrmesh_gateway_instances_total", labels) == 0.0


def test_storescu_stores_the_four_rg1_encodings_in_ingestions_outbox(
    gateway: GatewayRuntime, mesh: Mesh, tmp_path: Path
) -> None:
    copies = [fresh_copy(name, tmp_path) for name in RG1]
    before = counted("dimse", "accepted")
    for (path, _), option in zip(copies, RG1.values(), strict=True):
        output = storescu(gateway.scp.port, path, options=("-R", option))
        assert successes(output) == 1, output
    assert all(mesh.committed(key) for _, key in copies), "Success was answered before ingestion committed"
    assert counted("dimse", "accepted") - before == 4
    before = counted("dimse", "duplicate")
    again = storescu(gateway.scp.port, copies[0][0])  # a resend (the sender did not see the answer)
    assert successes(again) == 1, again
    assert counted("dimse", "duplicate") - before == 1


@pytest.mark.parametrize(
    ("aet", "called", "why"),
    [
        (SENDER + "X", CALLED, "Calling AE Title Not Recognized"),
        (SENDER, "ELSEWHERE", "Called AE Title Not Recognized"),
    ],
    ids=["unknown-calling-ae", "wrong-called-ae"],
)
def test_an_association_from_an_unknown_ae_is_rejected(
    gateway: GatewayRuntime, aet: str, called: str, why: str
) -> None:
    out = dcmtk("echoscu", "-v", "-aet", aet, "-aec", called, "127.0.0.1", str(gateway.scp.port))
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Association Rejected" in text and "Rejected Permanent" in text and why in text, text


def test_an_empty_sender_list_refuses_everybody(mesh: Mesh) -> None:
    with running(gateway_settings(mesh, allowed_senders=[], stow_port=0)) as closed:
        out = dcmtk("echoscu", "-v", "-aet", SENDER, "-aec", CALLED, "127.0.0.1", str(closed.scp.port))
    assert out.returncode != 0 and "Calling AE Title Not Recognized" in out.stdout + out.stderr


def test_hostile_instances_fail_with_the_reason_and_the_same_association_stores_a_good_one(
    gateway: GatewayRuntime, mesh: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, key = fresh_copy("RG1_UNCR.dcm", tmp_path)
    truncated = tmp_path / "truncated.dcm"
    raw = good.read_bytes()
    truncated.write_bytes(raw[: len(raw) * 2 // 3])  # the transfer from the modality's store cut short
    # send files as they are on disk (the truncated one could not be decoded first)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    before = counted("dimse", "refused")
    contexts = [
        (ComputedRadiographyImageStorage, ExplicitVRLittleEndian),
        (ComputedRadiographyImageStorage, RLELossless),
    ]
    with associate(gateway.scp.port, *contexts, (CTImageStorage, ExplicitVRLittleEndian)) as assoc:
        assert assoc.is_established
        # a CT object has no presentation context here at all
        assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [CTImageStorage]
        answers = {
            name: assoc.send_c_store(path)
            for name, path in [
                ("unsupported_modality", HOSTILE / "ct_modality.dcm"),  # a CR object that says Modality CT
                ("no_pixel_data", HOSTILE / "no_pixel_data.dcm"),
                ("truncated", truncated),
            ]
        }
        stored = assoc.send_c_store(good)
    assert answers["unsupported_modality"].Status == 0xA900
    assert answers["no_pixel_data"].Status == answers["truncated"].Status == 0xC000
    for code, status in answers.items():
        comment = str(status.ErrorComment)
        assert comment.startswith(f"{code}: ") and len(comment) <= 64, comment
    assert stored.Status == 0x0000 and mesh.committed(key)
    assert counted("dimse", "refused") - before == 3


def test_secondary_capture_is_refused_unless_enabled(
    gateway: GatewayRuntime, mesh: Mesh, tmp_path: Path
) -> None:
    film, key = fresh_copy("RG1_UNCR.dcm", tmp_path, sop_class=SecondaryCaptureImageStorage)
    sc = (SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    with associate(gateway.scp.port, sc, (Verification, ExplicitVRLittleEndian)) as assoc:
        assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [SecondaryCaptureImageStorage]
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(film)
    assert not mesh.committed(key)
    with (
        running(gateway_settings(mesh, accept_secondary_capture=True, stow_port=0)) as open_to_film,
        associate(open_to_film.scp.port, sc) as assoc,
    ):
        assert assoc.send_c_store(film).Status == 0x0000
    assert mesh.committed(key)


def test_ingestion_down_is_out_of_resources_so_the_sender_retries(mesh: Mesh, tmp_path: Path) -> None:
    good, key = fresh_copy("RG1_UNCR.dcm", tmp_path)
    nobody = f"127.0.0.1:{free_port()}"
    contexts = [
        (ComputedRadiographyImageStorage, ExplicitVRLittleEndian),
        (Verification, ExplicitVRLittleEndian),
    ]
    with (
        running(gateway_settings(mesh, ingestion_url=nobody, ingest_timeout_s=5, stow_port=0)) as cut_off,
        associate(cut_off.scp.port, *contexts) as assoc,
    ):
        status = assoc.send_c_store(good)
        echo = assoc.send_c_echo()  # the association is still there
        wait_for_health(mesh, cut_off, False)
    assert status.Status == 0xA700, status
    assert "unavailable" in str(status.ErrorComment)
    assert echo.Status == 0x0000
    assert not mesh.committed(key)


def test_dicom_tls_needs_a_certificate_from_the_mesh_ca(mesh: Mesh, tmp_path: Path) -> None:
    sender = mesh.ca.issue(Identity("modality"))
    stranger = LocalCA(tmp_path / "other-pki").issue(Identity("modality"))
    good, key = fresh_copy("RG1_J2KI.dcm", tmp_path)
    by_dcmtk, dcmtk_key = fresh_copy("RG1_UNCR.dcm", tmp_path)
    with running(gateway_settings(mesh, dicom_tls=True, stow_port=0)) as secure:
        port = secure.scp.port
        with associate(
            port, (ComputedRadiographyImageStorage, "1.2.840.10008.1.2.4.91"), tls=https_context(sender)
        ) as assoc:
            assert assoc.is_established
            assert assoc.send_c_store(good).Status == 0x0000
        tls_args = ("+tls", str(sender.key), str(sender.cert), "+cf", str(sender.ca))
        assert successes(output := storescu(port, by_dcmtk, tls=tls_args)) == 1, output
        plaintext = dcmtk("echoscu", "-aet", SENDER, "-aec", CALLED, "127.0.0.1", str(port), timeout=60)
        with associate(port, (Verification, ExplicitVRLittleEndian), tls=https_context(stranger)) as refused:
            assert not refused.is_established
    assert plaintext.returncode != 0
    assert mesh.committed(key) and mesh.committed(dcmtk_key)


# --------------------------------------------------------------------------- STOW-RS


def stow_client(gateway: GatewayRuntime, ca: Path, token: str | None = TOKEN) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE replaces the mesh's CA
    session.verify = str(ca)
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    assert gateway.stow is not None
    return DICOMwebClient(url=f"https://127.0.0.1:{gateway.stow.port}", session=session)


def test_stow_rs_stores_a_good_instance(gateway: GatewayRuntime, mesh: Mesh, tmp_path: Path) -> None:
    path, key = fresh_copy("RG1_J2KR.dcm", tmp_path)
    ds = pydicom.dcmread(path)
    reply = stow_client(gateway, mesh.gateway_tls.ca).store_instances([ds])
    assert [str(item.ReferencedSOPInstanceUID) for item in reply.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    assert "FailedSOPSequence" not in reply
    assert mesh.committed(key)


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["no-token", "wrong-token"])
def test_stow_rs_without_the_token_is_401(
    gateway: GatewayRuntime, mesh: Mesh, tmp_path: Path, token: str | None
) -> None:
    path, key = fresh_copy("RG1_J2KI.dcm", tmp_path)
    with pytest.raises(requests.HTTPError) as info:
        stow_client(gateway, mesh.gateway_tls.ca, token).store_instances([pydicom.dcmread(path)])
    assert info.value.response.status_code == 401
    assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not mesh.committed(key)


def test_stow_rs_reports_hostile_parts_in_failed_sop_sequence(
    gateway: GatewayRuntime, mesh: Mesh, tmp_path: Path
) -> None:
    good_path, key = fresh_copy("RG1_J2KI.dcm", tmp_path)
    film_path, film_key = fresh_copy("RG1_J2KI.dcm", tmp_path, sop_class=SecondaryCaptureImageStorage)
    good, no_pixels, film = (
        pydicom.dcmread(p) for p in (good_path, HOSTILE / "no_pixel_data.dcm", film_path)
    )
    reply: Dataset = stow_client(gateway, mesh.gateway_tls.ca).store_instances([good, no_pixels, film])
    assert [str(i.ReferencedSOPInstanceUID) for i in reply.ReferencedSOPSequence] == [good.SOPInstanceUID]
    failed = {str(i.ReferencedSOPInstanceUID): i for i in reply.FailedSOPSequence}
    assert failed[no_pixels.SOPInstanceUID].FailureReason == 0xC000
    assert str(failed[no_pixels.SOPInstanceUID][0x0000, 0x0902].value).startswith("no_pixel_data: ")
    assert failed[film.SOPInstanceUID].FailureReason == 0x0122  # Secondary Capture is off here
    assert mesh.committed(key) and not mesh.committed(film_key)


def test_stow_rs_with_only_refused_parts_is_409(gateway: GatewayRuntime, mesh: Mesh) -> None:
    assert gateway.stow is not None
    body = (
        b"--b\r\nContent-Type: application/dicom\r\n\r\n"
        + (HOSTILE / "ct_modality.dcm").read_bytes()
        + b"\r\n--b--\r\n"
    )
    response = requests.post(
        f"https://127.0.0.1:{gateway.stow.port}/studies",
        data=body,
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
        verify=str(mesh.gateway_tls.ca),
        timeout=60,
    )
    assert response.status_code == 409, response.text
    assert response.headers["Content-Type"] == "application/dicom+json"
    item = Dataset.from_json(response.json()).FailedSOPSequence[0]
    assert item.FailureReason == 0xA900


def test_stow_rs_refuses_an_instance_of_another_study_than_the_urls(
    gateway: GatewayRuntime, mesh: Mesh, tmp_path: Path
) -> None:
    path, key = fresh_copy("RG1_J2KI.dcm", tmp_path)
    client = stow_client(gateway, mesh.gateway_tls.ca)
    with pytest.raises(requests.HTTPError) as info:
        client.store_instances([pydicom.dcmread(path)], study_instance_uid=generate_uid())
    assert info.value.response.status_code == 409
    assert Dataset.from_json(info.value.response.json()).FailedSOPSequence[0].FailureReason == 0xA900
    assert not mesh.committed(key)


def test_stow_rs_will_not_start_without_a_token(mesh: Mesh) -> None:
    with pytest.raises(ValueError, match="STOW_TOKEN"):
        build(gateway_settings(mesh, stow_token=""))


# --------------------------------------------------------------------------- crash after Success


def gateway_env(mesh: Mesh, tls: TlsFiles, dicom_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXRMESH_")}
    env.update(
        {
            "CXRMESH_TLS_CERT_FILE": str(tls.cert),
            "CXRMESH_TLS_KEY_FILE": str(tls.key),
            "CXRMESH_TLS_CA_FILE": str(tls.ca),
            "CXRMESH_GRPC_PORT": "0",
            "CXRMESH_METRICS_PORT": "0",
            "CXRMESH_DATA_DIR": str(mesh.home / "gateway-process"),
            "CXRMESH_AUDIT_TO_KAFKA": "false",
            "CXRMESH_AE_TITLE": CALLED,
            "CXRMESH_DICOM_PORT": str(dicom_port),
            "CXRMESH_STOW_PORT": "0",
            "CXRMESH_ALLOWED_SENDERS": f'["{SENDER}"]',
            "CXRMESH_INGESTION_URL": mesh.url,
            "CXRMESH_LOG_FORMAT": "text",
        }
    )
    return env


def test_an_instance_answered_success_survives_a_sigkilled_gateway(mesh: Mesh, tmp_path: Path) -> None:
    path, key = fresh_copy("RG1_UNCR.dcm", tmp_path)
    port = free_port()
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrmesh.services.gateway"],
        env=gateway_env(mesh, mesh.gateway_tls, port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + READY_S
        while dcmtk("echoscu", "-aet", SENDER, "-aec", CALLED, "127.0.0.1", str(port)).returncode != 0:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "the gateway process never answered C-ECHO"
            time.sleep(0.2)
        output = storescu(port, path)
        proc.send_signal(signal.SIGKILL)  # the moment the sender has its Success
        proc.wait(timeout=30)
        assert successes(output) == 1, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert mesh.committed(key), "the gateway answered Success for an instance ingestion had not committed"
