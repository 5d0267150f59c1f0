"""De-identification of an admitted radiograph (DICOM PS3.15 Annex E), and the non-PHI facts
about it that may travel on Kafka and into Milvus.

Profile: Basic Application Level Confidentiality Profile with the Retain Longitudinal Temporal
Information with Modified Dates option and the Retain Patient Characteristics option. Everything
that replaces an identifier is keyed with the service secret (HMAC-SHA256), so ingesting the same
file twice gives byte-identical output (idempotent ingestion) and a patient's studies stay
linked, while nobody without the secret can recompute a pseudonym from a known MRN or UID.

This module applies the action table of ``profile`` (docs/deidentification.md compares it with
dicognito and deid) with the keyed ``pseudonyms`` and the ``dates`` rules. Attributes the table does
not name fall to rules by value representation that fail safe: any person name, unknown free text,
unknown binary, UN value, private, overlay or curve element is removed; every non-standard UID is
replaced; every date is shifted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from cxrmesh.contracts.limits import MIN_SECRET_BYTES
from cxrmesh.dicom.dates import (
    age_band,
    age_string,
    age_years,
    map_values,
    parse_da,
    shift_da,
    shift_dt,
    source_age,
)
from cxrmesh.dicom.normalise import pixel_spacing_mm
from cxrmesh.dicom.profile import ACTIONS, Action, default_action, is_standard_uid
from cxrmesh.dicom.pseudonyms import date_offset, keyed_hex, keyed_uid, patient_identity

DEID_VERSION: Final[str] = "1"


@dataclass(frozen=True)
class StudyMetadata:
    """Non-PHI facts that may travel on Kafka / into Milvus."""

    modality: str
    view_position: str
    sex: str  # "M", "F", "O" or ""
    age_band: str  # "40-49", "90+", "" unknown
    study_date: str  # YYYY-MM-DD after the per-patient keyed shift, "" unknown
    site: str  # keyed pseudonym of the institution, e.g. "site-3fa2b1c0", "" unknown
    manufacturer: str
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    transfer_syntax: str
    pixel_spacing_mm: float | None


@dataclass(frozen=True)
class Deidentified:
    """A de-identified copy of one radiograph and its pseudonyms."""

    dataset: Dataset  # de-identified copy (the source dataset is not modified)
    study_key: str  # HMAC(secret, StudyInstanceUID, SOPInstanceUID): same DICOM -> same key
    patient_key: str  # HMAC(secret, IssuerOfPatientID, PatientID): same patient -> same key
    metadata: StudyMetadata


@dataclass(frozen=True)
class _Context:
    secret: bytes
    offset: timedelta
    patient_key: str


def _clean(ds: Dataset, ctx: _Context) -> None:
    """De-identify `ds` in place (it is already a private copy), recursing into sequences."""
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private or tag.element == 0x0000 or (tag.group & 0xFF00) in (0x5000, 0x6000):
            del ds[tag]  # private, group length, curve and overlay elements
            continue
        action = ACTIONS.get(elem.keyword) or default_action(elem)
        if action is Action.REMOVE:
            del ds[tag]
        elif action is Action.EMPTY:
            elem.value = Sequence() if elem.VR == "SQ" else ""
        elif action is Action.PSEUDONYM:
            elem.value = ctx.patient_key
        elif action is Action.UID:
            map_values(elem, lambda v: v if is_standard_uid(v) else keyed_uid(ctx.secret, v))
        elif action is Action.SHIFT:
            shift = shift_da if elem.VR == "DA" else shift_dt
            map_values(elem, lambda v, f=shift: f(v, ctx.offset))
        elif action is Action.AGE:
            years = age_years(elem.value or "")
            elem.value = age_string(years) if years is not None else ""
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item, ctx)


def _method_codes() -> Sequence:
    out = []
    for code in (
        codes.DCM.BasicApplicationConfidentialityProfile,
        codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
        codes.DCM.RetainPatientCharacteristicsOption,
    ):
        item = Dataset()
        item.CodeValue = code.value
        item.CodingSchemeDesignator = code.scheme_designator
        item.CodeMeaning = code.meaning
        out.append(item)
    return Sequence(out)


def deidentify(ds: Dataset, secret: bytes) -> Deidentified:
    """A de-identified copy of `ds` (pixel data untouched) with its keyed pseudonyms and metadata."""
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the de-identification secret must be at least {MIN_SECRET_BYTES} bytes")
    study_uid = str(ds.get("StudyInstanceUID", "")).strip()
    sop_uid = str(ds.get("SOPInstanceUID", "")).strip()
    if not study_uid or not sop_uid:
        raise ValueError("StudyInstanceUID and SOPInstanceUID are required (validate the dataset first)")
    identity = patient_identity(ds)
    patient_key = keyed_hex(secret, "patient", *identity)
    study_key = keyed_hex(secret, "study", study_uid, sop_uid)
    ctx = _Context(secret=secret, offset=date_offset(secret, identity), patient_key=patient_key)
    age = source_age(ds)

    # A fresh Dataset of copied elements: a FileDataset copy would carry the raw file buffer
    # (PHI included) and the source filename along.
    out = Dataset()
    for elem in ds:
        out.add(copy.deepcopy(elem))
    _clean(out, ctx)

    out.PatientName = patient_key
    out.PatientID = patient_key
    if age is not None:
        out.PatientAge = age_string(age)
    if "SeriesInstanceUID" not in out:
        out.SeriesInstanceUID = keyed_uid(secret, f"series-of:{study_uid}")
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = [
        f"cxrmesh-deid {DEID_VERSION}: PS3.15 Basic Profile",
        "Retain Longitudinal Temporal Info Modified Dates",
        "Retain Patient Characteristics",
    ]
    out.DeidentificationMethodCodeSequence = _method_codes()
    out.LongitudinalTemporalInformationModified = "MODIFIED"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"CXRMESH_DEID_{DEID_VERSION}"
    out.file_meta = meta
    out.preamble = b"\x00" * 128

    return Deidentified(
        dataset=out,
        study_key=study_key,
        patient_key=patient_key,
        metadata=_metadata(ds, out, secret, age),
    )


def _metadata(src: Dataset, out: Dataset, secret: bytes, age: float | None) -> StudyMetadata:
    sex = str(src.get("PatientSex", "") or "").strip().upper()
    institution = " ".join(str(src.get("InstitutionName", "") or "").split()).casefold()
    study_date = next(
        (
            d
            for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
            if (d := parse_da(out.get(k, "")))
        ),
        None,
    )
    return StudyMetadata(
        modality=str(src.get("Modality", "") or "").strip().upper(),
        view_position=str(src.get("ViewPosition", "") or "").strip().upper(),
        sex=sex if sex in ("M", "F", "O") else "",
        age_band=age_band(age),
        study_date=study_date.isoformat() if study_date else "",
        site=f"site-{keyed_hex(secret, 'site', institution)[:8]}" if institution else "",
        manufacturer=" ".join(str(src.get("Manufacturer", "") or "").split()),
        rows=int(src.get("Rows", 0) or 0),
        columns=int(src.get("Columns", 0) or 0),
        bits_stored=int(src.get("BitsStored", 0) or 0),
        photometric=str(src.get("PhotometricInterpretation", "") or "").strip().upper(),
        transfer_syntax=str(src.file_meta.get("TransferSyntaxUID", "")),
        pixel_spacing_mm=pixel_spacing_mm(src),
    )
