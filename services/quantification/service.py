"""Landmarks and four-region quantification: StudySegmented -> Triton cxr_landmarks -> regions.

Splits each lung at the left hilum with the project's one split rule (``cxrmesh.analysis.regions``),
measures the four regions (``cxrmesh.analysis.quantify``), estimates RALE
(``cxrmesh.analysis.rale``), writes the
region map plus a DICOM SEG and SR (``cxrmesh.dicom.outputs``) linked to the de-identified
source, and publishes StudyQuantified. Implausible landmarks or members that disagree are
reported as warnings on the study, not hidden.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import pydicom

from cxrmesh import __version__
from cxrmesh.analysis.pixels import Letterbox, model_input
from cxrmesh.analysis.quantify import region_table
from cxrmesh.analysis.rale import estimate_rale
from cxrmesh.analysis.regions import REGION_KEYS, landmark_problems, split_regions
from cxrmesh.contracts import topics
from cxrmesh.contracts.preprocessing import MODEL_SIZE
from cxrmesh.contracts.tensors import LANDMARKS, MODEL_INPUT
from cxrmesh.dicom.outputs import make_measurement_report, make_segmentation, regions_to_source, to_bytes
from cxrmesh.runtime.blobs import NPY, array_bytes, bytes_array
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Event, PermanentError
from cxrmesh.runtime.settings import QuantificationSettings
from cxrmesh.services import stage
from cxrmesh.v1 import common_pb2, events_pb2, quantification_pb2, quantification_pb2_grpc


@dataclass
class Inputs:
    display: np.ndarray  # (MODEL_SIZE, MODEL_SIZE)
    lungs: np.ndarray  # (MODEL_INPUT, MODEL_INPUT) uint8


@dataclass
class Quantified:
    regions: np.ndarray
    measurements: list[events_pb2.RegionMeasurement]
    rale_total: int
    table: dict[str, dict]
    rale: dict[str, dict[str, int]]
    warnings: list[str]


def quantify_study(
    image: np.ndarray, lungs: np.ndarray, carina: tuple[float, float], hilum: tuple[float, float]
) -> Quantified:
    """Pure: the four regions, their measurements and the RALE estimate in the model-input frame."""
    regions = split_regions(lungs, hilum)
    table = region_table(image, lungs, hilum)
    estimate = estimate_rale(table, image, lungs, hilum)
    rale = {
        k: {"extent": r.extent, "density": r.density, "score": r.score} for k, r in estimate.regions.items()
    }
    measurements = [
        events_pb2.RegionMeasurement(
            region=key,
            area_fraction=table[key]["area_fraction"],
            mean_intensity=table[key]["mean_intensity"],
            opacity_fraction=table[key]["opacity_fraction"],
            pixels=table[key]["pixels"],
            rale_extent=rale[key]["extent"],
            rale_density=rale[key]["density"],
            rale_score=rale[key]["score"],
        )
        for key in REGION_KEYS.values()
    ]
    return Quantified(
        regions, measurements, estimate.total, table, rale, landmark_problems(lungs, carina, hilum)
    )


def dicom_outputs(source_bytes: bytes, q: Quantified, rows: int, cols: int) -> tuple[bytes, bytes]:
    """DICOM SEG of the four regions (source frame) and the SR with the measurements."""
    source = pydicom.dcmread(io.BytesIO(source_bytes))
    regions_src = regions_to_source(q.regions, Letterbox(rows, cols, MODEL_INPUT))
    seg = make_segmentation(source, regions_src, software_version=__version__)
    sr = make_measurement_report(source, seg, q.table, q.rale, q.rale_total, software_version=__version__)
    return to_bytes(seg), to_bytes(sr)


class QuantificationWorker:
    def __init__(self, parts: stage.StageParts):
        self.settings = parts.settings
        self.triton, self.producer, self.table, self.blobs = (
            parts.triton,
            parts.producer,
            parts.table,
            parts.blobs,
        )

    def _load(self, event: Event) -> Inputs:
        msg: events_pb2.StudySegmented = event.message
        lungs = bytes_array(self.blobs.get(msg.lungs))
        if lungs.shape != (MODEL_INPUT, MODEL_INPUT):
            raise PermanentError(f"lung map has shape {lungs.shape}, expected ({MODEL_INPUT}, {MODEL_INPUT})")
        return Inputs(stage.load_display(self.blobs, msg.display_image), lungs.astype(np.uint8))

    def _infer(self, items: Sequence[Inputs]) -> tuple[np.ndarray, np.ndarray]:
        model = self.settings.landmark_model
        out = stage.infer_images(
            self.triton, model, [it.display for it in items], ("landmarks", "confidence")
        )
        return out["landmarks"], out["confidence"]

    def __call__(self, events: Sequence[Event]) -> list[BaseException | None]:
        results, ok, items = stage.load_all(events, self._load)
        if not ok:
            return results
        out = stage.run_model(results, ok, lambda: self._infer(items))
        if out is None:
            return results
        xy, conf = out
        model = self.settings.landmark_model
        version = common_pb2.ModelVersion(name=model, version=self.triton.model_version(model))
        pending = []
        for j, i in enumerate(ok):
            src: events_pb2.StudySegmented = events[i].message
            try:
                msg = self._quantified(src, items[j], xy[j], conf[j], version)
            except PermanentError as exc:
                results[i] = exc
                continue
            self.table.put(src.study_key, msg)
            pending.append(
                (i, src.ingested_at, self.producer.publish(topics.STUDY_QUANTIFIED, src.study_key, msg))
            )
        return stage.confirm(results, pending, "quantified")

    def _quantified(
        self, src: events_pb2.StudySegmented, item: Inputs, xy: np.ndarray, conf: np.ndarray, version
    ) -> events_pb2.StudyQuantified:
        image = model_input(item.display)[0, 0]
        carina, hilum = (float(xy[0, 0]), float(xy[0, 1])), (float(xy[1, 0]), float(xy[1, 1]))
        q = quantify_study(image, item.lungs, carina, hilum)
        warnings = list(q.warnings)
        if src.member_agreement < self.settings.min_member_agreement:
            warnings.append(f"segmentation members disagree (agreement {src.member_agreement:.2f})")
        rows, cols = src.metadata.rows or MODEL_SIZE, src.metadata.columns or MODEL_SIZE
        box = Letterbox(rows, cols, MODEL_INPUT)
        landmarks = []
        for k, name in enumerate(LANDMARKS):
            sx, sy = box.to_source(xy[k])
            landmarks.append(
                events_pb2.Landmark(
                    name=name,
                    model=events_pb2.Point(x=float(xy[k, 0]), y=float(xy[k, 1])),
                    source=events_pb2.Point(x=float(sx), y=float(sy)),
                    confidence=float(conf[k]),
                )
            )
        try:
            seg, sr = dicom_outputs(self.blobs.get(src.deidentified_dicom), q, rows, cols)
        except (ValueError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
            raise PermanentError(f"cannot write DICOM SEG/SR for this study: {exc}") from exc
        return events_pb2.StudyQuantified(
            study_key=src.study_key,
            patient_key=src.patient_key,
            landmarks=landmarks,
            regions=q.measurements,
            rale_total=q.rale_total,
            region_map=self.blobs.put(array_bytes(q.regions.astype(np.uint8)), NPY),
            warnings=warnings,
            model=version,
            dicom_seg=self.blobs.put(seg, "application/dicom"),
            dicom_sr=self.blobs.put(sr, "application/dicom"),
            ingested_at=src.ingested_at,
        )


class QuantificationServicer(quantification_pb2_grpc.QuantificationServiceServicer):
    def __init__(self, parts: stage.StageParts):
        self.parts = parts

    def GetQuantification(
        self, request: quantification_pb2.GetQuantificationRequest, context: grpc.ServicerContext
    ):
        return stage.get_result(self.parts.table, request.study_key, "quantification")

    def GetDicomOutputs(
        self, request: quantification_pb2.GetQuantificationRequest, context: grpc.ServicerContext
    ):
        msg = stage.get_result(self.parts.table, request.study_key, "quantification")
        return quantification_pb2.DicomOutputs(
            study_key=msg.study_key,
            segmentation=self.parts.blobs.get(msg.dicom_seg),
            structured_report=self.parts.blobs.get(msg.dicom_sr),
            segmentation_ref=msg.dicom_seg,
            structured_report_ref=msg.dicom_sr,
        )


def build(settings: QuantificationSettings) -> ServiceRuntime:
    return stage.stage_service(
        settings,
        group="cxrmesh-quantification",
        result_type=events_pb2.StudyQuantified,
        consumes={topics.STUDY_SEGMENTED: events_pb2.StudySegmented},
        model=settings.landmark_model,
        worker=QuantificationWorker,
        grpc_service=(
            quantification_pb2.DESCRIPTOR.services_by_name["QuantificationService"].full_name,
            quantification_pb2_grpc.add_QuantificationServiceServicer_to_server,
        ),
        servicer=QuantificationServicer,
    )


def main() -> None:
    build(QuantificationSettings()).run()


if __name__ == "__main__":
    main()
