import datetime

from cxrmesh.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StudyIngested(_message.Message):
    __slots__ = ("study_key", "patient_key", "metadata", "deidentified_dicom", "display_image", "clinical", "labels", "ingested_at", "deidentified_study_uid", "deidentified_sop_uid")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    PATIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DEIDENTIFIED_DICOM_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    CLINICAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    DEIDENTIFIED_STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    DEIDENTIFIED_SOP_UID_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    patient_key: str
    metadata: _common_pb2.StudyMetadata
    deidentified_dicom: _common_pb2.BlobRef
    display_image: _common_pb2.BlobRef
    clinical: _common_pb2.ClinicalData
    labels: _common_pb2.KnownLabels
    ingested_at: _timestamp_pb2.Timestamp
    deidentified_study_uid: str
    deidentified_sop_uid: str
    def __init__(self, study_key: _Optional[str] = ..., patient_key: _Optional[str] = ..., metadata: _Optional[_Union[_common_pb2.StudyMetadata, _Mapping]] = ..., deidentified_dicom: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., display_image: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., clinical: _Optional[_Union[_common_pb2.ClinicalData, _Mapping]] = ..., labels: _Optional[_Union[_common_pb2.KnownLabels, _Mapping]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deidentified_study_uid: _Optional[str] = ..., deidentified_sop_uid: _Optional[str] = ...) -> None: ...

class ClinicalUpdated(_message.Message):
    __slots__ = ("study_key", "clinical", "labels", "updated_at")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    CLINICAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    clinical: _common_pb2.ClinicalData
    labels: _common_pb2.KnownLabels
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, study_key: _Optional[str] = ..., clinical: _Optional[_Union[_common_pb2.ClinicalData, _Mapping]] = ..., labels: _Optional[_Union[_common_pb2.KnownLabels, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StudyEmbedded(_message.Message):
    __slots__ = ("study_key", "patient_key", "embedding", "model", "attention_map", "metadata", "labels", "embedded_at", "clinical", "ingested_at")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    PATIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MAP_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_AT_FIELD_NUMBER: _ClassVar[int]
    CLINICAL_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    patient_key: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    model: _common_pb2.ModelVersion
    attention_map: _common_pb2.BlobRef
    metadata: _common_pb2.StudyMetadata
    labels: _common_pb2.KnownLabels
    embedded_at: _timestamp_pb2.Timestamp
    clinical: _common_pb2.ClinicalData
    ingested_at: _timestamp_pb2.Timestamp
    def __init__(self, study_key: _Optional[str] = ..., patient_key: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., model: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., attention_map: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., metadata: _Optional[_Union[_common_pb2.StudyMetadata, _Mapping]] = ..., labels: _Optional[_Union[_common_pb2.KnownLabels, _Mapping]] = ..., embedded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., clinical: _Optional[_Union[_common_pb2.ClinicalData, _Mapping]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("source_topic", "source_partition", "source_offset", "key", "payload", "service", "consumer_group", "reason", "error_type", "attempts", "failed_at")
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    source_topic: str
    source_partition: int
    source_offset: int
    key: str
    payload: bytes
    service: str
    consumer_group: str
    reason: str
    error_type: str
    attempts: int
    failed_at: _timestamp_pb2.Timestamp
    def __init__(self, source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., key: _Optional[str] = ..., payload: _Optional[bytes] = ..., service: _Optional[str] = ..., consumer_group: _Optional[str] = ..., reason: _Optional[str] = ..., error_type: _Optional[str] = ..., attempts: _Optional[int] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StudySegmented(_message.Message):
    __slots__ = ("study_key", "patient_key", "lungs", "probabilities", "member_agreement", "model", "display_image", "deidentified_dicom", "metadata", "ingested_at")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    PATIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    LUNGS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    MEMBER_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    DEIDENTIFIED_DICOM_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    patient_key: str
    lungs: _common_pb2.BlobRef
    probabilities: _common_pb2.BlobRef
    member_agreement: float
    model: _common_pb2.ModelVersion
    display_image: _common_pb2.BlobRef
    deidentified_dicom: _common_pb2.BlobRef
    metadata: _common_pb2.StudyMetadata
    ingested_at: _timestamp_pb2.Timestamp
    def __init__(self, study_key: _Optional[str] = ..., patient_key: _Optional[str] = ..., lungs: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., probabilities: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., member_agreement: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., display_image: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., deidentified_dicom: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., metadata: _Optional[_Union[_common_pb2.StudyMetadata, _Mapping]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegionMeasurement(_message.Message):
    __slots__ = ("region", "area_fraction", "mean_intensity", "opacity_fraction", "pixels", "rale_extent", "rale_density", "rale_score")
    REGION_FIELD_NUMBER: _ClassVar[int]
    AREA_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MEAN_INTENSITY_FIELD_NUMBER: _ClassVar[int]
    OPACITY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    RALE_EXTENT_FIELD_NUMBER: _ClassVar[int]
    RALE_DENSITY_FIELD_NUMBER: _ClassVar[int]
    RALE_SCORE_FIELD_NUMBER: _ClassVar[int]
    region: str
    area_fraction: float
    mean_intensity: float
    opacity_fraction: float
    pixels: int
    rale_extent: int
    rale_density: int
    rale_score: int
    def __init__(self, region: _Optional[str] = ..., area_fraction: _Optional[float] = ..., mean_intensity: _Optional[float] = ..., opacity_fraction: _Optional[float] = ..., pixels: _Optional[int] = ..., rale_extent: _Optional[int] = ..., rale_density: _Optional[int] = ..., rale_score: _Optional[int] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Landmark(_message.Message):
    __slots__ = ("name", "model", "source", "confidence", "estimated", "detector_score")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_SCORE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: Point
    source: Point
    confidence: float
    estimated: bool
    detector_score: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[Point, _Mapping]] = ..., source: _Optional[_Union[Point, _Mapping]] = ..., confidence: _Optional[float] = ..., estimated: _Optional[bool] = ..., detector_score: _Optional[float] = ...) -> None: ...

class QualityGate(_message.Message):
    __slots__ = ("verdict", "reasons", "chest_score")
    class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VERDICT_UNSPECIFIED: _ClassVar[QualityGate.Verdict]
        VERDICT_PASS: _ClassVar[QualityGate.Verdict]
        VERDICT_FLAGGED: _ClassVar[QualityGate.Verdict]
        VERDICT_REFUSED: _ClassVar[QualityGate.Verdict]
    VERDICT_UNSPECIFIED: QualityGate.Verdict
    VERDICT_PASS: QualityGate.Verdict
    VERDICT_FLAGGED: QualityGate.Verdict
    VERDICT_REFUSED: QualityGate.Verdict
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    CHEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    verdict: QualityGate.Verdict
    reasons: _containers.RepeatedScalarFieldContainer[str]
    chest_score: float
    def __init__(self, verdict: _Optional[_Union[QualityGate.Verdict, str]] = ..., reasons: _Optional[_Iterable[str]] = ..., chest_score: _Optional[float] = ...) -> None: ...

class StudyQuantified(_message.Message):
    __slots__ = ("study_key", "patient_key", "landmarks", "regions", "rale_total", "region_map", "warnings", "model", "dicom_seg", "dicom_sr", "ingested_at", "quality", "landmarks_estimated")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    PATIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    RALE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REGION_MAP_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DICOM_SEG_FIELD_NUMBER: _ClassVar[int]
    DICOM_SR_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    patient_key: str
    landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    regions: _containers.RepeatedCompositeFieldContainer[RegionMeasurement]
    rale_total: int
    region_map: _common_pb2.BlobRef
    warnings: _containers.RepeatedScalarFieldContainer[str]
    model: _common_pb2.ModelVersion
    dicom_seg: _common_pb2.BlobRef
    dicom_sr: _common_pb2.BlobRef
    ingested_at: _timestamp_pb2.Timestamp
    quality: QualityGate
    landmarks_estimated: bool
    def __init__(self, study_key: _Optional[str] = ..., patient_key: _Optional[str] = ..., landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., regions: _Optional[_Iterable[_Union[RegionMeasurement, _Mapping]]] = ..., rale_total: _Optional[int] = ..., region_map: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., model: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., dicom_seg: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., dicom_sr: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quality: _Optional[_Union[QualityGate, _Mapping]] = ..., landmarks_estimated: _Optional[bool] = ...) -> None: ...

class PrognosisResult(_message.Message):
    __slots__ = ("study_key", "status", "probability_intubation_72h", "model", "missing_clinical", "neighbours_with_outcome", "neighbours_intubated", "ingested_at")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[PrognosisResult.Status]
        STATUS_DONE: _ClassVar[PrognosisResult.Status]
        STATUS_NO_CLINICAL_DATA: _ClassVar[PrognosisResult.Status]
        STATUS_IMAGE_REFUSED: _ClassVar[PrognosisResult.Status]
    STATUS_UNSPECIFIED: PrognosisResult.Status
    STATUS_DONE: PrognosisResult.Status
    STATUS_NO_CLINICAL_DATA: PrognosisResult.Status
    STATUS_IMAGE_REFUSED: PrognosisResult.Status
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_INTUBATION_72H_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MISSING_CLINICAL_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_WITH_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_INTUBATED_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    status: PrognosisResult.Status
    probability_intubation_72h: float
    model: _common_pb2.ModelVersion
    missing_clinical: _containers.RepeatedScalarFieldContainer[str]
    neighbours_with_outcome: int
    neighbours_intubated: int
    ingested_at: _timestamp_pb2.Timestamp
    def __init__(self, study_key: _Optional[str] = ..., status: _Optional[_Union[PrognosisResult.Status, str]] = ..., probability_intubation_72h: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., missing_clinical: _Optional[_Iterable[str]] = ..., neighbours_with_outcome: _Optional[int] = ..., neighbours_intubated: _Optional[int] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time", "caller", "roles", "token_subject", "server", "grpc_service", "method", "study_key", "outcome", "reason")
    TIME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    GRPC_SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    caller: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    token_subject: str
    server: str
    grpc_service: str
    method: str
    study_key: str
    outcome: str
    reason: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., token_subject: _Optional[str] = ..., server: _Optional[str] = ..., grpc_service: _Optional[str] = ..., method: _Optional[str] = ..., study_key: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
