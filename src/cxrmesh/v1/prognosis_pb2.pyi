from cxrmesh.v1 import events_pb2 as _events_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetPrognosisRequest(_message.Message):
    __slots__ = ("study_key",)
    STUDY_KEY_FIELD_NUMBER: _ClassVar[int]
    study_key: str
    def __init__(self, study_key: _Optional[str] = ...) -> None: ...
