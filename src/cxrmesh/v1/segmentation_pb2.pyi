from cxrmesh.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetMasksRequest(_message.Message):
    __slots__ = ("study_key", "include_pixels")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    include_pixels: bool
    def __init__(self, study_key: _Optional[str] = ..., include_pixels: _Optional[bool] = ...) -> None: ...

class GetMasksReply(_message.Message):
    __slots__ = ("study_key", "lungs", "probabilities", "member_agreement", "model", "lungs_npy")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    LUNGS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    MEMBER_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LUNGS_NPY_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    lungs: _common_pb2.BlobRef
    probabilities: _common_pb2.BlobRef
    member_agreement: float
    model: _common_pb2.ModelVersion
    lungs_npy: bytes
    def __init__(self, study_key: _Optional[str] = ..., lungs: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., probabilities: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ..., member_agreement: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., lungs_npy: _Optional[bytes] = ...) -> None: ...
