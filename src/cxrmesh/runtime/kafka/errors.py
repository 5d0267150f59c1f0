"""The errors the Kafka runtime raises on purpose, and the ones a handler uses to steer the retries.

Callers branch on the class: :class:`KafkaConfigError` at construction, :class:`KafkaUnavailableError`
when no broker answers, :class:`PublishError` for an unacknowledged record, :class:`DeadLetterError`
when a batch must not be committed. :class:`PermanentError` ("do not retry") and
:class:`DependencyUnavailable` ("retry, but the content is not at fault") are the handler's side of
the contract.
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


class DependencyUnavailable(Exception):
    """Raised (or returned) by a handler: a dependency (Triton, storage, Milvus, the database, the broker)
    is down or too slow; retry without spending attempts.

    The consumer waits with the usual backoff and keeps the message's place until the dependency has
    been unavailable for ``KafkaConfig.unavailable_max_s``; only then do attempts count, so an outage
    does not dead-letter the studies that happened to be in flight. Keep the original error as
    ``__cause__`` (``raise DependencyUnavailable(...) from exc``) so the log and the dead letter say why.
    """


class PoisonMessageError(PermanentError):
    """The record cannot be decoded as its topic's message type (reason of a poison dead letter)."""


class HandlerContractError(KafkaRuntimeError):
    """The handler returned something other than one ``None``/exception per event."""
