"""The errors the Kafka runtime raises on purpose, and the two a handler uses to say "do not retry".

Callers branch on the class: :class:`KafkaConfigError` at construction, :class:`KafkaUnavailableError`
when no broker answers, :class:`PublishError` for an unacknowledged record, :class:`DeadLetterError`
when a batch must not be committed. :class:`PermanentError` is the handler's side of the contract.
"""

from __future__ import annotations


class KafkaRuntimeError(Exception):
    """Base of the errors this runtime raises on purpose."""


class KafkaConfigError(KafkaRuntimeError, ValueError):
    """The configuration cannot work (caught at construction, not at the first message)."""


class KafkaUnavailableError(KafkaRuntimeError):
    """No broker of the bootstrap list answered."""


class PublishError(KafkaRuntimeError):
    """A record was not acknowledged by the broker (acks=all) in time, or could not be sent."""

    def __init__(self, topic: str, reason: str):
        super().__init__(f"publish to {topic} failed: {reason}")
        self.topic = topic
        self.reason = reason


class DeadLetterError(KafkaRuntimeError):
    """The dead-letter topic did not take a message, so the batch must not be committed."""


class PermanentError(Exception):
    """Raised (or returned) by a handler: the content is bad, retrying cannot help; dead-letter now."""


class PoisonMessageError(PermanentError):
    """The record cannot be decoded as its topic's message type (reason of a poison dead letter)."""


class HandlerContractError(KafkaRuntimeError):
    """The handler returned something other than one ``None``/exception per event."""
