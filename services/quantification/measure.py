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
from cxrmesh.analysis.pixels import Letterbox
from cxrmesh.analysis.quantify import region_table
from cxrmesh.analysis.rale import estimate_rale
from cxrmesh.analysis.regions import REGION_KEYS, landmark_problems, split_regions
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
