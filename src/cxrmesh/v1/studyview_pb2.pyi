import datetime

from cxrmesh.v1 import common_pb2 as _common_pb2
from cxrmesh.v1 import events_pb2 as _events_pb2
from cxrmesh.v1 import search_pb2 as _search_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StageState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_STATE_UNSPECIFIED: _ClassVar[StageState]
    STAGE_PENDING: _ClassVar[StageState]
    STAGE_DONE: _ClassVar[StageState]
    STAGE_FAILED: _ClassVar[StageState]
STAGE_STATE_UNSPECIFIED: StageState
STAGE_PENDING: StageState
STAGE_DONE: StageState
STAGE_FAILED: StageState

class GetStudyRequest(_message.Message):
    __slots__ = ("study_key", "similar_k")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_K_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    similar_k: int
    def __init__(self, study_key: _Optional[str] = ..., similar_k: _Optional[int] = ...) -> None: ...

class Stage(_message.Message):
    __slots__ = ("name", "state", "reason", "updated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: StageState
    reason: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[StageState, str]] = ..., reason: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StudyView(_message.Message):
    __slots__ = ("study_key", "stages", "complete", "metadata", "segmentation", "quantification", "similar_cases", "diagnosis", "prognosis", "attention_map", "display_image")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    QUANTIFICATION_FIELD_NUMBER: _ClassVar[int]
    SIMILAR_CASES_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSIS_FIELD_NUMBER: _ClassVar[int]
    PROGNOSIS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MAP_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    stages: _containers.RepeatedCompositeFieldContainer[Stage]
    complete: bool
    metadata: _common_pb2.StudyMetadata
    segmentation: _events_pb2.StudySegmented
    quantification: _events_pb2.StudyQuantified
    similar_cases: _containers.RepeatedCompositeFieldContainer[_search_pb2.SimilarCase]
    diagnosis: _search_pb2.DiagnoseReply
    prognosis: _events_pb2.PrognosisResult
    attention_map: _common_pb2.BlobRef
    display_image: _common_pb2.BlobRef
    def __init__(self, study_key: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[Stage, _Mapping]]] = ..., complete: _Optional[bool] = ..., metadata: _Optional[_Union[_common_pb2.StudyMetadata, _Mapping]] = ..., segmentation: _Optional[_Union[_events_pb2.StudySegmented, _Mapping]] = ..., quantification: _Optional[_Union[_events_pb2.StudyQuantified, _Mapping]] = ..., similar_cases: _Optional[_Iterable[_Union[_search_pb2.SimilarCase, _Mapping]]] = ..., diagnosis: _Optional[_Union[_search_pb2.DiagnoseReply, _Mapping]] = ..., prognosis: _Optional[_Union[_events_pb2.PrognosisResult, _Mapping]] = ..., attention_map: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., display_image: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ...) -> None: ...
