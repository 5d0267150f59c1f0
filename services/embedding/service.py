"""Embedding: StudyIngested -> Triton embedder (one request per polled batch) -> StudyEmbedded.

Idempotent: a study is embedded again if its event is redelivered, producing the same embedding
and the same blob (content-addressed); search upserts by study key. The latest embedding per
study is kept in a small local table for GetEmbedding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
import numpy as np

from cxrmesh.inference import model_input
from cxrmesh.models.spec import MAX_BATCH
from cxrmesh.runtime.blobs import NPY, array_bytes, open_blob_store
from cxrmesh.runtime.errors import InvalidArgument, NotFound
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Consumer, Event, EventProducer
from cxrmesh.runtime.settings import EmbeddingSettings
from cxrmesh.runtime.triton import TritonClient
from cxrmesh.services import stage, topics
from cxrmesh.services.results import ResultTable, kafka_config
from cxrmesh.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc, events_pb2

log = logging.getLogger(__name__)


def embed_images(
    triton: TritonClient, model: str, images: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """MODEL_SIZE^2 display images -> (embeddings, attention maps), MAX_BATCH per Triton request."""
    embs, atts = [], []
    for i in range(0, len(images), MAX_BATCH):
        batch = np.concatenate([model_input(img) for img in images[i : i + MAX_BATCH]])
        out = triton.infer(model, {"image": batch}, ["embedding", "attention"])
        embs.append(out["embedding"])
        atts.append(out["attention"])
    return np.concatenate(embs), np.concatenate(atts)


class EmbeddingWorker:
    """The Kafka handler: a batch of StudyIngested in, one result (None or an error) per event."""

    def __init__(
        self,
        settings: EmbeddingSettings,
        triton: TritonClient,
        producer: EventProducer,
        table: ResultTable,
    ):
        self.settings = settings
        self.triton = triton
        self.producer = producer
        self.table = table
        self.blobs = open_blob_store(settings.blob_location)

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        results, ok, images = stage.load_all(
            events, lambda e: stage.load_display(self.blobs, e.message.display_image)
        )
        if not ok:
            return results
        model = self.settings.embed_model
        out = stage.run_model(results, ok, lambda: embed_images(self.triton, model, images))
        if out is None:
            return results
        emb, att = out
        version = common_pb2.ModelVersion(name=model, version=self.triton.model_version(model))
        pending = []
        for j, i in enumerate(ok):
            src: events_pb2.StudyIngested = events[i].message
            msg = events_pb2.StudyEmbedded(
                study_key=src.study_key,
                patient_key=src.patient_key,
                embedding=emb[j].astype(np.float32).tolist(),
                model=version,
                attention_map=self.blobs.put(array_bytes(att[j, 0].astype(np.float32)), NPY),
                metadata=src.metadata,
                labels=src.labels,
                embedded_at=stage.now(),
                ingested_at=src.ingested_at,
            )
            if src.HasField("clinical"):
                msg.clinical.CopyFrom(src.clinical)
            self.table.put(src.study_key, msg)
            pending.append(
                (i, src.ingested_at, self.producer.publish(topics.STUDY_EMBEDDED, src.study_key, msg))
            )
        return stage.confirm(results, pending, "embedded")


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, table: ResultTable):
        self.table = table

    def GetEmbedding(self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext):
        if not request.study_key:
            raise InvalidArgument("missing_study_key", "study_key is required")
        event = self.table.get(request.study_key)
        if event is None:
            raise NotFound("not_embedded", "no embedding for this study (unknown, or not processed yet)")
        return embedding_pb2.GetEmbeddingReply(
            study_key=event.study_key,
            embedding=event.embedding,
            model=event.model,
            attention_map=event.attention_map,
        )


def build(settings: EmbeddingSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings)
    table = ResultTable(settings.data_dir / "embedding" / "embeddings.sqlite", events_pb2.StudyEmbedded)
    triton = TritonClient(settings.triton_url, settings.triton_timeout_s)
    cfg = kafka_config(settings, "cxrmesh-embedding", MAX_BATCH)
    producer = EventProducer(cfg)
    worker = EmbeddingWorker(settings, triton, producer, table)
    consumer = Consumer(
        cfg, {topics.STUDY_INGESTED: events_pb2.StudyIngested}, worker, producer, service=settings.service
    )
    runtime.add_service(
        embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
        embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
        EmbeddingServicer(table),
    )
    runtime.add_dependency("triton", lambda: triton.ready([settings.embed_model]))
    runtime.add_dependency("kafka", consumer.healthy)
    runtime.add_dependency("storage", worker.blobs.ping)
    runtime.add_worker("consumer", consumer.run)
    runtime.on_close(producer.close)
    runtime.on_close(table.close)
    runtime.on_close(triton.close)
    return runtime


def main() -> None:
    build(EmbeddingSettings()).run()


if __name__ == "__main__":
    main()
