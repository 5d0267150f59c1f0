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

from cxrmesh.inference import model_input
from cxrmesh.models.spec import MAX_BATCH
from cxrmesh.quantify import lung_dice
from cxrmesh.runtime.blobs import NPY, array_bytes, open_blob_store
from cxrmesh.runtime.errors import InvalidArgument, NotFound
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Consumer, Event, EventProducer
from cxrmesh.runtime.settings import SegmentationSettings
from cxrmesh.runtime.triton import TritonClient
from cxrmesh.services import stage, topics
from cxrmesh.services.results import ResultTable, kafka_config
from cxrmesh.v1 import common_pb2, events_pb2, segmentation_pb2, segmentation_pb2_grpc


def segment(triton: TritonClient, model: str, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Display images -> (ensemble probabilities, member probabilities), MAX_BATCH per request."""
    probs, members = [], []
    for i in range(0, len(images), MAX_BATCH):
        batch = np.concatenate([model_input(img) for img in images[i : i + MAX_BATCH]])
        out = triton.infer(model, {"image": batch}, ["probs", "member_probs"])
        probs.append(out["probs"])
        members.append(out["member_probs"])
    return np.concatenate(probs), np.concatenate(members)


def member_agreement(member_probs: np.ndarray) -> float:
    """Mean pairwise lung Dice between the members' label maps (1 = all agree)."""
    labels = member_probs.argmax(axis=1)
    pairs = [float(lung_dice(labels[a], labels[b])) for a, b in itertools.combinations(range(len(labels)), 2)]
    return float(np.mean(pairs)) if pairs else 1.0


class SegmentationWorker:
    def __init__(
        self,
        settings: SegmentationSettings,
        triton: TritonClient,
        producer: EventProducer,
        table: ResultTable,
    ):
        self.settings, self.triton, self.producer, self.table = settings, triton, producer, table
        self.blobs = open_blob_store(settings.blob_location)

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        results, ok, images = stage.load_all(
            events, lambda e: stage.load_display(self.blobs, e.message.display_image)
        )
        if not ok:
            return results
        model = self.settings.seg_model
        out = stage.run_model(results, ok, lambda: segment(self.triton, model, images))
        if out is None:
            return results
        probs, members = out
        version = common_pb2.ModelVersion(name=model, version=self.triton.model_version(model))
        pending = []
        for j, i in enumerate(ok):
            src: events_pb2.StudyIngested = events[i].message
            lungs = probs[j].argmax(axis=0).astype(np.uint8)
            msg = events_pb2.StudySegmented(
                study_key=src.study_key,
                patient_key=src.patient_key,
                lungs=self.blobs.put(array_bytes(lungs), NPY),
                probabilities=self.blobs.put(array_bytes(probs[j].astype(np.float16)), NPY),
                member_agreement=member_agreement(members[j]),
                model=version,
                display_image=src.display_image,
                deidentified_dicom=src.deidentified_dicom,
                metadata=src.metadata,
                ingested_at=src.ingested_at,
            )
            self.table.put(src.study_key, msg)
            pending.append(
                (i, src.ingested_at, self.producer.publish(topics.STUDY_SEGMENTED, src.study_key, msg))
            )
        return stage.confirm(results, pending, "segmented")


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    def __init__(self, table: ResultTable, blobs):
        self.table, self.blobs = table, blobs

    def GetMasks(self, request: segmentation_pb2.GetMasksRequest, context: grpc.ServicerContext):
        if not request.study_key:
            raise InvalidArgument("missing_study_key", "study_key is required")
        msg = self.table.get(request.study_key)
        if msg is None:
            raise NotFound("not_segmented", "no masks for this study (unknown, or not processed yet)")
        reply = segmentation_pb2.GetMasksReply(
            study_key=msg.study_key,
            lungs=msg.lungs,
            probabilities=msg.probabilities,
            member_agreement=msg.member_agreement,
            model=msg.model,
        )
        if request.include_pixels:
            reply.lungs_npy = self.blobs.get(msg.lungs)
        return reply


def build(settings: SegmentationSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(settings)
    table = ResultTable(settings.data_dir / "segmentation" / "masks.sqlite", events_pb2.StudySegmented)
    triton = TritonClient(settings.triton_url, settings.triton_timeout_s)
    cfg = kafka_config(settings, "cxrmesh-segmentation", MAX_BATCH)
    producer = EventProducer(cfg)
    worker = SegmentationWorker(settings, triton, producer, table)
    consumer = Consumer(
        cfg, {topics.STUDY_INGESTED: events_pb2.StudyIngested}, worker, producer, service=settings.service
    )
    runtime.add_service(
        segmentation_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name,
        segmentation_pb2_grpc.add_SegmentationServiceServicer_to_server,
        SegmentationServicer(table, worker.blobs),
    )
    runtime.add_dependency("triton", lambda: triton.ready([settings.seg_model]))
    runtime.add_dependency("kafka", consumer.healthy)
    runtime.add_dependency("storage", worker.blobs.ping)
    runtime.add_worker("consumer", consumer.run)
    for close in (producer.close, table.close, triton.close):
        runtime.on_close(close)
    return runtime


def main() -> None:
    build(SegmentationSettings()).run()


if __name__ == "__main__":
    main()
