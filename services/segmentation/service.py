"""Segmentation: StudyIngested -> Triton lung_seg_ensemble (one request per batch) -> masks.

Writes the right/left lung label map and the ensemble probabilities to the blob store and
publishes StudySegmented with the members' agreement (mean pairwise Dice), which flags studies
the five networks disagree on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import grpc
import numpy as np

from cxrmesh.analysis.quantify import lung_dice
from cxrmesh.contracts import topics
from cxrmesh.runtime.blobs import NPY, array_bytes
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Event
from cxrmesh.runtime.settings import SegmentationSettings
from cxrmesh.services import stage
from cxrmesh.v1 import common_pb2, events_pb2, segmentation_pb2, segmentation_pb2_grpc


def member_agreement(member_probs: np.ndarray) -> float:
    """Mean pairwise lung Dice between the members' label maps (1 = all agree)."""
    labels = member_probs.argmax(axis=1)
    pairs = [float(lung_dice(labels[a], labels[b])) for a, b in itertools.combinations(range(len(labels)), 2)]
    return float(np.mean(pairs)) if pairs else 1.0


class SegmentationWorker:
    def __init__(self, parts: stage.StageParts):
        self.parts = parts
        self.model = parts.settings.seg_model

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        p = self.parts
        results, ok, images = stage.load_all(
            events, lambda e: stage.load_display(p.blobs, e.message.display_image)
        )
        if not ok:
            return results
        out = stage.run_model(
            results, ok, lambda: stage.infer_images(p.triton, self.model, images, ("probs", "member_probs"))
        )
        if out is None:
            return results
        version = common_pb2.ModelVersion(name=self.model, version=p.triton.model_version(self.model))
        pending = []
        for j, i in enumerate(ok):
            src: events_pb2.StudyIngested = events[i].message
            probs = out["probs"][j]
            msg = events_pb2.StudySegmented(
                study_key=src.study_key,
                patient_key=src.patient_key,
                lungs=p.blobs.put(array_bytes(probs.argmax(axis=0).astype(np.uint8)), NPY),
                probabilities=p.blobs.put(array_bytes(probs.astype(np.float16)), NPY),
                member_agreement=member_agreement(out["member_probs"][j]),
                model=version,
                display_image=src.display_image,
                deidentified_dicom=src.deidentified_dicom,
                metadata=src.metadata,
                ingested_at=src.ingested_at,
            )
            p.table.put(src.study_key, msg)
            pending.append(
                (i, src.ingested_at, p.producer.publish(topics.STUDY_SEGMENTED, src.study_key, msg))
            )
        return stage.confirm(results, pending, "segmented")


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, parts: stage.StageParts):
        self.parts = parts

    def GetMasks(self, request: segmentation_pb2.GetMasksRequest, context: grpc.ServicerContext):
        msg = stage.get_result(self.parts.table, request.study_key, "masks")
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
    return stage.stage_service(
        settings,
        group="cxrmesh-segmentation",
        result_type=events_pb2.StudySegmented,
        consumes={topics.STUDY_INGESTED: events_pb2.StudyIngested},
        model=settings.seg_model,
        worker=SegmentationWorker,
        grpc_service=(
            segmentation_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name,
            segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server,
        ),
        servicer=SegmentationServicer,
    )


def main() -> None:
    build(SegmentationSettings()).run()


if __name__ == "__main__":
    main()
