"""What the quantification service computes for one study, without Kafka or Triton.

The four regions (the project's one split rule, ``cxrmesh.analysis.regions``), their measurements
(``cxrmesh.analysis.quantify``) and the RALE estimate (``cxrmesh.analysis.rale``) in the model-input
frame, and the DICOM SEG and SR (``cxrmesh.dicom.outputs``) linked to the de-identified source.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom

from cxrmesh import __version__
from cxrmesh.analysis.landmarks import ChosenLandmarks
from cxrmesh.analysis.pixels import Letterbox
from cxrmesh.analysis.quantify import region_table
from cxrmesh.analysis.rale import estimate_rale
from cxrmesh.analysis.regions import REGION_KEYS, split_regions
from cxrmesh.contracts.tensors import MODEL_INPUT
from cxrmesh.dicom.outputs import make_measurement_report, make_segmentation, regions_to_source, to_bytes
from cxrmesh.v1 import events_pb2


@dataclass
class Quantified:
    regions: np.ndarray
    measurements: list[events_pb2.RegionMeasurement]
    rale_total: int
    table: dict[str, dict]
    rale: dict[str, dict[str, int]]
    warnings: list[str]
    landmarks_estimated: bool


def landmark_warnings(chosen: ChosenLandmarks) -> list[str]:
    """What a reader must know about the landmarks the split used."""
    if chosen.estimated:
        return [
            "landmarks estimated from the lung outline (zones estimated): the detector's were "
            "implausible: " + "; ".join(chosen.problems)
        ]
    return list(chosen.problems)


def quantify_study(image: np.ndarray, lungs: np.ndarray, chosen: ChosenLandmarks) -> Quantified:
    """Pure: the four regions, their measurements and the RALE estimate in the model-input frame.

    ``chosen``: the landmarks to split at (``analysis.landmarks.choose_landmarks``: the detector's
    or, when those are implausible, the estimate from the lung map).
    """
    hilum = chosen.left_hilum
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
        regions, measurements, estimate.total, table, rale, landmark_warnings(chosen), chosen.estimated
    )


def dicom_outputs(source_bytes: bytes, q: Quantified, rows: int, cols: int) -> tuple[bytes, bytes]:
    """DICOM SEG of the four regions (source frame) and the SR with the measurements."""
    source = pydicom.dcmread(io.BytesIO(source_bytes))
    regions_src = regions_to_source(q.regions, Letterbox(rows, cols, MODEL_INPUT))
    seg = make_segmentation(source, regions_src, software_version=__version__)
    sr = make_measurement_report(
        source,
        seg,
        q.table,
        q.rale,
        q.rale_total,
        software_version=__version__,
        landmarks_estimated=q.landmarks_estimated,
    )
    return to_bytes(seg), to_bytes(sr)
