from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Diagnosis(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIAGNOSIS_UNSPECIFIED: _ClassVar[Diagnosis]
    DIAGNOSIS_NORMAL: _ClassVar[Diagnosis]
    DIAGNOSIS_COVID19: _ClassVar[Diagnosis]
    DIAGNOSIS_OTHER_PNEUMONIA: _ClassVar[Diagnosis]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_NOT_INTUBATED: _ClassVar[Outcome]
    OUTCOME_INTUBATED_72H: _ClassVar[Outcome]
DIAGNOSIS_UNSPECIFIED: Diagnosis
DIAGNOSIS_NORMAL: Diagnosis
DIAGNOSIS_COVID19: Diagnosis
DIAGNOSIS_OTHER_PNEUMONIA: Diagnosis
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_NOT_INTUBATED: Outcome
OUTCOME_INTUBATED_72H: Outcome

class StudyMetadata(_message.Message):
    __slots__ = ("modality", "view_position", "sex", "age_band", "study_date", "site", "manufacturer", "rows", "columns", "bits_stored", "photometric", "transfer_syntax", "pixel_spacing_mm")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    VIEW_POSITION_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    AGE_BAND_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    BITS_STORED_FIELD_NUMBER: _ClassVar[int]
    PHOTOMETRIC_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SYNTAX_FIELD_NUMBER: _ClassVar[int]
    PIXEL_SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    modality: str
    view_position: str
    sex: str
    age_band: str
    study_date: str
    site: str
    manufacturer: str
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    transfer_syntax: str
    pixel_spacing_mm: float
    def __init__(self, modality: _Optional[str] = ..., view_position: _Optional[str] = ..., sex: _Optional[str] = ..., age_band: _Optional[str] = ..., study_date: _Optional[str] = ..., site: _Optional[str] = ..., manufacturer: _Optional[str] = ..., rows: _Optional[int] = ..., columns: _Optional[int] = ..., bits_stored: _Optional[int] = ..., photometric: _Optional[str] = ..., transfer_syntax: _Optional[str] = ..., pixel_spacing_mm: _Optional[float] = ...) -> None: ...

class ClinicalData(_message.Message):
    __slots__ = ("age", "sex_male", "spo2_pct", "resp_rate_per_min", "heart_rate_bpm", "temperature_c", "crp_mg_l", "lymphocytes_1e9_l", "d_dimer_mg_l_feu", "ldh_u_l", "comorbidity_count", "days_since_onset")
    AGE_FIELD_NUMBER: _ClassVar[int]
    SEX_MALE_FIELD_NUMBER: _ClassVar[int]
    SPO2_PCT_FIELD_NUMBER: _ClassVar[int]
    RESP_RATE_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    HEART_RATE_BPM_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    CRP_MG_L_FIELD_NUMBER: _ClassVar[int]
    LYMPHOCYTES_1E9_L_FIELD_NUMBER: _ClassVar[int]
    D_DIMER_MG_L_FEU_FIELD_NUMBER: _ClassVar[int]
    LDH_U_L_FIELD_NUMBER: _ClassVar[int]
    COMORBIDITY_COUNT_FIELD_NUMBER: _ClassVar[int]
    DAYS_SINCE_ONSET_FIELD_NUMBER: _ClassVar[int]
    age: float
    sex_male: bool
    spo2_pct: float
    resp_rate_per_min: float
    heart_rate_bpm: float
    temperature_c: float
    crp_mg_l: float
    lymphocytes_1e9_l: float
    d_dimer_mg_l_feu: float
    ldh_u_l: float
    comorbidity_count: int
    days_since_onset: float
    def __init__(self, age: _Optional[float] = ..., sex_male: _Optional[bool] = ..., spo2_pct: _Optional[float] = ..., resp_rate_per_min: _Optional[float] = ..., heart_rate_bpm: _Optional[float] = ..., temperature_c: _Optional[float] = ..., crp_mg_l: _Optional[float] = ..., lymphocytes_1e9_l: _Optional[float] = ..., d_dimer_mg_l_feu: _Optional[float] = ..., ldh_u_l: _Optional[float] = ..., comorbidity_count: _Optional[int] = ..., days_since_onset: _Optional[float] = ...) -> None: ...

class KnownLabels(_message.Message):
    __slots__ = ("diagnosis", "outcome")
    DIAGNOSIS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    diagnosis: Diagnosis
    outcome: Outcome
    def __init__(self, diagnosis: _Optional[_Union[Diagnosis, str]] = ..., outcome: _Optional[_Union[Outcome, str]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("uri", "sha256", "size_bytes", "media_type")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    size_bytes: int
    media_type: str
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...
