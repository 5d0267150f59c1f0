"""The Comprehensive 3D SR: a TID 1500 Measurement Report with one TID 1410 group per lung zone
(referencing its SEG segment) and, when given, a TID 1501 group with the RALE total."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Final

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxrmesh.dicom.outputs.common import (
    ALGORITHM_NAME,
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SR_SERIES_NUMBER,
    ZONE_SEGMENTS,
    check_version,
    derived_uid,
    device_observer_context,
    make_reproducible,
    pseudonym_names_ok,
    source_meta,
    source_timestamp,
    tracking_uid,
)

# Private coding scheme for concepts that have no standard code (PS3.16: private designators start
# with "99"); declared in each object's Coding Scheme Identification Sequence.
PRIVATE_SCHEME: Final[str] = "99CXRMESH"
_PRIVATE_SCHEME_ITEM_ARGS: Final[dict[str, str]] = {
    "designator": PRIVATE_SCHEME,
    "name": "cxrmesh chest radiograph lung-zone measurements",
    "responsible_organization": "cxrmesh",
}


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# Measurement concept names. Standard codes are used where one exists (SCT "Mean" as derivation);
# the quantities themselves are cxrmesh-specific, hence private.
CODE_LUNG_AREA_PERCENT: Final[Code] = _private("CXM001", "Percent of lung area")
CODE_DISPLAY_INTENSITY: Final[Code] = _private("CXM002", "Display intensity")
CODE_OPACIFIED_PERCENT: Final[Code] = _private("CXM003", "Opacified percent of lung zone")
CODE_RALE_EXTENT: Final[Code] = _private("CXM010", "RALE extent score")
CODE_RALE_DENSITY: Final[Code] = _private("CXM011", "RALE density score")
CODE_RALE_ZONE_SCORE: Final[Code] = _private("CXM012", "RALE zone score")
CODE_RALE_TOTAL: Final[Code] = _private("CXM013", "RALE total score")
# How the upper/lower zone boundary was placed (a qualitative evaluation on every zone group): at the
# detected left hilum, or at one estimated from the lung outline because the detected pair was
# implausible (cxrmesh.analysis.landmarks). A reader must see that the zones are estimated.
CODE_ZONE_BOUNDARY_METHOD: Final[Code] = _private("CXM020", "Zone boundary method")
CODE_BOUNDARY_DETECTED: Final[Code] = _private("CXM021", "Left hilum detected")
CODE_BOUNDARY_ESTIMATED: Final[Code] = _private("CXM022", "Left hilum estimated from lung outline")

UNIT_PERCENT: Final[Code] = codes.UCUM.Percent  # UCUM "%"
UNIT_NONE: Final[Code] = codes.UCUM.NoUnits  # UCUM "1"

# The reported procedure (TID 1500 "Procedure reported", CID 100 is extensible).
PROCEDURE_REPORTED: Final[Code] = codes.SCT.ChestImaging  # SCT 413815006


def _positive_pair(value: object) -> bool:
    try:
        values = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return False
    return len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)


def _image_library_images(source: Dataset) -> list[Dataset] | None:
    """The source for the SR's Image Library (TID 1600), or None when it cannot be described.

    highdicom describes a CR/DX entry with TID 1603 descriptors and insists on Patient Orientation
    and a valid Imager Pixel Spacing (Type 3 in CR, absent or ``0\\0`` on uncalibrated readers).
    The library is optional in TID 1500; the source stays referenced by the evidence sequence, the
    segmentation frames' source image and the RALE total group.
    """
    orientation = source.get("PatientOrientation")
    if orientation is None or len(orientation) != 2 or not _positive_pair(source.get("ImagerPixelSpacing")):
        return None
    meta = Dataset()
    for kw in ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns", "PatientOrientation"):
        setattr(meta, kw, source.get(kw))
    meta.ImagerPixelSpacing = source.ImagerPixelSpacing
    return [meta]


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _coding_schemes() -> list[CodingSchemeIdentificationItem]:
    return [CodingSchemeIdentificationItem(**_PRIVATE_SCHEME_ITEM_ARGS)]


def _finite(value: object, what: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not a number: {value!r}") from exc
    if not math.isfinite(v):
        raise ValueError(f"{what} is not finite: {value!r}")
    return v


def _rale_scores(rale: Mapping[str, Mapping[str, int]], key: str) -> tuple[int, int, int]:
    if key not in rale:
        raise ValueError(f"RALE scores lack region {key!r}")
    q = rale[key]
    extent, density = int(q["extent"]), int(q["density"])
    if not 0 <= extent <= 4:
        raise ValueError(f"RALE extent of {key} must be 0..4, got {extent}")
    if not 0 <= density <= 3:
        raise ValueError(f"RALE density of {key} must be 0..3, got {density}")
    score = int(q.get("score", extent * density))
    if score != extent * density:
        raise ValueError(f"RALE score of {key} is {score}, expected extent x density = {extent * density}")
    return extent, density, score


def _check_segmentation(segmentation: Dataset, source: Dataset) -> None:
    if str(segmentation.StudyInstanceUID) != str(source.StudyInstanceUID):
        raise ValueError("segmentation and source belong to different studies")
    referenced = {
        str(inst.ReferencedSOPInstanceUID)
        for series in segmentation.get("ReferencedSeriesSequence", [])
        for inst in series.get("ReferencedInstanceSequence", [])
    }
    if str(source.SOPInstanceUID) not in referenced:
        raise ValueError("segmentation was not derived from this source image")
    numbers = sorted(int(s.SegmentNumber) for s in segmentation.SegmentSequence)
    if numbers != [zs.number for zs in ZONE_SEGMENTS]:
        raise ValueError(f"segmentation must have segments 1..4, got {numbers}")


def make_measurement_report(
    source: Dataset,
    segmentation: hd.seg.Segmentation,
    table: dict[str, dict],
    rale: dict[str, dict[str, int]] | None,
    rale_total: int | None,
    *,
    software_version: str,
    series_number: int = SR_SERIES_NUMBER,
    landmarks_estimated: bool = False,
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report on ``source`` whose zone groups reference ``segmentation``.

    ``table`` is :func:`cxrmesh.analysis.quantify.region_table` output (fractions in 0..1; written as
    percent). ``rale`` maps region key -> {"extent", "density"[, "score"]}; ``rale_total`` is the
    0..48 sum. Either may be None; if both are given they must agree. ``landmarks_estimated``: the
    zone boundary comes from an estimated left hilum; every zone group says so.
    """
    version = check_version(software_version)
    meta = source_meta(source)
    _check_segmentation(segmentation, meta)
    src_uid = str(meta.SOPInstanceUID)
    algo = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=version)

    payload: dict[str, object] = {
        "seg": str(segmentation.SOPInstanceUID),
        "zones": {},
        "boundary": "estimated" if landmarks_estimated else "detected",
    }
    boundary = hd.sr.QualitativeEvaluation(
        name=CODE_ZONE_BOUNDARY_METHOD,
        value=CODE_BOUNDARY_ESTIMATED if landmarks_estimated else CODE_BOUNDARY_DETECTED,
    )
    groups: list = []
    zone_scores: dict[str, tuple[int, int, int]] = {}
    for zs in ZONE_SEGMENTS:
        if zs.key not in table:
            raise ValueError(f"measurement table lacks region {zs.key!r}")
        row = table[zs.key]
        area = _finite(row["area_fraction"], f"{zs.key}.area_fraction")
        mean = _finite(row["mean_intensity"], f"{zs.key}.mean_intensity")
        opac = _finite(row["opacity_fraction"], f"{zs.key}.opacity_fraction")
        for name, v in (("area_fraction", area), ("opacity_fraction", opac)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{zs.key}.{name} must be a fraction in 0..1, got {v}")
        site = hd.sr.FindingSite(anatomic_location=zs.zone, laterality=zs.laterality)
        measurements = [
            hd.sr.Measurement(name=CODE_LUNG_AREA_PERCENT, value=area * 100.0, unit=UNIT_PERCENT),
            hd.sr.Measurement(
                name=CODE_DISPLAY_INTENSITY, value=mean, unit=UNIT_NONE, derivation=codes.SCT.Mean
            ),
            hd.sr.Measurement(name=CODE_OPACIFIED_PERCENT, value=opac * 100.0, unit=UNIT_PERCENT),
        ]
        zone_payload: dict[str, object] = {"area": area, "mean": mean, "opacity": opac}
        if rale is not None:
            extent, density, score = zone_scores[zs.key] = _rale_scores(rale, zs.key)
            measurements += [
                hd.sr.Measurement(name=CODE_RALE_EXTENT, value=extent, unit=UNIT_NONE),
                hd.sr.Measurement(name=CODE_RALE_DENSITY, value=density, unit=UNIT_NONE),
                hd.sr.Measurement(name=CODE_RALE_ZONE_SCORE, value=score, unit=UNIT_NONE),
            ]
            zone_payload["rale"] = [extent, density, score]
        payload["zones"][zs.key] = zone_payload  # type: ignore[index]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uid(src_uid, zs.key), identifier=zs.label
                ),
                referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(
                    segmentation, segment_number=zs.number
                ),
                finding_type=zs.zone,
                finding_sites=[site],
                algorithm_id=algo,
                measurements=measurements,
                qualitative_evaluations=[boundary],
            )
        )

    if rale is not None:
        computed = sum(s for _, _, s in zone_scores.values())
        if rale_total is None:
            rale_total = computed
        elif int(rale_total) != computed:
            raise ValueError(f"rale_total {rale_total} != sum of zone scores {computed}")
    if rale_total is not None:
        total = int(rale_total)
        if not 0 <= total <= 48 or total != rale_total:
            raise ValueError(f"rale_total must be an integer in 0..48, got {rale_total!r}")
        payload["rale_total"] = total
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("tracking", src_uid, "rale_total"), identifier="RALE total"
                ),
                finding_sites=[
                    hd.sr.FindingSite(anatomic_location=codes.SCT.Lung, laterality=codes.cid244.Bilateral)
                ],
                algorithm_id=algo,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(meta)],
                measurements=[hd.sr.Measurement(name=CODE_RALE_TOTAL, value=total, unit=UNIT_NONE)],
            )
        )

    observation_context = device_observer_context()
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=_image_library_images(source),
    )
    da, tm = source_timestamp(meta)
    with pseudonym_names_ok():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[meta, segmentation],
            content=report,
            series_instance_uid=derived_uid("sr-series", src_uid, version),
            series_number=series_number,
            sop_instance_uid=derived_uid("sr", src_uid, version, _digest(payload)),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME,
            software_versions=version,
            device_serial_number=DEVICE_SERIAL_NUMBER,
            series_description="cxrmesh lung zone measurements",
            is_complete=True,
            is_final=False,
            is_verified=False,
            coding_schemes=_coding_schemes(),
            content_date=da,
            content_time=tm,
            series_date=da,
            series_time=tm,
        )
    make_reproducible(sr, da, tm)
    return sr
