from cxrmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetEmbeddingRequest(_message.Message):
    __slots__ = ("study_key",)
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    def __init__(self, study_key: _Optional[str] = ...) -> None: ...

class GetEmbeddingReply(_message.Message):
    __slots__ = ("study_key", "embedding", "model", "attention_map")
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MAP_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    model: _common_pb2.ModelVersion
    attention_map: _common_pb2.BlobRef
    def __init__(self, study_key: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., model: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., attention_map: _Optional[_Union[_common_pb2.BlobRef, _Mapping]] = ...) -> None: ...
