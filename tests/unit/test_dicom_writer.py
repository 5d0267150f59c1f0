"""The synthetic radiograph writer produces conformant, deterministic, lossless CR/DX objects."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import validate_file_meta
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from cxrmesh.analysis.pixels import PixelModule, to_display
from cxrmesh.synth.dicom import RadiographMeta, deterministic_uid, write_radiograph
from cxrmesh.synth.phi import make_patient_phi, make_study_phi
from cxrmesh.synth.sites import SITES, Site

SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless)
SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}
SHAPE = (300, 250)

# Type 1/2 attributes of the CR and DX IODs (and the ones the preprocessing contract reads).
REQUIRED_COMMON = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Manufacturer",
    "InstitutionName",
    "InstitutionAddress",
    "InstanceNumber",
    "PatientOrientation",
    "ImageType",
    "BurnedInAnnotation",
    "BodyPartExamined",
    "ViewPosition",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "KVP",
    "Exposure",
    "DistanceSourceToDetector",
    "LossyImageCompression",
    "PixelData",
)
REQUIRED_DX = (
    "PresentationIntentType",
    "ImageLaterality",
    "AnatomicRegionSequence",
    "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign",
    "PresentationLUTShape",
    "DetectorType",
    "AcquisitionContextSequence",
)


def _pixel_module(site: Site) -> PixelModule:
    """A window that clips both ends of the stored range so inversion is unambiguous."""
    slope, icpt = site.rescale
    top = (2**site.bits_stored - 1) * slope + icpt
    return PixelModule(
        photometric=site.photometric,
        bits_stored=site.bits_stored,
        window_center=round(top / 2, 1),
        window_width=round(top / 2, 1),
        rescale_slope=slope,
        rescale_intercept=icpt,
        voi_lut_function=site.voi_function,
    )


def _stored(site: Site, seed: int = 0) -> np.ndarray:
    """A ramp plus noise spanning the full stored range (both extremes present)."""
    rng = np.random.default_rng(seed)
    top = 2**site.bits_stored - 1
    ramp = np.linspace(0.0, 1.0, SHAPE[0] * SHAPE[1]).reshape(SHAPE)
    noisy = ramp + rng.normal(0.0, 0.02, SHAPE)
    arr = np.clip(np.round(noisy * top), 0, top).astype(np.uint16)
    arr[0, 0], arr[-1, -1] = 0, top
    return arr


def _meta(site: Site, seed: int = 7) -> RadiographMeta:
    study_dt = datetime(2020, 4, 17, 9, 31, 5)
    return RadiographMeta(
        sop_instance_uid=deterministic_uid("sop", site.name, seed),
        study_instance_uid=deterministic_uid("study", site.name, seed),
        series_instance_uid=deterministic_uid("series", site.name, seed),
        study_datetime=study_dt,
        series_number=1,
        instance_number=1,
        study_description="XR CHEST 1 VIEW",
        view_position="PA",
        pixel=_pixel_module(site),
        pixel_spacing_mm=(site.pixel_spacing_mm[0], site.pixel_spacing_mm[1]),
        kvp=120.0,
        exposure_mas=2.5,
        sid_mm=1800.0,
        patient_age_years=57,
        patient=make_patient_phi(seed, "F", 57, study_dt.date(), site.name),
        study=make_study_phi(seed, site.name),
        site=site,
    )


Written = dict[tuple[str, str], tuple[Path, np.ndarray, RadiographMeta]]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """Every site x transfer syntax written once, shared by the checks below."""
    out = tmp_path_factory.mktemp("dcm")
    files = {}
    for site in SITES:
        arr, meta = _stored(site), _meta(site)
        for ts in SYNTAXES:
            path = out / f"{site.name}-{ts.name.replace(' ', '_')}.dcm"
            write_radiograph(path, arr, meta, ts)
            files[(site.name, ts)] = (path, arr, meta)
    return files


CASES = [(s.name, ts) for s in SITES for ts in SYNTAXES]


@pytest.mark.parametrize(("site_name", "ts"), CASES)
def test_roundtrip_conformant_and_lossless(written: Written, site_name: str, ts: str) -> None:
    path, arr, meta = written[(site_name, ts)]
    with config.strict_reading():  # any invalid VR/value length in our output raises here
        ds = pydicom.dcmread(path)
        _ = [elem.value for elem in ds.iterall()]
    validate_file_meta(ds.file_meta, enforce_standard=True)
    assert ds.preamble == b"\x00" * 128
    assert ds.file_meta.TransferSyntaxUID == ts
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == meta.sop_instance_uid

    assert ds.SOPClassUID == SOP_CLASS[meta.site.modality]
    assert ds.Modality == meta.site.modality
    for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.file_meta.TransferSyntaxUID):
        assert UID(uid).is_valid
    required = REQUIRED_COMMON + (REQUIRED_DX if meta.site.modality == "DX" else ())
    missing = [k for k in required if k not in ds]
    assert not missing, f"missing attributes: {missing}"
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert list(ds.PatientOrientation) == ["L", "F"]
    assert ds.BurnedInAnnotation == "NO"
    assert ds.BodyPartExamined == "CHEST"
    assert ds.LossyImageCompression == "00"
    assert ds.PatientAge == "057Y"
    assert ds.InstanceCreationDate == "20200417"
    assert [float(v) for v in ds.PixelSpacing] == list(meta.pixel_spacing_mm)
    assert [float(v) for v in ds.ImagerPixelSpacing] == list(meta.pixel_spacing_mm)
    if meta.site.modality == "DX":
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.ImageLaterality == "U"
        mono1 = ds.PhotometricInterpretation == "MONOCHROME1"
        assert ds.PixelIntensityRelationshipSign == (1 if mono1 else -1)
        assert ds.PresentationLUTShape == ("INVERSE" if mono1 else "IDENTITY")

    got = ds.pixel_array
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, arr)
    disp_file = to_display(got, ds)
    disp_meta = to_display(arr, meta.pixel)
    np.testing.assert_array_equal(disp_file, disp_meta)
    # Display is monotone in stored value; MONOCHROME1 runs the opposite way (dense = white = 1).
    by_stored = disp_file.ravel()[np.argsort(arr.ravel(), kind="stable")]
    steps = np.diff(by_stored)
    if meta.pixel.photometric == "MONOCHROME1":
        assert (steps <= 0).all() and by_stored[0] > by_stored[-1]
    else:
        assert (steps >= 0).all() and by_stored[0] < by_stored[-1]


@pytest.mark.parametrize("site", SITES, ids=lambda s: s.name)
def test_uncompressed_and_j2k_decode_identically(written: Written, site: Site) -> None:
    raw = pydicom.dcmread(written[(site.name, ExplicitVRLittleEndian)][0])
    j2k = pydicom.dcmread(written[(site.name, JPEG2000Lossless)][0])
    np.testing.assert_array_equal(raw.pixel_array, j2k.pixel_array)
    assert j2k.file_meta.TransferSyntaxUID.is_compressed
    # Same header apart from the pixel data encoding
    for elem in raw:
        if elem.keyword != "PixelData":
            assert j2k[elem.tag] == elem


@pytest.mark.parametrize("ts", SYNTAXES, ids=lambda t: t.name)
def test_byte_deterministic(tmp_path: Path, ts: str) -> None:
    site = SITES[1]
    arr, meta = _stored(site), _meta(site)
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    write_radiograph(a, arr, meta, ts)
    write_radiograph(b, arr.copy(), _meta(site), ts)
    assert a.read_bytes() == b.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_deterministic_uid() -> None:
    u = deterministic_uid("study", 3, "site-a")
    assert u == deterministic_uid("study", 3, "site-a")
    assert u != deterministic_uid("study", 4, "site-a")
    assert deterministic_uid("ab", "c") != deterministic_uid("a", "bc")
    for i in range(200):
        uid = deterministic_uid(i)
        assert uid.startswith("2.25.") and len(uid) <= 64 and UID(uid).is_valid
        assert not any(c.startswith("0") and c != "0" for c in uid.split("."))


def test_phi_deterministic_and_seed_dependent() -> None:
    ref = date(2021, 1, 10)
    p1 = make_patient_phi(11, "M", 64, ref, "site-a")
    assert p1 == make_patient_phi(11, "M", 64, ref, "site-a")
    p2 = make_patient_phi(12, "M", 64, ref, "site-a")
    assert p1.patient_name != p2.patient_name and p1.patient_id != p2.patient_id
    assert make_study_phi(11, "site-b") == make_study_phi(11, "site-b")
    assert make_study_phi(11, "site-b") != make_study_phi(12, "site-b")
    # Patient and study drawn with the same seed don't share a family name
    assert make_study_phi(11, "site-a").referring_physician.split("^")[0] != p1.patient_name.split("^")[0]


def test_phi_formats() -> None:
    ref = date(2024, 2, 29)
    for seed in range(300):
        age = seed % 100
        p = make_patient_phi(seed, "F", age, ref, "site-b")
        had_birthday = (ref.month, ref.day) >= (p.birth_date.month, p.birth_date.day)
        assert ref.year - p.birth_date.year - (not had_birthday) == age
        assert p.patient_name.count("^") == 2 and p.sex == "F"
        assert len(p.address) <= 64 and len(p.phone) <= 16 and "\n" not in p.address
    assert make_patient_phi(1, "M", 40, ref, "site-a").patient_id[:3] == "NGH"
    assert len(make_patient_phi(1, "M", 40, ref, "site-a").patient_id) == 10
    b = make_patient_phi(1, "M", 40, ref, "site-b").patient_id
    assert b.isdigit() and len(b) == 8
    c = make_patient_phi(1, "M", 40, ref, "site-c").patient_id
    assert c.startswith("SA-") and c[3:].isdigit() and len(c) == 9
    with pytest.raises(ValueError, match="sex"):
        make_patient_phi(1, "X", 40, ref, "site-a")


def test_phi_present_in_file(written: Written) -> None:
    path, _, meta = written[("site-a", ExplicitVRLittleEndian)]
    raw = path.read_bytes()
    p, s = meta.patient, meta.study
    for value in (p.patient_name, p.patient_id, p.other_patient_ids, p.address, p.phone, s.accession_number):
        assert value.encode("latin-1") in raw, value
    assert p.birth_date.strftime("%Y%m%d").encode() in raw
    ds = pydicom.dcmread(path)
    assert str(ds.PatientName) == p.patient_name
    assert ds.PatientID == p.patient_id
    assert ds.PatientBirthDate == p.birth_date.strftime("%Y%m%d")
    assert ds.PatientSex == p.sex
    assert ds.PatientAddress == p.address
    assert ds.PatientTelephoneNumbers == p.phone
    assert ds.OtherPatientIDsSequence[0].PatientID == p.other_patient_ids
    assert str(ds.ReferringPhysicianName) == s.referring_physician
    assert str(ds.PerformingPhysicianName) == s.performing_physician
    assert str(ds.OperatorsName) == s.operator
    assert ds.StationName == s.station_name
    assert ds.DeviceSerialNumber == s.device_serial_number


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((4, 4, 2), np.uint16), "2-D"),
        (np.zeros((4, 4), np.int16), "uint16"),
        (np.zeros((4, 4), np.float32), "uint16"),
        (np.full((4, 4), 1024, np.uint16), "bits_stored"),  # site-a stores 10 bits
        (np.zeros((0, 4), np.uint16), "shape"),
    ],
)
def test_bad_array_rejected(tmp_path: Path, arr: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_radiograph(tmp_path / "x.dcm", arr, _meta(SITES[0]), ExplicitVRLittleEndian)
    assert not list(tmp_path.iterdir())


def test_bad_transfer_syntax_and_meta_rejected(tmp_path: Path) -> None:
    site = SITES[0]
    arr = _stored(site)
    with pytest.raises(ValueError, match="unsupported transfer syntax"):
        write_radiograph(tmp_path / "x.dcm", arr, _meta(site), ImplicitVRLittleEndian)
    lateral = replace(_meta(site), view_position="LL")
    with pytest.raises(ValueError, match="view_position"):
        write_radiograph(tmp_path / "x.dcm", arr, lateral, ExplicitVRLittleEndian)
