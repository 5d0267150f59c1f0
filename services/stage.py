"""The shared base of every Kafka-consuming service: consume -> process -> publish, health, shutdown.

A service declares its ``Stage`` (``services/flow.py``) and hands ``StageService`` what is its own:
the handler that processes a batch of events, its gRPC servicer, and the resources it opens (each
closed at shutdown, in reverse order). The base builds the Kafka producer and consumer from the
declaration, makes Kafka (and Triton, when asked) health dependencies, and runs the consumer as
the process's worker; ``ServiceRuntime`` serves gRPC, health and metrics. It also sets up the
process's tracing (``cxrmesh.runtime.tracing``: spans always, exported when an OTLP endpoint is set,
flushed at shutdown), so every stage's consumer spans join the study's trace. The handler contract
(one result per event: None = done, an exception = retry or dead-letter) is ``cxrmesh.runtime.kafka``'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, TypeVar

from google.protobuf.descriptor import ServiceDescriptor

from cxrmesh.runtime import tracing
from cxrmesh.runtime.db import Database, open_database
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Consumer, EventProducer, Handler
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.triton import TritonClient
from cxrmesh.services.flow import Stage


@dataclass(frozen=True)
class GrpcApi:
    """A generated gRPC service: its descriptor and the generated ``add_<Name>Servicer_to_server``."""

    service: ServiceDescriptor
    add: Callable[[Any, Any], None]

    @classmethod
    def of(cls, pb2: ModuleType, pb2_grpc: ModuleType, name: str) -> GrpcApi:
        """The service ``name`` of a generated module pair (e.g. ``search_pb2``, ``search_pb2_grpc``)."""
        return cls(pb2.DESCRIPTOR.services_by_name[name], getattr(pb2_grpc, f"add_{name}Servicer_to_server"))


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class StageService:
    """One service process wired from its declared stage: runtime, producer, consumer, shutdown."""

    def __init__(self, settings: ServiceSettings, stage: Stage):
        self.settings = settings
        self.stage = stage
        self.runtime = ServiceRuntime(settings)  # logging first: setup logs where spans go
        tracing.setup(settings.service, settings.trace_export())
        self.runtime.on_close(tracing.flush)  # closers run last-first: after the consumer has stopped
        self.kafka = dataclasses.replace(
            settings.kafka_config(self.stage.group, self.stage.max_batch),
            dead_letter_topic=self.stage.dead_letter_topic,
        )
        self.producer = self.closing(EventProducer(self.kafka))  # results and dead letters
        self._db: Database | None = None

    def closing(self, resource: C) -> C:
        """Close ``resource`` when the service stops (last opened, first closed)."""
        self.runtime.on_close(resource.close)
        return resource

    def depends_on(self, name: str, check: Callable[[], bool]) -> None:
        """Health is SERVING only while ``check()`` is true."""
        self.runtime.add_dependency(name, check)

    def database(self) -> Database:
        """The mesh database (migrated, closed at shutdown); the service is healthy only while it answers."""
        if self._db is None:
            self._db = self.closing(open_database(self.settings))
            self.depends_on("database", self._db.ping)
        return self._db

    def triton(self, model: str) -> TritonClient:
        """A Triton client; the service is healthy only while Triton serves ``model``."""
        s = self.settings
        client = self.closing(TritonClient(s.triton_url, s.triton_timeout_s, tls=s.tls()))
        self.depends_on("triton", lambda: client.ready([model]))
        return client

    def api(self, api: GrpcApi, servicer: Any) -> None:
        """Serve ``servicer`` as the gRPC service ``api``."""
        self.runtime.add_service(api.service.full_name, api.add, servicer)

    def consume(self, handler: Handler) -> ServiceRuntime:
        """Run ``handler`` on the declared topics; the finished service, ready to ``run()``."""
        consumer = Consumer(
            self.kafka, self.stage.message_types(), handler, self.producer, service=self.settings.service
        )
        self.depends_on("kafka", consumer.healthy)
        self.runtime.add_worker("consumer", consumer.run)
        return self.runtime
