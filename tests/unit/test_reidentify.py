"""The way back to the PACS: outputs made from a de-identified radiograph, filed under the original study.

Real parts: pydicom-data's RG1 (a real CR), de-identified by ingestion's own ``process_dicom``; the SEG
and measurement SR made from it by ``cxrmesh.dicom.outputs`` as quantification makes them, written to
bytes and read back as the PACS sender reads its blobs; the vault's real Fernet/HKDF.
"""

from __future__ import annotations

import base64
import copy
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from cxrmesh.analysis.pixels import Letterbox, letterbox_labels
from cxrmesh.analysis.regions import REGION_KEYS, split_regions
from cxrmesh.dicom import outputs as do
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.dicom.burned_in import PixelPolicy
from cxrmesh.dicom.deid import Deidentified
from cxrmesh.dicom.profile import is_standard_uid
from cxrmesh.dicom.reidentify import (
    ATTRIBUTE_KEYWORDS,
    IdentityMismatch,
    OriginalIdentity,
    capture,
    reidentify,
)
from cxrmesh.runtime.db.identities import IdentityUnreadable, IdentityVault

SECRET = b"reidentify-test-secret-0123456789abcdef"
VERSION = "1.0.0"
DEID_MARKERS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


def _walk(ds: Dataset) -> Iterator[DataElement]:
    """Every element at any depth, sequence items included (and the file meta)."""
    if getattr(ds, "file_meta", None) is not None:
        yield from ds.file_meta
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def _values(elem: DataElement) -> list[str]:
    if elem.VR == "SQ" or elem.value is None:
        return []
    vals = elem.value if isinstance(elem.value, (list, tuple, pydicom.multival.MultiValue)) else [elem.value]
    return [str(v).strip() for v in vals if str(v).strip()]


def _uids(ds: Dataset) -> set[str]:
    return {v for e in _walk(ds) if e.VR == "UI" for v in _values(e) if not is_standard_uid(v)}


def _read(b: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(b))


def _regions(rows: int, cols: int) -> np.ndarray:
    """Two elliptical lungs split at a hilum line, in the source frame."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    lungs = np.zeros((rows, cols), np.uint8)
    for cx, label in ((0.3 * cols, 1), (0.7 * cols, 2)):
        lungs[((xx - cx) / (0.16 * cols)) ** 2 + ((yy - 0.5 * rows) / (0.33 * rows)) ** 2 <= 1] = label
    model = letterbox_labels(split_regions(lungs, (0.6 * cols, 0.45 * rows)), 512)
    return do.regions_to_source(model, Letterbox(rows, cols))


@pytest.fixture(scope="module")
def rg1() -> dict:
    raw = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    original = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    deid, _ = process_dicom(raw, SECRET, PixelPolicy(ocr=False))
    source = deid.dataset
    seg = do.make_segmentation(
        source, _regions(int(source.Rows), int(source.Columns)), software_version=VERSION
    )
    table = {
        key: {"area_fraction": 0.25, "mean_intensity": 0.4, "opacity_fraction": 0.1}
        for key in REGION_KEYS.values()
    }
    sr = do.make_measurement_report(source, seg, table, None, None, software_version=VERSION)
    return {
        "original": original,
        "deid": deid,
        "identity": capture(original, source),
        "outputs": {"seg": do.to_bytes(seg), "sr": do.to_bytes(sr)},
    }


# ---------------------------------------------------------------------------------------------
# capture


def test_capture_keeps_what_the_deidentification_replaced(rg1: dict) -> None:
    original, deid = rg1["original"], rg1["deid"].dataset
    identity: OriginalIdentity = rg1["identity"]
    assert identity.uids == {
        str(deid[kw].value): str(original[kw].value)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    }
    assert "FrameOfReferenceUID" not in original  # a CR has none, so none is kept
    assert identity.attributes == {kw: str(original[kw].value) for kw in ATTRIBUTE_KEYWORDS if kw in original}
    assert identity.attributes["PatientName"] == "CompressedSamples^RG1"
    assert identity.attributes["AccessionNumber"] == "exam Number" and str(deid.AccessionNumber) == ""
    assert "IssuerOfPatientID" not in identity.attributes  # RG1 has none


def test_identity_json_round_trip_and_no_values_in_repr(rg1: dict) -> None:
    identity: OriginalIdentity = rg1["identity"]
    assert OriginalIdentity.from_json(identity.to_json()) == identity
    assert "RG1" not in repr(identity) and "1.3.6.1.4.1.5962" not in repr(identity)
    for bad in (b"", b"[]", b'{"format": 1, "uids": {"a": 1}, "attributes": {}}', b'{"uids": {}}'):
        with pytest.raises(ValueError):
            OriginalIdentity.from_json(bad)


# ---------------------------------------------------------------------------------------------
# reidentify


@pytest.mark.parametrize("kind", ["seg", "sr"])
def test_an_output_is_filed_under_the_original_study_with_no_trace_of_the_pseudonyms(
    rg1: dict, kind: str
) -> None:
    original, deid = rg1["original"], rg1["deid"]
    output = _read(rg1["outputs"][kind])
    before = copy.deepcopy(output)
    back_bytes = do.to_bytes(reidentify(output, rg1["identity"]))
    back = _read(back_bytes)
    assert output == before, "the output passed in was changed"

    # filed under the original study; its own (derived) series and instance kept
    assert back.StudyInstanceUID == original.StudyInstanceUID
    assert (back.SeriesInstanceUID, back.SOPInstanceUID) == (output.SeriesInstanceUID, output.SOPInstanceUID)
    if kind == "seg":
        (series,) = back.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == original.SeriesInstanceUID
        assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
        for frame in back.PerFrameFunctionalGroupsSequence:
            (src,) = frame.DerivationImageSequence[0].SourceImageSequence
            assert src.ReferencedSOPInstanceUID == original.SOPInstanceUID
    else:
        (evidence,) = back.CurrentRequestedProcedureEvidenceSequence
        assert evidence.StudyInstanceUID == original.StudyInstanceUID
        by_series = {s.SeriesInstanceUID: s for s in evidence.ReferencedSeriesSequence}
        image = by_series[original.SeriesInstanceUID].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == original.SOPInstanceUID
        seg = _read(rg1["outputs"]["seg"])  # the SEG keeps its UIDs, so the SR's reference still holds
        assert by_series[seg.SeriesInstanceUID].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            seg.SOPInstanceUID
        )

    # the patient and study as the original has them, nothing the original lacked
    for kw in ATTRIBUTE_KEYWORDS:
        if kw in original:
            assert back[kw].value == original[kw].value, kw
        else:
            assert not back.get(kw), kw
    for elem in back:
        if elem.tag.group == 0x0010:  # Patient module: only what the original had
            assert elem.keyword in original, elem.keyword
    for kw in DEID_MARKERS:
        assert kw not in back, kw

    # no de-identified UID or pseudonym left anywhere
    pseudonymous = _uids(deid.dataset) - _uids(original)
    assert pseudonymous >= set(rg1["identity"].uids)
    assert not pseudonymous & _uids(back)
    assert not {v.encode() for v in pseudonymous} & {u.encode() for u in _uids(back)}
    for token in (*pseudonymous, deid.patient_key, deid.study_key):
        assert token.encode() not in back_bytes

    # dates moved back: every date is one of the original's (RG1's content date differs from its study date)
    original_dates = {v for e in _walk(original) if e.VR == "DA" for v in _values(e)}
    back_dates = {v for e in _walk(back) if e.VR in ("DA", "DT") for v in _values(e)}
    assert back_dates and {d[:8] for d in back_dates} <= original_dates
    assert (back.ContentDate, back.ContentTime) == (original.ContentDate, original.ContentTime)
    assert (back.StudyDate, back.StudyTime) == (original.StudyDate, original.StudyTime)


def test_an_output_of_another_study_is_refused(rg1: dict) -> None:
    other = copy.deepcopy(rg1["original"])
    other.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    deid, _ = process_dicom(_file_bytes(other, rg1), SECRET, PixelPolicy(ocr=False))
    with pytest.raises(IdentityMismatch) as caught:
        reidentify(_read(rg1["outputs"]["seg"]), capture(other, deid.dataset))
    assert "1.2.826" not in str(caught.value) and "RG1" not in str(caught.value)


def test_values_the_original_lacked_are_emptied_or_removed_and_names_keep_their_letters(rg1: dict) -> None:
    """A Type 2 keyword stays present with no value, an optional one goes; any name survives encoding."""
    original = copy.deepcopy(rg1["original"])
    del original.AccessionNumber, original.StudyDescription
    original.SpecificCharacterSet = "ISO_IR 192"
    original.PatientName = "Müller^Zoë"
    original.IssuerOfPatientID = "Hospital Ω"
    deid: Deidentified = process_dicom(_file_bytes(original, rg1), SECRET, PixelPolicy(ocr=False))[0]
    output = _read(rg1["outputs"]["sr"])
    output.AccessionNumber = "pseudo-accession"  # as if an output carried pseudonyms the original lacks
    output.StudyDescription = "pseudo-description"
    identity = capture(original, deid.dataset)
    output.StudyInstanceUID = next(k for k, v in identity.uids.items() if v == original.StudyInstanceUID)
    back = _read(do.to_bytes(reidentify(output, identity)))
    assert "AccessionNumber" in back and not back.AccessionNumber
    assert "StudyDescription" not in back
    assert (str(back.PatientName), back.IssuerOfPatientID) == ("Müller^Zoë", "Hospital Ω")
    assert back.SpecificCharacterSet == "ISO_IR 192"


def _file_bytes(ds: Dataset, rg1: dict) -> bytes:
    """``ds`` (a header) with RG1's pixels, as a Part 10 file ingestion would receive."""
    full = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    for elem in ds:
        full[elem.tag] = copy.deepcopy(elem)
    for elem in list(full):
        if elem.tag != 0x7FE00010 and elem.tag not in ds:
            del full[elem.tag]
    buf = io.BytesIO()
    full.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# vault


def test_the_vault_opens_what_it_sealed_and_refuses_another_key(rg1: dict) -> None:
    identity: OriginalIdentity = rg1["identity"]
    vault = IdentityVault(SECRET)
    sealed = vault.seal(identity)
    assert vault.open(sealed) == identity
    assert IdentityVault(SECRET).open(sealed) == identity  # the key is derived, not random
    assert vault.seal(identity) != sealed  # a fresh IV each time
    with pytest.raises(IdentityUnreadable):
        IdentityVault(b"another-secret-0123456789abcdef-xyz").open(sealed)
    tampered = bytearray(base64.urlsafe_b64decode(sealed))
    tampered[40] ^= 1
    with pytest.raises(IdentityUnreadable):
        vault.open(base64.urlsafe_b64encode(bytes(tampered)))
    with pytest.raises(IdentityUnreadable):
        vault.open(b"not a token")
    assert "SECRET" not in repr(vault) and SECRET.decode() not in repr(vault)


def test_sealed_bytes_carry_no_plaintext(rg1: dict) -> None:
    identity: OriginalIdentity = rg1["identity"]
    sealed = IdentityVault(SECRET).seal(identity)
    ciphertext = base64.urlsafe_b64decode(sealed)
    plaintext = [*identity.uids, *identity.uids.values(), *identity.attributes.values(), "PatientName"]
    for value in (v for v in plaintext if len(v) >= 3):
        for form in (value.encode(), base64.urlsafe_b64encode(value.encode()).rstrip(b"=")):
            assert form not in sealed and form not in ciphertext, value
