"""Ingestion domain logic: admission (validate), de-identification and normalisation of one DICOM.

Runs on the session's synthetic corpus (uncompressed and JPEG 2000 CR/DX with fake PHI) and on
the real radiograph RG1 from pydicom-data in every encoding it ships.
"""

from __future__ import annotations

import io
import pickle
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, validate_file_meta
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit
from support.dicom_faults import bad_dicoms

from cxrmesh.analysis.pixels import Letterbox, to_display
from cxrmesh.contracts.corpus import read_training_copy
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.dicom import (
    MAX_DICOM_BYTES,
    REJECTION_CODES,
    Deidentified,
    DicomRejected,
    decode_pixels,
    deidentify,
    normalise,
    phi_strings,
    read_dicom,
    validate,
)
from cxrmesh.dicom import phi as phi_module
from cxrmesh.dicom import profile as profile_module
from cxrmesh.dicom import read as read_module
from cxrmesh.dicom.rejection import ADMISSION_CODES
from cxrmesh.dicom.truncation import truncation

SECRET = b"cxrmesh-test-secret-not-for-production"
RG1 = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm", "RG1_JPLY.dcm")
CODE_MEANINGS = {"113100", "113107", "113108"}


def _testdata(name: str) -> bytes | None:
    path = get_testdata_file(name)
    return Path(path).read_bytes() if path else None


@pytest.fixture(scope="module")
def rg1() -> dict[str, bytes]:
    files = {name: raw for name in RG1 if (raw := _testdata(name)) is not None}
    if "RG1_UNCR.dcm" not in files:
        pytest.skip("pydicom-data with RG1_UNCR.dcm is not installed")
    return files


def _admit(raw: bytes) -> tuple[Dataset, np.ndarray]:
    ds = read_dicom(raw)
    validate(ds)
    return ds, decode_pixels(ds)


def _reject(raw: bytes) -> DicomRejected:
    with pytest.raises(DicomRejected) as info:
        ds = read_dicom(raw)
        validate(ds)
        decode_pixels(ds)
    return info.value


def _write(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _header_bytes(ds: Dataset) -> bytes:
    """The serialized data set without Pixel Data (pixels are untouched by design)."""
    hdr = Dataset()
    for elem in ds:
        if elem.keyword != "PixelData":
            hdr.add(elem)
    hdr.file_meta = ds.file_meta
    return _write(hdr)


def _corpus_raw(corpus: Path, row: dict) -> bytes:
    return (corpus / row["paths"]["dicom"]).read_bytes()


@pytest.fixture(scope="module")
def corpus_deid(corpus: Path, manifest: list[dict]) -> list[tuple[dict, Dataset, np.ndarray, Deidentified]]:
    out = []
    for row in manifest:
        ds, stored = _admit(_corpus_raw(corpus, row))
        out.append((row, ds, stored, deidentify(ds, SECRET)))
    return out


# ---------------------------------------------------------------------------------------------
# normalisation: the same display image as the training copy


def test_corpus_dicoms_normalise_to_the_training_copy(corpus: Path, corpus_deid: list) -> None:
    syntaxes = set()
    for row, ds, stored, deid in corpus_deid:
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        norm = normalise(deid.dataset, stored)
        assert norm.display.dtype == np.float32 and norm.display.shape == (MODEL_SIZE, MODEL_SIZE)
        assert norm.display.min() >= 0.0 and norm.display.max() <= 1.0
        # the same tolerance as tests/unit/test_corpus.py (the DICOM is the full-resolution detector image
        # with its own noise; the training copy comes from the working grid)
        copy = read_training_copy(corpus / row["paths"]["image"])
        assert np.abs(norm.display - copy).mean() < 0.02
        assert np.corrcoef(norm.display.ravel(), copy.ravel())[0, 1] > 0.99
        if row is corpus_deid[0][0] or row["transfer_syntax"] == JPEG2000Lossless:
            # de-identification leaves the pixel path alone
            np.testing.assert_array_equal(norm.display, normalise(ds, stored).display)
        assert norm.letterbox == Letterbox(row["rows"], row["cols"], MODEL_SIZE)
        assert round(norm.letterbox.scale, 8) == row["letterbox"]["scale"]
        assert list(norm.letterbox.offset) == row["letterbox"]["offset_rc"]
        assert norm.pixel_spacing_mm == pytest.approx(row["pixel_spacing_mm"])
    assert {ExplicitVRLittleEndian, JPEG2000Lossless} <= syntaxes


def test_normalise_rejects_mismatched_pixels(corpus: Path, manifest: list[dict]) -> None:
    ds = read_dicom(_corpus_raw(corpus, manifest[0]))
    with pytest.raises(ValueError, match="shape"):
        normalise(ds, np.zeros((10, 10), np.uint16))


def test_rg1_every_encoding_admitted_and_nearly_identical(rg1: dict[str, bytes]) -> None:
    displays = {}
    for name, raw in rg1.items():
        ds, stored = _admit(raw)
        assert stored.shape == (1955, 1841)
        norm = normalise(ds, stored)
        assert norm.pixel_spacing_mm is None  # RG1 says 0\0: uncalibrated, not zero-sized
        displays[name] = norm.display
    ref = displays["RG1_UNCR.dcm"]
    assert {"RG1_J2KR.dcm", "RG1_J2KI.dcm"} <= set(displays)
    np.testing.assert_array_equal(displays["RG1_J2KR.dcm"], ref)  # lossless
    for name, disp in displays.items():
        assert np.abs(disp - ref).mean() < 0.005, name
        assert np.corrcoef(disp.ravel(), ref.ravel())[0, 1] > 0.999, name
    assert ref[MODEL_SIZE // 2].max() > 0.5  # an actual image (MONOCHROME1 inverted to white bone)


def test_jpeg_baseline_admitted(rg1: dict[str, bytes]) -> None:
    """pydicom-data has no JPEG RG1, so make one: 8-bit display values through Pillow's encoder."""
    ds, stored = _admit(rg1["RG1_UNCR.dcm"])
    ref = normalise(ds, stored).display
    img8 = np.rint(to_display(stored, ds) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img8).save(buf, format="JPEG", quality=95)
    stream = buf.getvalue()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([stream + b"\x00" * (len(stream) % 2)])
    ds["PixelData"].VR = "OB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth = 128, 256  # identity window over 0..255
    ds.LossyImageCompression = "01"
    jpeg_ds, jpeg_stored = _admit(_write(ds))
    assert jpeg_stored.dtype == np.uint8
    disp = normalise(jpeg_ds, jpeg_stored).display
    assert np.abs(disp - ref).mean() < 0.005
    assert np.corrcoef(disp.ravel(), ref.ravel())[0, 1] > 0.999


# ---------------------------------------------------------------------------------------------
# admission: one code per fault


@pytest.fixture(scope="module")
def goods(corpus: Path, manifest: list[dict], rg1: dict[str, bytes]) -> dict[str, bytes]:
    by_ts = {}
    for row in manifest:
        by_ts.setdefault(row["transfer_syntax"], _corpus_raw(corpus, row))
    return {
        "synthetic-explicit": by_ts[ExplicitVRLittleEndian],
        "synthetic-j2k": by_ts[JPEG2000Lossless],
        "rg1": rg1["RG1_UNCR.dcm"],
    }


@pytest.mark.parametrize("good_name", ["synthetic-explicit", "synthetic-j2k", "rg1"])
def test_each_fault_gets_its_own_code(goods: dict[str, bytes], good_name: str) -> None:
    good = goods[good_name]
    _admit(good)  # the source itself is fine
    bad = bad_dicoms(good)
    assert set(bad) == set(ADMISSION_CODES) - {"too_large"}
    reasons = {}
    for code, raw in bad.items():
        err = _reject(raw)
        assert err.code == code, f"{code}: got {err}"
        assert isinstance(err, ValueError) and len(err.reason) > 40
        reasons[code] = err.reason
    assert len(set(reasons.values())) == len(reasons), "reasons must tell the faults apart"


def test_too_large(monkeypatch: pytest.MonkeyPatch, rg1: dict[str, bytes]) -> None:
    assert MAX_DICOM_BYTES == 128 * 1024 * 1024
    monkeypatch.setattr(read_module, "MAX_DICOM_BYTES", 100_000)
    err = _reject(rg1["RG1_J2KI.dcm"])
    assert err.code == "too_large" and "100000 bytes" in err.reason


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
@pytest.mark.parametrize("keep", [131, 140, 300, 700, 0.5, -1])
def test_cut_anywhere_is_truncated_or_not_dicom(rg1: dict[str, bytes], name: str, keep: float) -> None:
    raw = rg1[name]
    n = int(len(raw) * keep) if isinstance(keep, float) else (len(raw) + keep if keep < 0 else keep)
    err = _reject(raw[:n])
    assert err.code == ("not_dicom" if n < 132 else "truncated"), err


@pytest.mark.parametrize(
    "name",
    ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "emri_small_jpeg_2k_lossless.dcm"],
)
def test_truncation_in_every_encoding(name: str) -> None:
    """Implicit VR, big endian, deflated and encapsulated streams: whole files are complete, and
    a cut inside the meta header, an element header, a value or the deflated stream is found."""
    raw = _testdata(name)
    if raw is None:
        pytest.skip(f"{name} not installed")
    assert truncation(raw) is None
    for n in (136, 200, len(raw) // 3, len(raw) // 2):
        assert truncation(raw[:n]) is not None, n


def test_real_non_chest_radiograph_rejected() -> None:
    raw = _testdata("RG3_UNCR.dcm")  # a tibia
    if raw is None:
        pytest.skip("RG3_UNCR.dcm not installed")
    err = _reject(raw)
    assert err.code == "not_chest" and "EXTREMITY" in err.reason


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"BodyPartExamined": "THORAX"}, None),
        ({"BodyPartExamined": "PORT CHEST"}, None),
        ({"BodyPartExamined": ""}, None),
        ({"BodyPartExamined": None, "ViewPosition": None}, None),
        ({"ViewPosition": "AP"}, None),
        ({"ViewPosition": "LATERAL"}, "not_frontal"),
        ({"ViewPosition": "RLD"}, "not_frontal"),
        ({"BodyPartExamined": "SKULL"}, "not_chest"),
        ({"Modality": "MR"}, "unsupported_modality"),
        ({"Modality": None}, "unsupported_modality"),
        ({"StudyInstanceUID": None}, "missing_uid"),
        ({"StudyInstanceUID": "1.2.abc"}, "missing_uid"),
        ({"NumberOfFrames": 1}, None),
        ({"BitsStored": 17}, "bad_bit_depth"),
        ({"BitsStored": 12, "HighBit": 15}, "bad_bit_depth"),
        ({"Rows": 9000}, "bad_size"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "bad_photometric"),
        ({"Rows": 1956}, "pixel_length_mismatch"),
        # physical plausibility (cxrmesh.contracts.limits)
        ({"PixelSpacing": [0.1, 0.1]}, None),
        ({"PixelSpacing": [0.01, 0.01]}, "bad_pixel_spacing"),
        ({"ImagerPixelSpacing": [0.1, 0.3]}, "bad_pixel_spacing"),
        ({"Columns": 4000}, "bad_size"),
        ({"NumberOfFrames": 0}, "bad_frame_count"),
        ({"PixelRepresentation": 1}, None),
        ({"Modality": "DX", "PixelRepresentation": 1}, "bad_pixel_representation"),
        ({"RescaleSlope": 0}, "bad_rescale"),
        ({"RescaleSlope": 2, "RescaleIntercept": -1024}, None),
        ({"VOILUTFunction": "SIGMOID"}, None),
        ({"WindowWidth": 0}, "bad_window"),
        ({"WindowCenter": [1, 2]}, "bad_window"),
        ({"PlanarConfiguration": 3}, "bad_photometric"),
    ],
)
def test_validate_rules(rg1: dict[str, bytes], changes: dict, code: str | None) -> None:
    ds = read_dicom(rg1["RG1_UNCR.dcm"])
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if code is None:
        validate(ds)
    else:
        with pytest.raises(DicomRejected) as info:
            validate(ds)
        assert info.value.code == code


def test_rejection_is_stable_and_portable() -> None:
    err = DicomRejected("blank_image", "every pixel is 0")
    assert (err.code, err.reason) == ("blank_image", "every pixel is 0")
    assert str(err) == "blank_image: every pixel is 0"
    back = pickle.loads(pickle.dumps(err))
    assert (back.code, back.reason) == (err.code, err.reason)
    with pytest.raises(ValueError, match="unknown rejection code"):
        DicomRejected("nope", "x")
    assert len(set(REJECTION_CODES)) == len(REJECTION_CODES)
    assert all(re.fullmatch(r"[a-z_]+", c) for c in REJECTION_CODES)


# ---------------------------------------------------------------------------------------------
# de-identification


def _leaks(deid: Deidentified, phi: set[str]) -> list[str]:
    """PHI strings found in the de-identified header bytes, pixel bytes or metadata.

    Strings of 8+ characters (UIDs, dates, IDs, full names) must not occur anywhere. Shorter ones
    (a family name like "Long") count as whole words only, and not in the untouched pixel bytes,
    where any short byte string turns up by chance.
    """
    header = _header_bytes(deid.dataset)
    full = _write(deid.dataset)
    meta_text = " | ".join(str(v) for v in vars(deid.metadata).values()).encode()
    found = []
    for s in phi:
        for enc in {s.encode("latin-1", "replace"), s.encode("utf-8")}:
            if len(enc) >= 8:
                hit = enc in header or enc in full or enc in meta_text
            else:
                word = re.compile(rb"(?<![A-Za-z0-9])" + re.escape(enc) + rb"(?![A-Za-z0-9])")
                hit = bool(word.search(header) or word.search(meta_text))
            if hit:
                found.append(s)
    return found


def _name_components(ds: Dataset) -> set[str]:
    out = set()
    for elem in ds.iterall():
        if elem.VR == "PN" and elem.value:
            out |= {p.casefold() for p in re.split(r"[\^=]", str(elem.value)) if len(p) >= 2}
    return out


def _tokens(ds: Dataset) -> set[str]:
    out = set()
    for elem in ds.iterall():
        if elem.VR in ("SQ", "OB", "OW", "UN") or elem.value is None:
            continue
        out |= {t.casefold() for t in re.split(r"[\^\\\s,;:()]+", str(elem.value)) if t}
    return out


def test_no_phi_survives_synthetic(corpus_deid: list) -> None:
    for row, ds, _stored, deid in corpus_deid:
        phi = phi_strings(ds)
        assert str(ds.PatientName) in phi and ds.PatientID in phi and ds.AccessionNumber in phi
        assert ds.InstitutionName in phi and ds.StudyInstanceUID in phi and ds.PatientBirthDate in phi
        assert ds.OtherPatientIDsSequence[0].PatientID in phi
        assert not _leaks(deid, phi), row["sop_instance_uid"]
        names = _name_components(ds)
        assert names and not names & _tokens(deid.dataset)


def test_no_phi_survives_rg1(rg1: dict[str, bytes]) -> None:
    for name, raw in rg1.items():
        ds, _ = _admit(raw)
        phi = phi_strings(ds)
        assert {"CompressedSamples^RG1", "9RG1", "Philips Medical Systems Hamburg", "19400305"} <= phi
        deid = deidentify(ds, SECRET)
        assert not _leaks(deid, phi), name
        assert not _name_components(ds) & _tokens(deid.dataset)


def test_hidden_phi_removed(rg1: dict[str, bytes]) -> None:
    """PHI where profiles often miss it: private tags, nested sequences, overlays, UN, time zones."""
    ds = read_dicom(rg1["RG1_UNCR.dcm"])
    block = ds.private_block(0x0009, "ACME PHI", create=True)
    block.add_new(0x01, "LO", "Doe^Janet private")
    other = Dataset()
    other.PatientID = "EMPI99887766"
    other.IssuerOfPatientID = "EMPI"
    ds.OtherPatientIDsSequence = [other]
    req = Dataset()
    req.RequestedProcedureID = "RP-55512"
    req.ScheduledProcedureStepID = "SPS-4242"
    ds.RequestAttributesSequence = [req]
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "399348003", "SCT", "postero-anterior"
    view.NamesOfIntendedRecipientsOfResults = "Doe^Janet"  # a PN the table does not name
    view.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ViewCodeSequence = [view]
    ds.add(DataElement(0x60003000, "OW", b"\x01\x00" * 64))
    ds.add(DataElement(0x60004000, "LT", "overlay drawn for Doe^Janet"))
    ds.add(DataElement(0x00209999, "UN", b"Doe^Janet unknown"))
    ds.AcquisitionDateTime = "20040826120000.000000+0200"
    ds.StudyDescription = "CXR Janet Doe"
    ds.PatientAge = "095Y"
    ds.PatientWeight = 61.5
    phi = phi_strings(ds)
    assert {"EMPI99887766", "RP-55512", "SPS-4242", "Doe^Janet", "Janet", "20040826120000.000000+0200"} <= phi

    deid = deidentify(ds, SECRET)
    out = deid.dataset
    header = _header_bytes(out)
    for s in (*phi, "Janet", "ACME", "+0200", "overlay", "UKE_pa_020395", "THORAVISION", "Version 3.3.1"):
        assert s.encode() not in header, s
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert not any(elem.tag.group & 0xFF00 in (0x5000, 0x6000) for elem in out.iterall())
    assert not any(elem.VR == "UN" for elem in out.iterall())
    assert "OtherPatientIDsSequence" not in out and "RequestAttributesSequence" not in out
    item = out.ViewCodeSequence[0]
    assert (item.CodeValue, item.CodeMeaning) == ("399348003", "postero-anterior")
    assert "NamesOfIntendedRecipientsOfResults" not in item
    assert item.ReferencedSOPInstanceUID == out.SOPInstanceUID  # references stay consistent
    # the same keyed offset for every date of the patient; the UTC offset is dropped
    shift = datetime(2004, 8, 26) - datetime.strptime(out.StudyDate, "%Y%m%d")
    assert out.AcquisitionDateTime == (datetime(2004, 8, 26, 12) - shift).strftime("%Y%m%d%H%M%S.000000")
    assert shift.days % 7 == 0 and 364 <= shift.days <= 3654
    # patient characteristics kept, age over 89 aggregated
    assert (out.PatientAge, float(out.PatientWeight), out.PatientSex) == ("090Y", 61.5, "F")
    assert deid.metadata.age_band == "90+"


def test_deidentified_is_valid_dicom_with_profile_markers(corpus_deid: list, rg1: dict[str, bytes]) -> None:
    cases = [(ds, stored, deid) for _row, ds, stored, deid in corpus_deid[:4]]
    ds, stored = _admit(rg1["RG1_J2KR.dcm"])
    cases.append((ds, stored, deidentify(ds, SECRET)))
    for ds, stored, deid in cases:
        raw = _write(deid.dataset)
        with config.strict_reading():
            back = pydicom.dcmread(io.BytesIO(raw))
            _ = [elem.value for elem in back.iterall()]
        validate_file_meta(back.file_meta, enforce_standard=True)
        validate(back)  # still admissible
        np.testing.assert_array_equal(decode_pixels(back), stored)
        assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID != ds.SOPInstanceUID
        assert back.SOPClassUID == ds.SOPClassUID and back.Modality == ds.Modality
        assert back.PatientIdentityRemoved == "YES"
        assert back.LongitudinalTemporalInformationModified == "MODIFIED"
        assert {i.CodeValue for i in back.DeidentificationMethodCodeSequence} == CODE_MEANINGS
        assert all(i.CodingSchemeDesignator == "DCM" for i in back.DeidentificationMethodCodeSequence)
        assert back.PatientID == deid.patient_key and str(back.PatientName) == deid.patient_key
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            new = back[keyword].value
            assert new.startswith("2.25.") and UID(new).is_valid and new != ds[keyword].value
        for keyword in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate"):
            assert keyword in back and not back[keyword].value  # Type 2: present, empty
        assert back.PatientSex == ds.PatientSex and back.BodyPartExamined == ds.BodyPartExamined
        assert back.preamble == b"\x00" * 128


def test_deterministic_and_source_untouched(
    corpus: Path, manifest: list[dict], rg1: dict[str, bytes]
) -> None:
    for raw in (_corpus_raw(corpus, manifest[0]), rg1["RG1_UNCR.dcm"]):
        ds = read_dicom(raw)
        before = _write(ds)
        a, b = deidentify(ds, SECRET), deidentify(read_dicom(raw), SECRET)
        assert _write(ds) == before  # the source dataset is not modified
        assert _write(a.dataset) == _write(b.dataset)  # idempotent ingestion
        assert (a.study_key, a.patient_key, a.metadata) == (b.study_key, b.patient_key, b.metadata)
        rotated = deidentify(ds, SECRET + b"-rotated")
        assert rotated.study_key != a.study_key and rotated.patient_key != a.patient_key
        assert rotated.dataset.StudyInstanceUID != a.dataset.StudyInstanceUID
        assert rotated.metadata.site != a.metadata.site
    with pytest.raises(ValueError, match="secret"):
        deidentify(ds, b"short")


def test_pseudonyms_link_a_patient_and_keep_intervals(corpus_deid: list) -> None:
    by_patient = defaultdict(list)
    for row, ds, _stored, deid in corpus_deid:
        by_patient[row["patient_key"]].append((row, ds, deid))
        assert re.fullmatch(r"[0-9a-f]{32}", deid.study_key) and re.fullmatch(
            r"[0-9a-f]{32}", deid.patient_key
        )
    study_keys = [d.study_key for _r, _ds, _s, d in corpus_deid]
    assert len(set(study_keys)) == len(study_keys)
    keys = {p: {d.patient_key for _r, _ds, d in studies} for p, studies in by_patient.items()}
    assert all(len(k) == 1 for k in keys.values())  # same patient -> same key across studies
    assert len({next(iter(k)) for k in keys.values()}) == len(keys)  # different patients differ
    multi = [s for s in by_patient.values() if len(s) > 1]
    assert multi, "the corpus should have a patient with several studies"

    def when(d: Dataset) -> datetime:
        return datetime.strptime(d.StudyDate + d.StudyTime.split(".")[0], "%Y%m%d%H%M%S")

    for studies in multi:
        _first_row, first_ds, first = studies[0]
        for _row, ds, deid in studies[1:]:
            assert when(deid.dataset) - when(first.dataset) == when(ds) - when(first_ds)
        shift = when(first_ds) - when(first.dataset)
        assert shift.days % 7 == 0 and shift.days >= 364  # whole weeks into the past
        assert first.metadata.study_date == when(first.dataset).date().isoformat()


def test_metadata(corpus_deid: list) -> None:
    sites = defaultdict(set)
    for row, ds, _stored, deid in corpus_deid:
        m = deid.metadata
        age = row["demographics"]["age"]
        band = "90+" if age >= 90 else f"{age // 10 * 10}-{age // 10 * 10 + 9}"
        assert (m.modality, m.view_position, m.sex, m.age_band) == (
            row["modality"],
            row["view"],
            row["demographics"]["sex"],
            band,
        )
        assert (m.rows, m.columns, m.bits_stored, m.photometric) == (
            row["rows"],
            row["cols"],
            row["bits_stored"],
            row["photometric"],
        )
        assert m.transfer_syntax == row["transfer_syntax"] and m.manufacturer == ds.Manufacturer
        assert m.pixel_spacing_mm == pytest.approx(row["pixel_spacing_mm"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", m.study_date)
        assert m.study_date != datetime.strptime(ds.StudyDate, "%Y%m%d").date().isoformat()
        assert re.fullmatch(r"site-[0-9a-f]{8}", m.site)
        sites[row["site"]].add(m.site)
    assert all(len(v) == 1 for v in sites.values())
    assert len({next(iter(v)) for v in sites.values()}) == len(sites)


def test_action_table_names_real_attributes() -> None:
    names = [
        *profile_module.ACTIONS,
        *profile_module.SAFE_TEXT,
        *profile_module.SAFE_BINARY,
        *phi_module.IDENTIFYING_KEYWORDS,
    ]
    assert [k for k in names if tag_for_keyword(k) is None] == []
    assert not set(profile_module.SAFE_TEXT) & set(profile_module.ACTIONS)
