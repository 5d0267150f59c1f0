from cxrmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaseFilter(_message.Message):
    __slots__ = ("sites", "diagnoses", "sexes", "age_bands", "labelled_only", "study_date_from", "study_date_to", "include_same_patient")
    SITES_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSES_FIELD_NUMBER: _ClassVar[int]
    SEXES_FIELD_NUMBER: _ClassVar[int]
    AGE_BANDS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_ONLY_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_FROM_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_TO_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SAME_PATIENT_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedScalarFieldContainer[str]
    diagnoses: _containers.RepeatedScalarFieldContainer[_common_pb2.Diagnosis]
    sexes: _containers.RepeatedScalarFieldContainer[str]
    age_bands: _containers.RepeatedScalarFieldContainer[str]
    labelled_only: bool
    study_date_from: str
    study_date_to: str
    include_same_patient: bool
    def __init__(self, sites: _Optional[_Iterable[str]] = ..., diagnoses: _Optional[_Iterable[_Union[_common_pb2.Diagnosis, str]]] = ..., sexes: _Optional[_Iterable[str]] = ..., age_bands: _Optional[_Iterable[str]] = ..., labelled_only: _Optional[bool] = ..., study_date_from: _Optional[str] = ..., study_date_to: _Optional[str] = ..., include_same_patient: _Optional[bool] = ...) -> None: ...

class FindSimilarRequest(_message.Message):
    __slots__ = ("study_key", "dicom", "embedding", "k", "filter")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    DICOM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    dicom: bytes
    embedding: Embedding
    k: int
    filter: CaseFilter
    def __init__(self, study_key: _Optional[str] = ..., dicom: _Optional[bytes] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., k: _Optional[int] = ..., filter: _Optional[_Union[CaseFilter, _Mapping]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class SimilarCase(_message.Message):
    __slots__ = ("study_key", "similarity", "diagnosis", "outcome", "site", "age_band", "sex", "study_date", "attention_map", "clinical")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSIS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    AGE_BAND_FIELD_NUMBER: _ClassVar[int]
    SEX_FIELD_NUMBER: _ClassVar[int]
    STUDY_DATE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MAP_FIELD_NUMBER: _ClassVar[int]
    CLINICAL_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    similarity: float
    diagnosis: _common_pb2.Diagnosis
    outcome: _common_pb2.Outcome
    site: str
    age_band: str
    sex: str
    study_date: str
    attention_map: _common_pb2.BlobRef
    clinical: _common_pb2.ClinicalData
    def __init__(self, study_key: _Optional[str] = ..., similarity: _Optional[float] = ..., diagnosis: _Optional[_Union[_common_pb2.Diagnosis, str]] = ..., outcome: _Optional[_Union[_common_pb2.Outcome, str]] = ..., site: _Optional[str] = ..., age_band: _Optional[str] = ..., sex: _Optional[str] = ..., study_date: _Optional[str] = ..., attention_map: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., clinical: _Optional[_Union[_common_pb2.ClinicalData, _Mapping]] = ...) -> None: ...

class FindSimilarReply(_message.Message):
    __slots__ = ("cases", "model", "query_attention_map")
    CASES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_ATTENTION_MAP_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[SimilarCase]
    model: _common_pb2.ModelVersion
    query_attention_map: _common_pb2.BlobRef
    def __init__(self, cases: _Optional[_Iterable[_Union[SimilarCase, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., query_attention_map: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ...) -> None: ...

class DiagnoseReply(_message.Message):
    __slots__ = ("diagnosis", "scores", "neighbours_used", "cases")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DIAGNOSIS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_USED_FIELD_NUMBER: _ClassVar[int]
    CASES_FIELD_NUMBER: _ClassVar[int]
    diagnosis: _common_pb2.Diagnosis
    scores: _containers.ScalarMap[str, float]
    neighbours_used: int
    cases: _containers.RepeatedCompositeFieldContainer[SimilarCase]
    def __init__(self, diagnosis: _Optional[_Union[_common_pb2.Diagnosis, str]] = ..., scores: _Optional[_Mapping[str, float]] = ..., neighbours_used: _Optional[int] = ..., cases: _Optional[_Iterable[_Union[SimilarCase, _Mapping]]] = ...) -> None: ...
