"""The PHI inventory of a raw dataset: every identifying string it holds.

Used by the tests (and the end-to-end test) to prove that nothing identifying survives
de-identification, in the header, the pixel bytes or the metadata that travels on.
"""

from __future__ import annotations

from typing import Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cxrmesh.dicom.profile import BINARY_VRS, KEEP, is_standard_uid, keywords

IDENTIFYING_KEYWORDS: Final[frozenset[str]] = frozenset(
    keywords(
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
        return not is_standard_uid(value) and elem.keyword != "ImplementationClassUID"
    if elem.VR in ("DA", "DT"):
        return elem.keyword not in KEEP
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
            if elem.value is None or elem.value == "" or elem.VR in BINARY_VRS or elem.VR == "UN":
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
