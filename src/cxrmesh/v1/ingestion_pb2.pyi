from cxrmesh.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IngestHeader(_message.Message):
    __slots__ = ("source_name", "clinical", "labels", "total_bytes")
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    CLINICAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    source_name: str
    clinical: _common_pb2.ClinicalData
    labels: _common_pb2.KnownLabels
    total_bytes: int
    def __init__(self, source_name: _Optional[str] = ..., clinical: _Optional[_Union[_common_pb2.ClinicalData, _Mapping]] = ..., labels: _Optional[_Union[_common_pb2.KnownLabels, _Mapping]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class IngestChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: IngestHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[IngestHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class IngestReply(_message.Message):
    __slots__ = ("study_key", "patient_key", "duplicate", "metadata")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    PATIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    patient_key: str
    duplicate: bool
    metadata: _common_pb2.StudyMetadata
    def __init__(self, study_key: _Optional[str] = ..., patient_key: _Optional[str] = ..., duplicate: _Optional[bool] = ..., metadata: _Optional[_Union[_common_pb2.StudyMetadata, _Mapping]] = ...) -> None: ...

class SubmitClinicalRequest(_message.Message):
    __slots__ = ("study_key", "clinical", "labels")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    CLINICAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    clinical: _common_pb2.ClinicalData
    labels: _common_pb2.KnownLabels
    def __init__(self, study_key: _Optional[str] = ..., clinical: _Optional[_Union[_common_pb2.ClinicalData, _Mapping]] = ..., labels: _Optional[_Union[_common_pb2.KnownLabels, _Mapping]] = ...) -> None: ...

class SubmitClinicalReply(_message.Message):
    __slots__ = ("study_key",)
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    def __init__(self, study_key: _Optional[str] = ...) -> None: ...
