"""Embedding: StudyIngested -> Triton embedder (one request per polled batch) -> StudyEmbedded.

Idempotent: a redelivered study is embedded again with the same result and the same
(content-addressed) attention blob; search upserts by study key. The latest embedding per study
is kept for GetEmbedding.

The served embedder L2-normalises inside its graph (``ml.nets.Embedder``), so the norm of what it
returns (``cxrmesh_embedding_norm``) is 1 by contract: it checks the model export, not drift (the
pre-normalisation norm is not an output of the model; drift shows in search's neighbour distance).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import NPY, array_bytes
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.services import batch
from cxrmesh.services.embedding.settings import EmbeddingSettings
from cxrmesh.services.flow import FLOW
from cxrmesh.services.model_stage import ModelStage, StageParts, get_result, model_stage_service
from cxrmesh.services.stage import GrpcApi
from cxrmesh.v1 import common_pb2, embedding_pb2, embedding_pb2_grpc, events_pb2


class EmbeddingWorker(ModelStage[np.ndarray]):
    """StudyIngested batch -> embeddings and attention maps -> StudyEmbedded per study."""

    def infer(self, items: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return batch.embed_images(self.parts.triton, self.parts.model, items)

    def result(
        self,
        src: events_pb2.StudyIngested,
        item: np.ndarray,
        out: tuple[np.ndarray, np.ndarray],
        j: int,
        version: common_pb2.ModelVersion,
    ) -> events_pb2.StudyEmbedded:
        emb, att = out
        metrics.embedding_norm().observe(float(np.linalg.norm(emb[j].astype(np.float64))))
        msg = events_pb2.StudyEmbedded(
            study_key=src.study_key,
            patient_key=src.patient_key,
            embedding=emb[j].astype(np.float32).tolist(),
            model=version,
            attention_map=self.parts.blobs.put(array_bytes(att[j, 0].astype(np.float32)), NPY),
            metadata=src.metadata,
            labels=src.labels,
            embedded_at=batch.now(),
            ingested_at=src.ingested_at,
        )
        if src.HasField("clinical"):
            msg.clinical.CopyFrom(src.clinical)
        return msg


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, parts: StageParts):
        self.parts = parts

    def GetEmbedding(self, request: embedding_pb2.GetEmbeddingRequest, context: grpc.ServicerContext):
        event = get_result(self.parts.table, request.study_key, "embedding")
        return embedding_pb2.GetEmbeddingReply(
            study_key=event.study_key,
            embedding=event.embedding,
            model=event.model,
            attention_map=event.attention_map,
        )


def build(settings: EmbeddingSettings) -> ServiceRuntime:
    api = GrpcApi.of(embedding_pb2, embedding_pb2_grpc, "EmbeddingService")
    stage, model, result = FLOW["embedding"], settings.embed_model, events_pb2.StudyEmbedded
    return model_stage_service(settings, stage, model, result, EmbeddingWorker, api, EmbeddingServicer)


def main() -> None:
    build(EmbeddingSettings()).run()
