"""The findings SR (similar cases, diagnosis vote, prognosis, caveats) on the real RG1 radiograph as
ingestion de-identifies it: written, read back by pydicom, highdicom and dcmtk's dsrdump."""

from __future__ import annotations

import copy
import dataclasses
import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID

from cxrmesh.dicom.admit import process_dicom
from cxrmesh.dicom.burned_in import PixelPolicy
from cxrmesh.dicom.outputs import to_bytes
from cxrmesh.dicom.outputs.common import DEVICE_OBSERVER_UID
from cxrmesh.dicom.outputs.findings import (
    CAVEAT_ABOUT,
    CAVEAT_PROGNOSIS,
    CAVEAT_SIMILAR,
    FINDINGS_SERIES_NUMBER,
    Findings,
    SimilarCaseText,
    findings_text,
    make_findings_report,
)
from cxrmesh.dicom.phi import phi_strings

SECRET = b"unit-test-pseudonym-key-0123456789abcdef"
VERSION = "1.4.2"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
KEYS = ("5d41402abc4b2a76b9719d911017c592", "7d793037a0760186574b0282f2f435e7", "case_0003")
FINDINGS = Findings(
    similar=(
        SimilarCaseText(KEYS[0], 0.934, ("covid19",), "intubated"),
        SimilarCaseText(KEYS[1], 0.901, ("other pneumonia",), "discharged"),
        SimilarCaseText(KEYS[2], 0.85, ()),
    ),
    vote_label="covid19",
    vote_share=0.7,
    vote_k=10,
    prognosis_status="done",
    prognosis_probability=0.234,
    quality_verdict="flagged: rotated; low inspiration",
)
NO_CLINICAL = dataclasses.replace(FINDINGS, prognosis_status="no_clinical_data", prognosis_probability=None)
REFUSED = dataclasses.replace(
    FINDINGS,
    similar=(),
    vote_label=None,
    vote_share=None,
    vote_k=0,
    prognosis_status="image_refused",
    prognosis_probability=None,
    quality_verdict="refused: not a frontal chest radiograph",
)


@pytest.fixture(scope="module")
def rg1() -> dict:
    """RG1 (real CR) through the ingestion domain; OCR is irrelevant here, so it is off."""
    raw_bytes = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    deid, _norm = process_dicom(raw_bytes, SECRET, PixelPolicy(ocr=False))
    raw = pydicom.dcmread(io.BytesIO(raw_bytes), stop_before_pixels=True)
    source = deid.dataset
    return {"raw": raw, "source": source, "bytes": to_bytes(_report(source, FINDINGS))}


def _report(source: Dataset, findings: Findings, **kw) -> Dataset:
    return make_findings_report(source, findings, software_version=kw.pop("software_version", VERSION), **kw)


def _read(b: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(b))


def _items(ds: Dataset) -> list[Dataset]:
    """Every content item of the tree, depth first."""
    out: list[Dataset] = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out += _items(item)
    return out


def _texts(ds: Dataset) -> list[str]:
    return [str(i.TextValue) for i in _items(ds) if i.ValueType == "TEXT" and "TextValue" in i]


def _nums(ds: Dataset) -> dict[str, tuple[float, str]]:
    return {
        i.ConceptNameCodeSequence[0].CodeMeaning: (
            float(i.MeasuredValueSequence[0].NumericValue),
            i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue,
        )
        for i in _items(ds)
        if i.ValueType == "NUM"
    }


# ---------------------------------------------------------------------------------------------
# the document


def test_round_trip_structure_and_references(rg1: dict) -> None:
    source, ds = rg1["source"], _read(rg1["bytes"])
    assert ds.SOPClassUID == ENHANCED_SR and ds.Modality == "SR"
    assert ds.SeriesNumber == FINDINGS_SERIES_NUMBER and "not a diagnosis" in ds.SeriesDescription
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert (ds.Manufacturer, ds.SoftwareVersions, ds.DeviceSerialNumber) == ("cxrmesh", VERSION, "cxrmesh")
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("18748-4", "LN")
    template = ds.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "2000")
    assert any(item.CodingSchemeDesignator == "99CXRMESH" for item in ds.CodingSchemeIdentificationSequence)
    # same study, dates from the source (never the clock)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert (ds.ContentDate, ds.InstanceCreationDate, ds.SeriesDate) == (source.ContentDate,) * 3

    # the source image is the evidence and is referenced in the tree
    (study,) = ds.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    (ref,) = series.ReferencedSOPSequence
    assert (ref.ReferencedSOPInstanceUID, ref.ReferencedSOPClassUID) == (
        source.SOPInstanceUID,
        source.SOPClassUID,
    )
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    images = [i for i in _items(ds) if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [source.SOPInstanceUID]

    # headed sections, in order, holding the sentences findings_text gives
    headings = [
        i.ConceptNameCodeSequence[0].CodeMeaning for i in ds.ContentSequence if i.ValueType == "CONTAINER"
    ]
    assert headings == [
        "About this report",
        "Image quality gate",
        "Similar prior cases",
        "Diagnosis vote of similar cases",
        "Prognosis",
    ]
    texts = _texts(ds)
    assert [t for t in texts if not t.startswith("cxrmesh")] == findings_text(FINDINGS)
    for caveat in (CAVEAT_ABOUT, CAVEAT_SIMILAR, CAVEAT_PROGNOSIS):
        assert caveat in texts
    assert any(
        t.startswith("Decision support, not a diagnosis: the vote of the 10 most similar") for t in texts
    )
    for key in KEYS:
        assert sum(key in t for t in texts) == 1
    assert (
        "1. Case 5d41402abc4b2a76b9719d911017c592: similarity 0.934; diagnosis covid19; outcome intubated."
        in texts
    )
    assert "3. Case case_0003: similarity 0.850; diagnosis not known; outcome not known." in texts
    vote = "Diagnosis vote of the 10 most similar prior cases with a known diagnosis: covid19"
    assert f"{vote} (70.0 % of the vote)." in texts
    assert "Image quality gate: flagged (rotated; low inspiration)." in texts
    assert _nums(ds) == {
        "Share of the vote": (pytest.approx(70.0), "%"),
        "Number of similar cases voting": (10.0, "{cases}"),
        "Predicted probability of the outcome": (pytest.approx(23.4), "%"),
    }


def test_highdicom_reads_it_back(rg1: dict) -> None:
    sr = hd.sr.srread(io.BytesIO(rg1["bytes"]))
    assert isinstance(sr, hd.sr.EnhancedSR)
    assert {uid for _, _, uid, _ in sr.get_evidence()} == {rg1["source"].SOPInstanceUID}
    observer = [i for i in _items(sr) if i.ConceptNameCodeSequence[0].CodeMeaning == "Device Observer UID"]
    assert [i.UID for i in observer] == [DEVICE_OBSERVER_UID]


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk (dsrdump) is not installed")
def test_dsrdump_reads_it_and_checks_the_iod_constraints(rg1: dict, tmp_path: Path) -> None:
    path = tmp_path / "findings.dcm"
    path.write_bytes(rg1["bytes"])
    done = subprocess.run(
        ["dsrdump", "+Pl", "+Pt", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warning either
    assert "Enhanced SR Document" in done.stdout and "TID 2000 (DCMR)" in done.stdout
    assert CAVEAT_PROGNOSIS in done.stdout and KEYS[0] in done.stdout

    # control: dsrdump does check relationship constraints (Basic Text SR allows no NUM)
    ds = _read(rg1["bytes"])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    bad = tmp_path / "basic-text.dcm"
    ds.save_as(bad, enforce_file_format=True)
    refused = subprocess.run(["dsrdump", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "NUM" in refused.stderr


# ---------------------------------------------------------------------------------------------
# identity and idempotence


def test_same_input_same_bytes_and_uids_other_content_new_instance(rg1: dict) -> None:
    source, first = rg1["source"], _read(rg1["bytes"])
    again = to_bytes(_report(source, FINDINGS))
    assert again == rg1["bytes"]
    for uid in (first.SOPInstanceUID, first.SeriesInstanceUID):
        assert uid.startswith("2.25.") and UID(uid).is_valid

    changed = [
        dataclasses.replace(FINDINGS, prognosis_probability=0.235),
        dataclasses.replace(FINDINGS, similar=FINDINGS.similar[:2]),
        dataclasses.replace(FINDINGS, quality_verdict="pass"),
        NO_CLINICAL,
    ]
    uids = {first.SOPInstanceUID}
    for findings in changed:
        other = _report(source, findings)
        assert other.SeriesInstanceUID == first.SeriesInstanceUID
        uids.add(other.SOPInstanceUID)
    assert len(uids) == 1 + len(changed)
    assert _report(source, FINDINGS, series_number=77).SOPInstanceUID not in uids
    newer = _report(source, FINDINGS, software_version=VERSION + "+1")
    assert newer.SeriesInstanceUID != first.SeriesInstanceUID and newer.SOPInstanceUID not in uids


def test_no_identifier_that_the_source_lacks(rg1: dict) -> None:
    raw, source, b = rg1["raw"], rg1["source"], rg1["bytes"]
    ds = _read(b)
    assert (ds.PatientName, ds.PatientID) == (source.PatientName, source.PatientID)
    assert ds.PatientID != raw.PatientID
    leaked = sorted(p for p in phi_strings(raw) if p.encode() in b)
    assert not leaked, leaked

    source_values = {str(e.value) for e in source.iterall() if e.VR not in ("SQ", "OB", "OW")}
    own = {str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), DEVICE_OBSERVER_UID}

    def check(elem: pydicom.DataElement) -> None:
        if elem.VR == "PN" and elem.value:
            assert elem.keyword == "PatientName" and str(elem.value) == str(source.PatientName)
        elif elem.VR == "UI" and elem.value and elem.keyword != "ImplementationClassUID":  # the writer's
            uid = UID(str(elem.value))
            registered = uid.name != str(uid)  # a DICOM-defined UID (SOP class, transfer syntax, ...)
            assert str(uid) in source_values or str(uid) in own or registered, elem.keyword
        elif elem.VR in ("DA", "DT", "TM") and elem.value:
            assert str(elem.value) in source_values, elem.keyword
        elif elem.keyword in ("PatientID", "AccessionNumber", "StudyID", "OtherPatientIDs"):
            assert str(elem.value or "") == str(source.get(elem.keyword, "") or ""), elem.keyword

    for elem in ds.file_meta:
        check(elem)
    for elem in ds.iterall():
        check(elem)


# ---------------------------------------------------------------------------------------------
# the sentences


@pytest.mark.parametrize(
    ("findings", "expected", "absent"),
    [
        (FINDINGS, "Probability of intubation within 72 hours: 23.4 %.", "No probability"),
        (
            NO_CLINICAL,
            "No probability: submit clinical data (vital signs, laboratory tests, comorbidities) to get the "
            "probability of intubation within 72 hours.",
            CAVEAT_PROGNOSIS,
        ),
        (
            REFUSED,
            "No probability: the image quality gate refused this image (not a frontal chest radiograph).",
            CAVEAT_PROGNOSIS,
        ),
    ],
    ids=["done", "no_clinical_data", "image_refused"],
)
def test_prognosis_statuses(rg1: dict, findings: Findings, expected: str, absent: str) -> None:
    text = findings_text(findings)
    assert expected in text and not any(absent in t for t in text)
    ds = _read(to_bytes(_report(rg1["source"], findings)))
    prognosis = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Prognosis")
    assert expected in _texts(prognosis)
    assert ("Predicted probability of the outcome" in _nums(ds)) == (findings.prognosis_status == "done")


def test_sentences_without_cases_vote_or_verdict() -> None:
    text = findings_text(REFUSED)
    assert "No similar prior case was found in this site's archive." in text
    assert "No diagnosis vote: no similar prior case with a known diagnosis." in text
    assert "Image quality gate: refused (not a frontal chest radiograph)." in text
    plain = dataclasses.replace(NO_CLINICAL, quality_verdict="", prognosis_outcome="intubation or death")
    text = findings_text(plain)
    assert not any(t.startswith("Image quality gate") for t in text)
    assert text[-1].endswith("to get the probability of intubation or death.")
    assert text[0] == CAVEAT_ABOUT


def test_non_ascii_text_switches_to_utf8(rg1: dict) -> None:
    case = SimilarCaseText(KEYS[0], 0.9, ("pneumonie atypique",), "intubé")
    findings = dataclasses.replace(FINDINGS, similar=(case,))
    ds = _read(to_bytes(_report(rg1["source"], findings)))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert any("outcome intubé." in t for t in _texts(ds))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"prognosis_status": "maybe"}, "prognosis_status"),
        ({"prognosis_probability": None}, "needs a prognosis_probability"),
        ({"prognosis_probability": 1.5}, "prognosis_probability"),
        ({"prognosis_status": "no_clinical_data"}, "must be None"),
        ({"vote_share": None}, "vote_share"),
        ({"vote_label": None}, "vote_share must be None"),
        ({"vote_k": -1}, "vote_k"),
        ({"quality_verdict": "VERDICT_PASS"}, "quality_verdict"),
        ({"prognosis_outcome": "line\nbreak"}, "control characters"),
        ({"similar": (SimilarCaseText("1.2.840.113619.2.55", 0.9, ()),)}, "pseudonymous key"),
        ({"similar": (SimilarCaseText("DOE^JOHN", 0.9, ()),)}, "pseudonymous key"),
        ({"similar": (SimilarCaseText(KEYS[0], float("nan"), ()),)}, "similarity"),
        ({"similar": (SimilarCaseText(KEYS[0], 0.9, ["covid19"]),)}, "tuple"),  # type: ignore[arg-type]
    ],
)
def test_inconsistent_findings_are_refused(rg1: dict, change: dict, match: str) -> None:
    bad = dataclasses.replace(FINDINGS, **change)
    with pytest.raises(ValueError, match=match) as info:
        make_findings_report(rg1["source"], bad, software_version=VERSION)
    assert "DOE" not in str(info.value) and "113619" not in str(info.value)  # no identifier in errors
    with pytest.raises(ValueError, match=match):
        findings_text(bad)


def test_version_and_source_are_checked(rg1: dict) -> None:
    with pytest.raises(ValueError, match="software_version"):
        make_findings_report(rg1["source"], FINDINGS, software_version="")
    no_uid = copy.deepcopy(rg1["source"])
    del no_uid.SOPInstanceUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        make_findings_report(no_uid, FINDINGS, software_version=VERSION)
