"""Landmarks and four-region quantification: StudySegmented -> Triton cxr_landmarks -> regions.

Splits each lung at the left hilum, measures the four regions, estimates RALE and writes the
region map plus a DICOM SEG and SR (``measure``), then publishes StudyQuantified. First the image
quality gate (``analysis.quality``): an image that is not a frontal chest radiograph is refused
(published with the reasons and nothing measured) or flagged. Implausible detected landmarks are
replaced by the estimate from the lung map (``analysis.landmarks``), marked as estimated and
counted; they and members that disagree are reported as warnings on the study, not hidden.

Model health, per measured study (the gate did not refuse it): the detector's calibrated confidence
per landmark and each plausibility problem of its pair by code (``record_landmark_health``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import pydicom
from prometheus_client import Counter

from cxrmesh.analysis.landmarks import ChosenLandmarks, calibrated_confidence, choose_landmarks
from cxrmesh.analysis.pixels import Letterbox, model_input
from cxrmesh.analysis.quality import VERDICTS, assess_quality
from cxrmesh.analysis.regions import LandmarkProblem, problem_code
from cxrmesh.contracts import convert
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import LANDMARKS, MODEL_INPUT
from cxrmesh.runtime import metrics
from cxrmesh.runtime.blobs import NPY, array_bytes, bytes_array
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Event, PermanentError
from cxrmesh.runtime.metrics import metric
from cxrmesh.services import batch
from cxrmesh.services.flow import FLOW
from cxrmesh.services.model_stage import ModelStage, StageParts, get_result, model_stage_service
from cxrmesh.services.quantification.measure import dicom_outputs, quantify_study
from cxrmesh.services.quantification.settings import QuantificationSettings
from cxrmesh.services.stage import GrpcApi
from cxrmesh.v1 import common_pb2, events_pb2, quantification_pb2, quantification_pb2_grpc


@dataclass
class Inputs:
    display: np.ndarray  # (MODEL_SIZE, MODEL_SIZE)
    lungs: np.ndarray  # (MODEL_INPUT, MODEL_INPUT) uint8


LANDMARK_FALLBACKS = metric(
    Counter,
    "cxrmesh_landmark_fallbacks_total",
    "Studies whose detected landmarks were implausible and were replaced by the estimate from the lung map.",
)
QUALITY_VERDICTS = metric(
    Counter,
    "cxrmesh_quality_gate_total",
    "Studies by the image quality gate's verdict (pass, flagged, refused).",
    ("verdict",),
)
for _verdict in VERDICTS:  # from 0: the first refusal is an increase
    QUALITY_VERDICTS.labels(_verdict)
LANDMARK_CONFIDENCE = metrics.landmark_confidence()
LANDMARK_IMPLAUSIBLE = metrics.landmark_implausible()
for _code in LandmarkProblem:
    LANDMARK_IMPLAUSIBLE.labels(_code.value)


def record_landmark_health(chosen: ChosenLandmarks, scores: np.ndarray) -> None:
    """The detector's calibrated confidence per landmark (its own, even when the estimate replaced it)
    and one count per problem of its pair, by ``LandmarkProblem`` code (bounded labels, no free text)."""
    for name, score in zip(LANDMARKS, scores, strict=True):
        LANDMARK_CONFIDENCE.labels(name).observe(calibrated_confidence(float(score)))
    for problem in chosen.problems:
        LANDMARK_IMPLAUSIBLE.labels(problem_code(problem).value).inc()


def landmark_messages(
    chosen: ChosenLandmarks, scores: np.ndarray, box: Letterbox
) -> list[events_pb2.Landmark]:
    """The landmarks the split used, in both frames, with calibrated confidence and the estimated mark."""
    out = []
    for k, (name, point) in enumerate(zip(LANDMARKS, (chosen.carina, chosen.left_hilum), strict=True)):
        sx, sy = box.to_source(np.asarray(point))
        out.append(
            events_pb2.Landmark(
                name=name,
                model=events_pb2.Point(x=float(point[0]), y=float(point[1])),
                source=events_pb2.Point(x=float(sx), y=float(sy)),
                confidence=float(chosen.confidence[k]),
                estimated=chosen.estimated,
                detector_score=float(scores[k]),
            )
        )
    return out


class QuantificationWorker(ModelStage[Inputs]):
    """StudySegmented batch -> landmarks -> regions, RALE, SEG/SR -> StudyQuantified per study."""

    def load(self, event: Event) -> Inputs:
        msg: events_pb2.StudySegmented = event.message
        blobs = self.parts.blobs
        lungs = bytes_array(blobs.get(msg.lungs))
        if lungs.shape != (MODEL_INPUT, MODEL_INPUT):
            raise PermanentError(f"lung map has shape {lungs.shape}, expected ({MODEL_INPUT}, {MODEL_INPUT})")
        return Inputs(batch.load_display(blobs, msg.display_image), lungs.astype(np.uint8))

    def infer(self, items: Sequence[Inputs]) -> dict[str, np.ndarray]:
        images = [it.display for it in items]
        return batch.infer_images(self.parts.triton, self.parts.model, images, ("landmarks", "confidence"))

    def result(
        self,
        src: events_pb2.StudySegmented,
        item: Inputs,
        out: dict[str, np.ndarray],
        j: int,
        version: common_pb2.ModelVersion,
    ) -> events_pb2.StudyQuantified:
        xy, conf = out["landmarks"][j], out["confidence"][j]
        blobs = self.parts.blobs
        image = model_input(item.display)[0, 0]
        rows, cols = src.metadata.rows or MODEL_SIZE, src.metadata.columns or MODEL_SIZE
        gate = assess_quality(image, item.lungs, src.member_agreement)
        QUALITY_VERDICTS.labels(verdict=gate.verdict).inc()
        chosen = choose_landmarks(item.lungs, tuple(map(float, xy[0])), tuple(map(float, xy[1])), tuple(conf))
        msg = events_pb2.StudyQuantified(
            study_key=src.study_key,
            patient_key=src.patient_key,
            landmarks=landmark_messages(chosen, conf, Letterbox(rows, cols, MODEL_INPUT)),
            warnings=list(gate.reasons),
            model=version,
            ingested_at=src.ingested_at,
            quality=events_pb2.QualityGate(
                verdict=convert.VERDICT_ENUMS[gate.verdict],
                reasons=gate.reasons,
                chest_score=gate.chest_score,
            ),
        )
        if gate.verdict == "refused":
            return msg  # not measured: no regions, no RALE, no SEG/SR (the reasons say why)
        record_landmark_health(chosen, conf)
        if chosen.estimated:
            LANDMARK_FALLBACKS.inc()
        q = quantify_study(image, item.lungs, chosen)
        msg.warnings.extend(q.warnings)
        if src.member_agreement < self.parts.settings.min_member_agreement:
            msg.warnings.append(f"segmentation members disagree (agreement {src.member_agreement:.2f})")
        try:
            seg, sr = dicom_outputs(blobs.get(src.deidentified_dicom), q, rows, cols)
        except (ValueError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
            raise PermanentError(f"cannot write DICOM SEG/SR for this study: {exc}") from exc
        msg.regions.extend(q.measurements)
        msg.rale_total = q.rale_total
        msg.region_map.CopyFrom(blobs.put(array_bytes(q.regions.astype(np.uint8)), NPY))
        msg.dicom_seg.CopyFrom(blobs.put(seg, "application/dicom"))
        msg.dicom_sr.CopyFrom(blobs.put(sr, "application/dicom"))
        msg.landmarks_estimated = chosen.estimated
        return msg


class QuantificationServicer(quantification_pb2_grpc.QuantificationServiceServicer):
    def __init__(self, parts: StageParts):
        self.parts = parts

    def GetQuantification(
        self, request: quantification_pb2.GetQuantificationRequest, context: grpc.ServicerContext
    ):
        return get_result(self.parts.table, request.study_key, "quantification")

    def GetDicomOutputs(
        self, request: quantification_pb2.GetQuantificationRequest, context: grpc.ServicerContext
    ):
        msg = get_result(self.parts.table, request.study_key, "quantification")
        return quantification_pb2.DicomOutputs(
            study_key=msg.study_key,
            segmentation=self.parts.blobs.get(msg.dicom_seg),
            structured_report=self.parts.blobs.get(msg.dicom_sr),
            segmentation_ref=msg.dicom_seg,
            structured_report_ref=msg.dicom_sr,
        )


def build(settings: QuantificationSettings) -> ServiceRuntime:
    api = GrpcApi.of(quantification_pb2, quantification_pb2_grpc, "QuantificationService")
    stage, model, result = FLOW["quantification"], settings.landmark_model, events_pb2.StudyQuantified
    return model_stage_service(
        settings, stage, model, result, QuantificationWorker, api, QuantificationServicer
    )


def main() -> None:
    build(QuantificationSettings()).run()
