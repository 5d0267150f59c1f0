"""Segmentation: StudyIngested -> Triton lung_seg_ensemble (one request per batch) -> masks.

Writes the right/left lung label map (``analysis.lung_map``: argmax plus the anatomy rules) and the
ensemble probabilities to the blob store and publishes StudySegmented with the members' agreement
(mean pairwise Dice), which flags studies the five networks disagree on. Each lung's share of the
map is a model-health metric (``cxrmesh_lung_area_fraction``): it shifts when the films or the model do.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import grpc
import numpy as np

from cxrmesh.analysis.lung_map import lung_map
from cxrmesh.analysis.pixels import model_input
from cxrmesh.analysis.quantify import lung_dice
from cxrmesh.analysis.regions import Lung
from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import NPY, array_bytes
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.services import batch
from cxrmesh.services.flow import FLOW
from cxrmesh.services.model_stage import ModelStage, StageParts, get_result, model_stage_service
from cxrmesh.services.segmentation.settings import SegmentationSettings
from cxrmesh.services.stage import GrpcApi
from cxrmesh.v1 import common_pb2, events_pb2, segmentation_pb2, segmentation_pb2_grpc


def member_agreement(member_probs: np.ndarray) -> float:
    """Mean pairwise lung Dice between the members' label maps (1 = all agree)."""
    labels = member_probs.argmax(axis=1)
    pairs = [float(lung_dice(labels[a], labels[b])) for a, b in itertools.combinations(range(len(labels)), 2)]
    return float(np.mean(pairs)) if pairs else 1.0


def lung_area_fractions(lungs: np.ndarray) -> dict[str, float]:
    """Each lung's pixels / all pixels of the lung map (the model-input frame, letterbox included)."""
    size = max(1, lungs.size)
    return {"right": int((lungs == Lung.RIGHT).sum()) / size, "left": int((lungs == Lung.LEFT).sum()) / size}


class SegmentationWorker(ModelStage[np.ndarray]):
    """StudyIngested batch -> ensemble and member probabilities -> StudySegmented per study."""

    def infer(self, items: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return batch.infer_images(self.parts.triton, self.parts.model, items, ("probs", "member_probs"))

    def result(
        self,
        src: events_pb2.StudyIngested,
        item: np.ndarray,
        out: dict[str, np.ndarray],
        j: int,
        version: common_pb2.ModelVersion,
    ) -> events_pb2.StudySegmented:
        probs = out["probs"][j]
        blobs = self.parts.blobs
        lungs = lung_map(probs, model_input(item)[0, 0])
        for side, fraction in lung_area_fractions(lungs).items():
            metrics.lung_area_fraction().labels(side).observe(fraction)
        return events_pb2.StudySegmented(
            study_key=src.study_key,
            patient_key=src.patient_key,
            lungs=blobs.put(array_bytes(lungs), NPY),
            probabilities=blobs.put(array_bytes(probs.astype(np.float16)), NPY),
            member_agreement=member_agreement(out["member_probs"][j]),
            model=version,
            display_image=src.display_image,
            deidentified_dicom=src.deidentified_dicom,
            metadata=src.metadata,
            ingested_at=src.ingested_at,
        )


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, parts: StageParts):
        self.parts = parts

    def GetMasks(self, request: segmentation_pb2.GetMasksRequest, context: grpc.ServicerContext):
        msg = get_result(self.parts.table, request.study_key, "masks")
        reply = segmentation_pb2.GetMasksReply(
            study_key=msg.study_key,
            lungs=msg.lungs,
            probabilities=msg.probabilities,
            member_agreement=msg.member_agreement,
            model=msg.model,
        )
        if request.include_pixels:
            reply.lungs_npy = self.parts.blobs.get(msg.lungs)
        return reply


def build(settings: SegmentationSettings) -> ServiceRuntime:
    api = GrpcApi.of(segmentation_pb2, segmentation_pb2_grpc, "SegmentationService")
    stage, model, result = FLOW["segmentation"], settings.seg_model, events_pb2.StudySegmented
    return model_stage_service(settings, stage, model, result, SegmentationWorker, api, SegmentationServicer)


def main() -> None:
    build(SegmentationSettings()).run()
