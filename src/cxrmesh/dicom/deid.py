"""De-identification of an admitted radiograph (DICOM PS3.15 Annex E), and the non-PHI facts
about it that may travel on Kafka and into Milvus.

Profile: Basic Application Level Confidentiality Profile with the Retain Longitudinal Temporal
Information with Modified Dates option and the Retain Patient Characteristics option. Everything
that replaces an identifier is keyed with the service secret (HMAC-SHA256), so ingesting the same
file twice gives byte-identical output (idempotent ingestion) and a patient's studies stay
linked, while nobody without the secret can recompute a pseudonym from a known MRN or UID.

The action table is written out here (see docs/deidentification.md for why no library is used).
Attributes the table does not name fall to rules by value representation that fail safe: any
person name, unknown free text, unknown binary, UN value, private, overlay or curve element is
removed; every non-standard UID is replaced; every date is shifted.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from cxrmesh.dicom.normalise import pixel_spacing_mm

DEID_VERSION: Final[str] = "1"
MIN_SECRET_BYTES: Final[int] = 16
KEY_HEX_CHARS: Final[int] = 32  # 128-bit pseudonyms
AGE_CAP_YEARS: Final[int] = 90  # HIPAA Safe Harbor: ages over 89 are aggregated as "90 or older"
# Date shift: whole weeks (keeps the weekday, which matters for workload and admission patterns)
# between 52 and 521 weeks (~1-10 years) into the past, keyed per patient.
_SHIFT_MIN_WEEKS: Final[int] = 52
_SHIFT_SPAN_WEEKS: Final[int] = 470


class Action(Enum):
    """What happens to an attribute (PS3.15 Table E.1-1 action codes, after the options)."""

    REMOVE = "X"
    EMPTY = "Z"  # zero-length value (Type 2 attributes the CR/DX IODs require)
    PSEUDONYM = "D"  # replaced by the keyed patient pseudonym
    UID = "U"  # replaced by a keyed 2.25 UID
    SHIFT = "C"  # date/datetime moved by the patient's keyed offset (Modified Dates option)
    KEEP = "K"  # kept (sequences are still cleaned item by item)
    AGE = "K*"  # Patient Characteristics option: kept, capped at 90 years


def _keywords(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# PS3.15 Table E.1-1 rows that can occur in a radiograph, with the options applied. Where the
# table allows X/Z/D we pick X unless the CR/DX IOD makes the attribute Type 2 (then Z).
_REMOVE = _keywords(
    """
    IssuerOfPatientID IssuerOfPatientIDQualifiersSequence TypeOfPatientID PatientBirthTime
    PatientBirthName PatientBirthDateInAlternativeCalendar PatientDeathDateInAlternativeCalendar
    PatientAlternativeCalendar OtherPatientIDs OtherPatientNames OtherPatientIDsSequence
    PatientAddress PatientTelephoneNumbers PatientTelecomInformation PatientMotherBirthName
    MilitaryRank BranchOfService MedicalRecordLocator PatientInsurancePlanCodeSequence
    PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence
    PatientReligiousPreference PatientComments ReferencedPatientSequence
    ReferencedPatientPhotoSequence ReferencedPatientAliasSequence ResponsiblePerson
    ResponsiblePersonRole ResponsibleOrganization PatientState MedicalAlerts Allergies SpecialNeeds
    AdditionalPatientHistory LastMenstrualDate CountryOfResidence RegionOfResidence Occupation
    EthnicGroup PatientTransportArrangements ConfidentialityConstraintOnPatientDataDescription
    PatientSpeciesDescription PatientBreedDescription BreedRegistrationSequence

    StudyDescription SeriesDescription ProtocolName ImageComments FrameComments AcquisitionComments
    DerivationDescription AcquisitionDeviceProcessingDescription AcquisitionDeviceProcessingCode
    StudyComments TextComments TextString ProcedureCodeSequence PerformedProtocolCodeSequence
    RequestedProcedureDescription RequestedProcedureComments RequestedProcedureID
    RequestedProcedureLocation RequestedProcedureCodeSequence ReasonForTheRequestedProcedure
    ReasonForStudy RequestingPhysician RequestingService RequestAttributesSequence
    ImagingServiceRequestComments PlacerOrderNumberImagingServiceRequest
    FillerOrderNumberImagingServiceRequest OrderEnteredBy OrderEntererLocation
    OrderCallbackPhoneNumber OrderCallbackTelecomInformation ReferencedStudySequence
    ReferencedPerformedProcedureStepSequence ReferencedImageSequence SourceImageSequence
    ReferencedSeriesSequence ReferencedInstanceSequence AdmissionID IssuerOfAdmissionIDSequence
    AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence RouteOfAdmissions
    DischargeDiagnosisDescription ServiceEpisodeID ServiceEpisodeDescription
    IssuerOfServiceEpisodeIDSequence CurrentPatientLocation PatientInstitutionResidence
    VisitComments ScheduledPatientInstitutionResidence ScheduledProcedureStepDescription
    ScheduledProcedureStepID ScheduledProcedureStepLocation ScheduledStationName
    ScheduledStationAETitle ScheduledPerformingPhysicianName
    ScheduledPerformingPhysicianIdentificationSequence ScheduledStationNameCodeSequence
    ScheduledStationGeographicLocationCodeSequence PerformedProcedureStepDescription
    PerformedProcedureStepID PerformedStationName PerformedStationAETitle PerformedLocation
    PerformedStationNameCodeSequence PerformedStationGeographicLocationCodeSequence
    CommentsOnThePerformedProcedureStep InterpretationRecorder InterpretationTranscriber
    InterpretationText InterpretationAuthor InterpretationApproverSequence
    PhysicianApprovingInterpretation InterpretationDiagnosisDescription ResultsIDIssuer ResultsID
    ResultsComments

    PerformingPhysicianName PerformingPhysicianIdentificationSequence OperatorsName
    OperatorIdentificationSequence NameOfPhysiciansReadingStudy
    PhysiciansReadingStudyIdentificationSequence PhysiciansOfRecord
    PhysiciansOfRecordIdentificationSequence ReferringPhysicianAddress
    ReferringPhysicianTelephoneNumbers ReferringPhysicianIdentificationSequence
    ConsultingPhysicianName ConsultingPhysicianIdentificationSequence ReviewerName PersonName
    PersonAddress PersonTelephoneNumbers PersonTelecomInformation PersonIdentificationCodeSequence
    VerifyingOrganization VerifyingObserverName VerifyingObserverSequence AuthorObserverSequence
    ParticipantSequence CustodialOrganizationSequence HumanPerformerName
    HumanPerformerOrganization ContentCreatorIdentificationCodeSequence

    InstitutionName InstitutionAddress InstitutionCodeSequence InstitutionalDepartmentName
    InstitutionalDepartmentTypeCodeSequence StationName DeviceSerialNumber DeviceDescription
    DetectorID DetectorDescription GantryID PlateID CassetteID SoftwareVersions ModifyingDeviceID
    ModifyingDeviceManufacturer SourceSerialNumber GeneratorID UDISequence
    ManufacturerDeviceIdentifier DeviceLabel

    OriginalAttributesSequence ModifiedAttributesSequence ContributingEquipmentSequence
    DigitalSignaturesSequence MACParametersSequence EncryptedAttributesSequence
    ReferencedDigitalSignatureSequence ReferencedSOPInstanceMACSequence IconImageSequence
    ContentSequence GraphicAnnotationSequence TimezoneOffsetFromUTC StorageMediaFileSetID
    DistributionName DistributionAddress DataSetTrailingPadding PixelDataProviderURL
    ConsentForClinicalTrialUseSequence ClinicalTrialSponsorName ClinicalTrialProtocolID
    ClinicalTrialProtocolName ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialSubjectID
    ClinicalTrialSubjectReadingID ClinicalTrialTimePointID ClinicalTrialTimePointDescription
    ClinicalTrialCoordinatingCenterName ClinicalTrialProtocolEthicsCommitteeName
    ClinicalTrialProtocolEthicsCommitteeApprovalNumber ClinicalTrialSeriesID
    ClinicalTrialSeriesDescription

    PatientIdentityRemoved DeidentificationMethod DeidentificationMethodCodeSequence
    LongitudinalTemporalInformationModified
    """
)
# Type 2 in the CR/DX IODs: present but empty.
_EMPTY = _keywords(
    """
    AccessionNumber ReferringPhysicianName StudyID PatientBirthDate ContentCreatorName
    AcquisitionContextSequence
    """
)
# Retain Patient Characteristics option (sex, age, size, weight and two clinical states).
_KEEP = _keywords(
    """
    PatientSex PatientSize PatientWeight PregnancyStatus SmokingStatus
    SOPClassUID ReferencedSOPClassUID MediaStorageSOPClassUID TransferSyntaxUID
    ContextGroupVersion ContextGroupLocalVersion CodingSchemeVersion
    """
)
ACTIONS: Final[dict[str, Action]] = {
    **{k: Action.REMOVE for k in _REMOVE},
    **{k: Action.EMPTY for k in _EMPTY},
    **{k: Action.KEEP for k in _KEEP},
    "PatientName": Action.PSEUDONYM,
    "PatientID": Action.PSEUDONYM,
    "PatientAge": Action.AGE,
}

# Free text and binary values not in the table are removed unless known to describe the
# equipment or the pixel encoding rather than a person (fail safe against vendor free text).
SAFE_TEXT: Final[frozenset[str]] = frozenset(
    _keywords(
        """
        Manufacturer ManufacturerModelName DetectorManufacturerName DetectorManufacturerModelName
        RescaleType WindowCenterWidthExplanation LUTExplanation PixelSpacingCalibrationDescription
        CodeValue CodingSchemeDesignator CodeMeaning LongCodeValue URNCodeValue MappingResourceName
        CodingSchemeName FilterType PlateType PhosphorType
        """
    )
)
SAFE_BINARY: Final[frozenset[str]] = frozenset({"PixelData", "LUTData"})
_TEXT_VRS = frozenset({"AE", "LO", "LT", "SH", "ST", "UT", "UC", "UR"})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "OB or OW", "US or OW"})
_STANDARD_UID_ROOT = "1.2.840.10008."


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


# ---------------------------------------------------------------------------------------------
# keyed pseudonyms


def keyed_digest(secret: bytes, domain: str, *parts: str) -> bytes:
    """HMAC-SHA256 over a domain tag and length-prefixed parts (so ("ab","c") != ("a","bc"))."""
    msg = bytearray()
    for part in (domain, *parts):
        b = part.encode("utf-8")
        msg += len(b).to_bytes(8, "big") + b
    return hmac.new(secret, bytes(msg), hashlib.sha256).digest()


def keyed_hex(secret: bytes, domain: str, *parts: str) -> str:
    return keyed_digest(secret, domain, *parts).hex()[:KEY_HEX_CHARS]


def keyed_uid(secret: bytes, uid: str) -> str:
    """A '2.25.' UID from the keyed hash of `uid`, stamped as an RFC 9562 version-8 UUID."""
    raw = bytearray(keyed_digest(secret, "uid", str(uid).strip())[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return f"2.25.{int.from_bytes(raw, 'big')}"


def _patient_identity(ds: Dataset) -> tuple[str, str]:
    """(issuer, patient id); without a Patient ID each study counts as its own patient."""
    pid = str(ds.get("PatientID", "") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    if not pid:
        return "no-patient-id", str(ds.get("StudyInstanceUID", "")).strip()
    return issuer, pid


def _date_offset(secret: bytes, identity: tuple[str, str]) -> timedelta:
    h = int.from_bytes(keyed_digest(secret, "date-shift", *identity)[:8], "big")
    return -timedelta(weeks=_SHIFT_MIN_WEEKS + h % _SHIFT_SPAN_WEEKS)


# ---------------------------------------------------------------------------------------------
# dates and ages


def _shift_da(value: str, offset: timedelta) -> str:
    """Shift a DA value ("YYYYMMDD", also the old "YYYY.MM.DD"); '' if it is not a full date."""
    v = value.strip().replace(".", "")
    try:
        return (datetime.strptime(v, "%Y%m%d") + offset).strftime("%Y%m%d")
    except ValueError:
        return ""


def _shift_dt(value: str, offset: timedelta) -> str:
    """Shift the date part of a DT value and drop its UTC offset (which hints at location)."""
    v = value.strip()
    for sign in "+-":
        cut = v.find(sign, 4)
        if cut >= 0:
            v = v[:cut]
    if len(v) < 8:
        return ""
    day = _shift_da(v[:8], offset)
    return day + v[8:] if day else ""


def _map_values(elem: DataElement, fn) -> None:
    """Apply fn to each value of a possibly multi-valued string element; drop emptied values."""
    if elem.value is None or elem.value == "":
        return
    if isinstance(elem.value, (MultiValue, list, tuple)):
        out = [fn(str(v)) for v in elem.value]
        out = [v for v in out if v]
        elem.value = out if out else ""
    else:
        elem.value = fn(str(elem.value))


def _age_years(value: str) -> float | None:
    v = str(value).strip().upper()
    if len(v) != 4 or not v[:3].isdigit() or v[3] not in "DWMY":
        return None
    per_year = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[v[3]]
    return int(v[:3]) / per_year


def _age_string(years: float) -> str:
    if years >= AGE_CAP_YEARS:
        return f"{AGE_CAP_YEARS:03d}Y"
    if years >= 2:
        return f"{math.floor(years):03d}Y"
    return f"{min(math.floor(years * 12), 999):03d}M"


def _age_band(years: float | None) -> str:
    if years is None or years < 0:
        return ""
    if years >= AGE_CAP_YEARS:
        return f"{AGE_CAP_YEARS}+"
    lo = int(years // 10) * 10
    return f"{lo}-{lo + 9}"


def _parse_da(value: object) -> date | None:
    try:
        return datetime.strptime(str(value).strip().replace(".", ""), "%Y%m%d").date()
    except ValueError:
        return None


def _source_age(ds: Dataset) -> float | None:
    """Age in years from PatientAge, else from birth date and study (or content) date."""
    years = _age_years(ds.get("PatientAge", "") or "")
    if years is not None:
        return years
    born = _parse_da(ds.get("PatientBirthDate", ""))
    seen = next(
        (
            d
            for k in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
            if (d := _parse_da(ds.get(k, "")))
        ),
        None,
    )
    if born is None or seen is None or seen < born:
        return None
    return (seen - born).days / 365.25


# ---------------------------------------------------------------------------------------------
# the walk


@dataclass(frozen=True)
class _Context:
    secret: bytes
    offset: timedelta
    patient_key: str


def _is_standard_uid(value: str) -> bool:
    """Registered DICOM UIDs (SOP classes, transfer syntaxes, context groups) identify no-one."""
    return value.startswith(_STANDARD_UID_ROOT) or bool(UID(value).keyword)


def _default_action(elem: DataElement) -> Action:
    """The rule for an attribute Table E.1-1 does not name, by value representation."""
    vr = elem.VR
    if vr == "SQ":
        return Action.KEEP
    if vr == "UI":
        return Action.UID
    if vr in ("DA", "DT"):
        return Action.SHIFT
    if vr in ("PN", "UN"):
        return Action.REMOVE
    if vr in _TEXT_VRS:
        return Action.KEEP if elem.keyword in SAFE_TEXT else Action.REMOVE
    if vr in _BINARY_VRS:
        return Action.KEEP if elem.keyword in SAFE_BINARY else Action.REMOVE
    return Action.KEEP  # CS, AS, AT, TM and numbers: codes, times of day and measurements


def _clean(ds: Dataset, ctx: _Context) -> None:
    """De-identify `ds` in place (it is already a private copy), recursing into sequences."""
    for elem in list(ds):
        tag = elem.tag
        if tag.is_private or tag.element == 0x0000 or (tag.group & 0xFF00) in (0x5000, 0x6000):
            del ds[tag]  # private, group length, curve and overlay elements
            continue
        action = ACTIONS.get(elem.keyword) or _default_action(elem)
        if action is Action.REMOVE:
            del ds[tag]
        elif action is Action.EMPTY:
            elem.value = Sequence() if elem.VR == "SQ" else ""
        elif action is Action.PSEUDONYM:
            elem.value = ctx.patient_key
        elif action is Action.UID:
            _map_values(elem, lambda v: v if _is_standard_uid(v) else keyed_uid(ctx.secret, v))
        elif action is Action.SHIFT:
            shift = _shift_da if elem.VR == "DA" else _shift_dt
            _map_values(elem, lambda v, f=shift: f(v, ctx.offset))
        elif action is Action.AGE:
            years = _age_years(elem.value or "")
            elem.value = _age_string(years) if years is not None else ""
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
    identity = _patient_identity(ds)
    patient_key = keyed_hex(secret, "patient", *identity)
    study_key = keyed_hex(secret, "study", study_uid, sop_uid)
    ctx = _Context(secret=secret, offset=_date_offset(secret, identity), patient_key=patient_key)
    age = _source_age(ds)

    # A fresh Dataset of copied elements: a FileDataset copy would carry the raw file buffer
    # (PHI included) and the source filename along.
    out = Dataset()
    for elem in ds:
        out.add(copy.deepcopy(elem))
    _clean(out, ctx)

    out.PatientName = patient_key
    out.PatientID = patient_key
    if age is not None:
        out.PatientAge = _age_string(age)
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
            if (d := _parse_da(out.get(k, "")))
        ),
        None,
    )
    return StudyMetadata(
        modality=str(src.get("Modality", "") or "").strip().upper(),
        view_position=str(src.get("ViewPosition", "") or "").strip().upper(),
        sex=sex if sex in ("M", "F", "O") else "",
        age_band=_age_band(age),
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


# ---------------------------------------------------------------------------------------------
# PHI inventory (used by tests to prove nothing leaks)

IDENTIFYING_KEYWORDS: Final[frozenset[str]] = frozenset(
    _keywords(
        """
        PatientID OtherPatientIDs IssuerOfPatientID MedicalRecordLocator AccessionNumber StudyID
        InstitutionName InstitutionAddress InstitutionalDepartmentName StationName DeviceSerialNumber
        PatientAddress PatientTelephoneNumbers PatientTelecomInformation RequestedProcedureID
        AdmissionID PlacerOrderNumberImagingServiceRequest FillerOrderNumberImagingServiceRequest
        PerformedProcedureStepID ScheduledProcedureStepID DetectorID PlateID CassetteID GantryID
        ClinicalTrialSubjectID ClinicalTrialSubjectReadingID ServiceEpisodeID ResultsID
        PatientComments AdditionalPatientHistory PersonAddress PersonTelephoneNumbers
        ReferringPhysicianAddress ReferringPhysicianTelephoneNumbers
        """
    )
)


def _identifying(elem: DataElement, value: str) -> bool:
    """A non-PN value that identifies: an instance UID, a date, or an identifying attribute."""
    if elem.VR == "UI":
        return not _is_standard_uid(value) and elem.keyword != "ImplementationClassUID"
    if elem.VR in ("DA", "DT"):
        return elem.keyword not in _KEEP
    return elem.keyword in IDENTIFYING_KEYWORDS


def phi_strings(ds: Dataset) -> set[str]:
    """The identifying strings of a raw dataset: every person name (and its name components),
    the values of identifying attributes (IDs, institution, station, accession...), every
    non-standard UID and every date, anywhere in the data set or its file meta header (except
    the Implementation Class UID, which names the writing software and is replaced anyway)."""
    found: set[str] = set()

    def add(value: object) -> None:
        s = str(value).strip()
        if s:
            found.add(s)

    def visit(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    visit(item)
                continue
            if elem.value is None or elem.value == "" or elem.VR in _BINARY_VRS or elem.VR == "UN":
                continue
            values = elem.value if isinstance(elem.value, (MultiValue, list, tuple)) else [elem.value]
            for v in values:
                if elem.VR == "PN":
                    add(v)
                    for group in str(v).split("="):
                        for part in group.split("^"):
                            if len(part.strip()) > 1:  # a lone middle initial identifies no-one
                                add(part)
                elif _identifying(elem, str(v)):
                    add(v)

    visit(ds)
    if getattr(ds, "file_meta", None) is not None:
        visit(ds.file_meta)
    return found
