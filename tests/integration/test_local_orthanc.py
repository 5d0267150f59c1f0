"""The local stand-in PACS (cxrmesh.local.orthanc): Debian's Orthanc, locked down, auto-routing radiographs.

Why real processes: the point is what Orthanc itself lets in (REST without the password, a C-STORE
from an AE it does not know) and what its Lua auto-routing sends on (a CR yes; an SR, or a CR that
came from the routing target itself, no), received by dcmtk's ``storescp`` standing in for cxrmesh.
"""

from __future__ import annotations

import io
import json
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from cxrmesh.dicom.scu import Peer, PermanentStoreError, store
from cxrmesh.local import process
from cxrmesh.local.orthanc import LocalOrthanc, OrthancAPI, OrthancError, autoroute_lua
from cxrmesh.local.ports import free_port

SCU_AE = "MODALITY"  # a known modality that sends radiographs to the PACS
MESH_AE = "CXRMESH"  # the auto-routing target (dcmtk storescp here)
PACS_AE = "PACS"
WAIT_S = 60  # upper bound for a forwarded file to arrive; never a timing assertion


def radiograph() -> Dataset:
    """pydicom-data's RG1 CR as a new instance of a new study."""
    path = get_testdata_file("RG1_UNCR.dcm")
    assert path, "pydicom-data's RG1_UNCR.dcm is missing (a test dependency in pyproject.toml)"
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def text_sr(study: Dataset) -> Dataset:
    """A minimal Basic Text SR filed under ``study`` (stands in for the mesh's findings SR)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        ds.SOPClassUID,
        ds.SOPInstanceUID,
    )
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        setattr(ds, keyword, study.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SR", generate_uid(), 99, 1
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.ContinuityOfContent = "SEPARATE"
    return ds


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"storescp did not listen on {port} (exit {proc.poll()})")


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp as the auto-routing target: (port, folder it writes received files to)."""
    folder = tmp_path_factory.mktemp("received")
    port = free_port()
    argv = ["storescp", "--aetitle", MESH_AE, "--output-directory", str(folder), str(port)]
    proc = process.spawn(argv, folder.with_suffix(".log"))
    try:
        _wait_port(port, proc)
        yield port, folder
    finally:
        process.stop(proc, "storescp")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, storescp: tuple[int, Path]) -> Iterator[LocalOrthanc]:
    modalities = {"modality": (SCU_AE, "127.0.0.1", 104), "cxrmesh": (MESH_AE, "127.0.0.1", storescp[0])}
    orthanc = LocalOrthanc(
        tmp_path_factory.mktemp("orthanc"), ae_title=PACS_AE, modalities=modalities, autoroute_to="cxrmesh"
    )
    with orthanc:
        yield orthanc


def _peer(pacs: LocalOrthanc) -> Peer:
    return Peer(PACS_AE, "127.0.0.1", pacs.dicom_port)


def _received(folder: Path) -> dict[str, str]:
    """SOP Instance UID -> Modality of every file storescp wrote."""
    out = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = str(ds.Modality)
    return out


def test_config_is_locked_down_and_kept_private(pacs: LocalOrthanc) -> None:
    config = json.loads(pacs.config_path.read_text())
    assert config["RemoteAccessAllowed"] is False and config["AuthenticationEnabled"] is True
    assert config["DicomCheckCalledAet"] and config["DicomCheckModalityHost"]
    assert not config["DicomAlwaysAllowEcho"] and not config["DicomAlwaysAllowStore"]
    assert config["Plugins"] == [] and config["ExecuteLuaEnabled"] is False
    assert set(config["DicomModalities"]) == {"modality", "cxrmesh"}
    assert Path(config["StorageDirectory"]).is_relative_to(pacs.folder)
    for secret in (pacs.password_file, pacs.config_path):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = pacs.password_file.read_text()
    assert len(password) >= 24 and password not in (pacs.folder / "orthanc.log").read_text()


def test_password_is_made_once_and_kept(tmp_path: Path) -> None:
    first = LocalOrthanc(tmp_path, modalities={"m": ("M", "127.0.0.1", 104)}, autoroute_to="m")
    first.write_config()
    password = first.password_file.read_text()
    LocalOrthanc(tmp_path).write_config()
    assert first.password_file.read_text() == password
    assert json.loads(first.config_path.read_text())["RegisteredUsers"] == {first.user: password}
    with pytest.raises(ValueError):
        LocalOrthanc(tmp_path, autoroute_to="nowhere")


def test_rest_refuses_missing_or_wrong_password(pacs: LocalOrthanc) -> None:
    assert requests.get(f"{pacs.url}/system", timeout=10).status_code == 401
    assert requests.get(f"{pacs.url}/system", auth=(pacs.user, "wrong"), timeout=10).status_code == 401
    with pytest.raises(OrthancError) as refused:
        OrthancAPI(pacs.url, pacs.user, "wrong").studies()
    assert refused.value.status == 401
    assert pacs.api().system()["DicomAet"] == PACS_AE


def test_unknown_calling_ae_cannot_store(pacs: LocalOrthanc) -> None:
    ds = radiograph()
    with pytest.raises(PermanentStoreError):
        store(_peer(pacs), [ds], calling_ae="STRANGER", timeout_s=15)
    assert pacs.api().find_study(ds.StudyInstanceUID) is None


def test_known_modality_stores_and_the_api_shows_it(pacs: LocalOrthanc) -> None:
    ds = radiograph()
    store(_peer(pacs), [ds], calling_ae=SCU_AE, timeout_s=15)
    api = pacs.api()
    study = api.find_study(ds.StudyInstanceUID)
    assert study is not None and study in api.studies()
    assert api.study(study)["MainDicomTags"]["StudyInstanceUID"] == ds.StudyInstanceUID
    (instance,) = api.study_instances(study)
    assert api.instance_tags(instance["ID"])["SOPInstanceUID"] == ds.SOPInstanceUID
    assert pydicom.dcmread(io.BytesIO(api.instance_file(instance["ID"]))).SOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(OrthancError) as missing:
        api.study("0" * 40)
    assert missing.value.status == 404


def test_autoroute_forwards_radiographs_only(pacs: LocalOrthanc, storescp: tuple[int, Path]) -> None:
    _, folder = storescp
    before = set(_received(folder))
    own = radiograph()  # came from the target itself: must not go back (loop)
    store(_peer(pacs), [own], calling_ae=MESH_AE, timeout_s=15)
    cr = radiograph()
    sr = text_sr(cr)
    store(_peer(pacs), [sr], calling_ae=SCU_AE, timeout_s=15)  # a result: not forwarded
    store(_peer(pacs), [cr], calling_ae=SCU_AE, timeout_s=15)  # a radiograph: forwarded

    deadline = time.monotonic() + WAIT_S
    while cr.SOPInstanceUID not in _received(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    # Lua handles stored instances one by one, in order, and its sends run in that order:
    # anything sent for the two earlier instances would be here by now.
    new = {uid: m for uid, m in _received(folder).items() if uid not in before}
    assert new == {cr.SOPInstanceUID: "CR"}
    api = pacs.api()
    assert api.find_study(cr.StudyInstanceUID) is not None  # the SR and the CR stay at the PACS too
    assert len(api.study_instances(api.find_study(cr.StudyInstanceUID) or "")) == 2


def test_store_to_sends_on_request(pacs: LocalOrthanc, storescp: tuple[int, Path]) -> None:
    _, folder = storescp
    sr = text_sr(radiograph())
    instance = pacs.api().upload(_bytes(sr))
    pacs.api().store_to("cxrmesh", [instance])
    assert _received(folder).get(sr.SOPInstanceUID) == "SR"
    with pytest.raises(OrthancError):
        pacs.api().store_to("nowhere", [instance])


def test_lua_script_refuses_names_that_could_inject() -> None:
    assert "SendToModality(instanceId, TARGET)" in autoroute_lua("cxrmesh", MESH_AE)
    for name, aet in (('x"; os.execute("id")--', MESH_AE), ("cxrmesh", 'A"B'), ("cxrmesh", "A" * 17)):
        with pytest.raises(ValueError):
            autoroute_lua(name, aet)


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
