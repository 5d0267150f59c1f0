"""The Kafka runtime every service uses: a protobuf producer and an at-least-once batch consumer.

One module per job: ``config`` (KafkaConfig), ``errors``, ``headers`` (content-type), ``metrics``,
``security`` (KafkaSecurity: credentials), ``producer`` (EventProducer), ``events`` (Event, the
handler contract, decoding), ``consumer`` (the loop and the delivery contract), ``backoff``,
``batch`` (what may be committed), ``dead_letter``, ``lag`` and ``spans`` (the study trace across
topics, see ``cxrmesh.runtime.tracing``). Import the public names from here.
"""

from kafka.producer.future import RecordMetadata

from cxrmesh.runtime.kafka.config import KafkaConfig
from cxrmesh.runtime.kafka.consumer import Consumer
from cxrmesh.runtime.kafka.errors import (
    DeadLetterError,
    DependencyUnavailable,
    HandlerContractError,
    KafkaConfigError,
    KafkaRuntimeError,
    KafkaUnavailableError,
    PermanentError,
    PoisonMessageError,
    PublishError,
)
from cxrmesh.runtime.kafka.events import Event, Handler
from cxrmesh.runtime.kafka.headers import CONTENT_TYPE_HEADER, content_type
from cxrmesh.runtime.kafka.producer import EventProducer, PublishFuture
from cxrmesh.runtime.kafka.security import KafkaSecurity

__all__ = [
    "CONTENT_TYPE_HEADER",
    "Consumer",
    "DeadLetterError",
    "DependencyUnavailable",
    "Event",
    "EventProducer",
    "Handler",
    "HandlerContractError",
    "KafkaConfig",
    "KafkaConfigError",
    "KafkaRuntimeError",
    "KafkaSecurity",
    "KafkaUnavailableError",
    "PermanentError",
    "PoisonMessageError",
    "PublishError",
    "PublishFuture",
    "RecordMetadata",
    "content_type",
]
