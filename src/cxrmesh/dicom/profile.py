"""The de-identification profile: DICOM PS3.15 Annex E, Table E.1-1, written out as data.

Basic Application Level Confidentiality Profile with the Retain Longitudinal Temporal Information
with Modified Dates option and the Retain Patient Characteristics option: which action each named
attribute gets, and the fail-safe rule by value representation for attributes the table does not
name. Applying it is ``deid`` (docs/deidentification.md compares it with dicognito and deid).
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from pydicom.dataelem import DataElement
from pydicom.uid import UID


class Action(Enum):
    """What happens to an attribute (PS3.15 Table E.1-1 action codes, after the options)."""

    REMOVE = "X"
    EMPTY = "Z"  # zero-length value (Type 2 attributes the CR/DX IODs require)
    PSEUDONYM = "D"  # replaced by the keyed patient pseudonym
    UID = "U"  # replaced by a keyed 2.25 UID
    SHIFT = "C"  # date/datetime moved by the patient's keyed offset (Modified Dates option)
    KEEP = "K"  # kept (sequences are still cleaned item by item)
    AGE = "K*"  # Patient Characteristics option: kept, capped at 90 years


def keywords(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# PS3.15 Table E.1-1 rows that can occur in a radiograph, with the options applied. Where the
# table allows X/Z/D we pick X unless the CR/DX IOD makes the attribute Type 2 (then Z).
REMOVE = keywords(
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
EMPTY = keywords(
    """
    AccessionNumber ReferringPhysicianName StudyID PatientBirthDate ContentCreatorName
    AcquisitionContextSequence
    """
)
# Retain Patient Characteristics option (sex, age, size, weight and two clinical states).
KEEP = keywords(
    """
    PatientSex PatientSize PatientWeight PregnancyStatus SmokingStatus
    SOPClassUID ReferencedSOPClassUID MediaStorageSOPClassUID TransferSyntaxUID
    ContextGroupVersion ContextGroupLocalVersion CodingSchemeVersion
    """
)
ACTIONS: Final[dict[str, Action]] = {
    **{k: Action.REMOVE for k in REMOVE},
    **{k: Action.EMPTY for k in EMPTY},
    **{k: Action.KEEP for k in KEEP},
    "PatientName": Action.PSEUDONYM,
    "PatientID": Action.PSEUDONYM,
    "PatientAge": Action.AGE,
}

# Free text and binary values not in the table are removed unless known to describe the
# equipment or the pixel encoding rather than a person (fail safe against vendor free text).
SAFE_TEXT: Final[frozenset[str]] = frozenset(
    keywords(
        """
        Manufacturer ManufacturerModelName DetectorManufacturerName DetectorManufacturerModelName
        RescaleType WindowCenterWidthExplanation LUTExplanation PixelSpacingCalibrationDescription
        CodeValue CodingSchemeDesignator CodeMeaning LongCodeValue URNCodeValue MappingResourceName
        CodingSchemeName FilterType PlateType PhosphorType
        """
    )
)
SAFE_BINARY: Final[frozenset[str]] = frozenset({"PixelData", "LUTData"})
TEXT_VRS = frozenset({"AE", "LO", "LT", "SH", "ST", "UT", "UC", "UR"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "OB or OW", "US or OW"})
STANDARD_UID_ROOT = "1.2.840.10008."


def is_standard_uid(value: str) -> bool:
    """Registered DICOM UIDs (SOP classes, transfer syntaxes, context groups) identify no-one."""
    return value.startswith(STANDARD_UID_ROOT) or bool(UID(value).keyword)


def default_action(elem: DataElement) -> Action:
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
    if vr in TEXT_VRS:
        return Action.KEEP if elem.keyword in SAFE_TEXT else Action.REMOVE
    if vr in BINARY_VRS:
        return Action.KEEP if elem.keyword in SAFE_BINARY else Action.REMOVE
    return Action.KEEP  # CS, AS, AT, TM and numbers: codes, times of day and measurements
