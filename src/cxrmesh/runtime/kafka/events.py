"""What a handler sees and owes: decoded :class:`Event`s in, one ``None`` or exception per event out.

Records that cannot be decoded as their topic's type never reach a handler; :func:`decode_record`
turns them into a :class:`PoisonMessageError`, which the consumer dead-letters at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from google.protobuf.message import DecodeError, Message

from cxrmesh.runtime.kafka.errors import HandlerContractError, PoisonMessageError
from cxrmesh.runtime.kafka.headers import CONTENT_TYPE_HEADER, message_type_of


@dataclass(frozen=True)
class Event:
    """One decoded record as the handler sees it; ``attempt`` is 1 on first delivery to this consumer."""

    topic: str
    partition: int
    offset: int
    key: str
    message: Message
    headers: Mapping[str, str]
    attempt: int = 1


Handler = Callable[[Sequence[Event]], Sequence[BaseException | None]]


def decode_record(rec: Any, msg_type: type[Message]) -> Event | PoisonMessageError:
    """A polled record as an :class:`Event` of ``msg_type``, or why it is poison (never raises)."""
    try:
        key = rec.key.decode("utf-8") if rec.key is not None else ""
    except UnicodeDecodeError:
        return PoisonMessageError("key is not utf-8")
    headers = {name: (value or b"").decode("utf-8", errors="replace") for name, value in (rec.headers or [])}
    declared = message_type_of(headers.get(CONTENT_TYPE_HEADER, ""))
    if declared and declared != msg_type.DESCRIPTOR.full_name:
        return PoisonMessageError(
            f"content-type names {declared}, topic carries {msg_type.DESCRIPTOR.full_name}"
        )
    if rec.value is None:
        return PoisonMessageError("record has no value (tombstone)")
    message = msg_type()
    try:
        message.ParseFromString(rec.value)
    except DecodeError as exc:
        return PoisonMessageError(f"not a {msg_type.DESCRIPTOR.full_name}: {exc}")
    return Event(rec.topic, rec.partition, rec.offset, key, message, MappingProxyType(headers), 1)


def call_handler(handler: Handler, events: Sequence[Event]) -> list[BaseException | None]:
    """The handler's verdict per event; a raised exception fails them all, a broken answer is a
    :class:`HandlerContractError` for each. SystemExit/KeyboardInterrupt propagate (a crash)."""
    try:
        results = list(handler(events))
    except Exception as exc:  # the whole call failed
        results = [exc] * len(events)
    if len(results) != len(events):
        err = HandlerContractError(f"handler returned {len(results)} results for {len(events)} events")
        return [err] * len(events)
    return [
        r
        if r is None or isinstance(r, BaseException)
        else HandlerContractError(f"handler returned {type(r).__name__}, not None or an exception")
        for r in results
    ]
