from cxrmesh.v1 import common_pb2 as _common_pb2
from cxrmesh.v1 import events_pb2 as _events_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetQuantificationRequest(_message.Message):
    __slots__ = ("study_key",)
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    def __init__(self, study_key: _Optional[str] = ...) -> None: ...

class DicomOutputs(_message.Message):
    __slots__ = ("study_key", "segmentation", "structured_report", "segmentation_ref", "structured_report_ref")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_REPORT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_REF_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_REPORT_REF_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    segmentation: bytes
    structured_report: bytes
    segmentation_ref: _common_pb2.BlobRef
    structured_report_ref: _common_pb2.BlobRef
    def __init__(self, study_key: _Optional[str] = ..., segmentation: _Optional[bytes] = ..., structured_report: _Optional[bytes] = ..., segmentation_ref: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., structured_report_ref: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ...) -> None: ...
