"""The content-type header every record carries: it names the protobuf type, so tools can decode any topic."""

from __future__ import annotations

from google.protobuf.message import Message

CONTENT_TYPE_HEADER = "content-type"


def content_type(message: Message | type[Message]) -> str:
    """The content-type header value naming a record's protobuf type (lets tools decode any topic)."""
    return f"application/x-protobuf; messageType={message.DESCRIPTOR.full_name}"


def message_type_of(header: str) -> str | None:
    """The ``messageType`` a content-type header names (None when it names none)."""
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "messagetype":
            return value.strip()
    return None
