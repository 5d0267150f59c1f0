"""Embedding: StudyIngested -> Triton embedder (one request per polled batch) -> StudyEmbedded.

Idempotent: a redelivered study is embedded again with the same result and the same
(content-addressed) attention blob; search upserts by study key. The latest embedding per study
is kept for GetEmbedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from cxrmesh.contracts import topics
from cxrmesh.runtime.blobs import NPY, array_bytes
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Event
from cxrmesh.runtime.settings import EmbeddingSettings
from cxrmesh.services import stage
from cxrmesh.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc, events_pb2


class EmbeddingWorker:
    """The Kafka handler: a batch of StudyIngested in, one result (None or an error) per event."""

    def __init__(self, parts: stage.StageParts):
        self.parts = parts
        self.model = parts.settings.embed_model

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        p = self.parts
        results, ok, images = stage.load_all(
            events, lambda e: stage.load_display(p.blobs, e.message.display_image)
        )
        if not ok:
            return results
        out = stage.run_model(results, ok, lambda: stage.embed_images(p.triton, self.model, images))
        if out is None:
            return results
        emb, att = out
        version = common_pb2.ModelVersion(name=self.model, version=p.triton.model_version(self.model))
        pending = []
        for j, i in enumerate(ok):
            src: events_pb2.StudyIngested = events[i].message
            msg = events_pb2.StudyEmbedded(
                study_key=src.study_key,
                patient_key=src.patient_key,
                embedding=emb[j].astype(np.float32).tolist(),
                model=version,
                attention_map=p.blobs.put(array_bytes(att[j, 0].astype(np.float32)), NPY),
                metadata=src.metadata,
                labels=src.labels,
                embedded_at=stage.now(),
                ingested_at=src.ingested_at,
            )
            if src.HasField("clinical"):
                msg.clinical.CopyFrom(src.clinical)
            p.table.put(src.study_key, msg)
            pending.append(
                (i, src.ingested_at, p.producer.publish(topics.STUDY_EMBEDDED, src.study_key, msg))
            )
        return stage.confirm(results, pending, "embedded")


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, parts: stage.StageParts):
        self.parts = parts

    def GetEmbedding(self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext):
        event = stage.get_result(self.parts.table, request.study_key, "embedding")
        return embedding_pb2.GetEmbeddingReply(
            study_key=event.study_key,
            embedding=event.embedding,
            model=event.model,
            attention_map=event.attention_map,
        )


def build(settings: EmbeddingSettings) -> ServiceRuntime:
    return stage.stage_service(
        settings,
        group="cxrmesh-embedding",
        result_type=events_pb2.StudyEmbedded,
        consumes={topics.STUDY_INGESTED: events_pb2.StudyIngested},
        model=settings.embed_model,
        worker=EmbeddingWorker,
        grpc_service=(
            embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
            embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
        ),
        servicer=EmbeddingServicer,
    )


def main() -> None:
    build(EmbeddingSettings()).run()


if __name__ == "__main__":
    main()
