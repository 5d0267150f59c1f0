"""The four-region results as DICOM objects a PACS and viewers understand (via highdicom).

Two objects per analysed radiograph, both in the source image's study:

* a **Segmentation** (SEG, BINARY): four segments (right upper, right lower, left upper, left
  lower lung zone), one frame per segment, pixel-for-pixel on the source image;
* a **Comprehensive 3D SR** with a TID 1500 Measurement Report: one TID 1410 measurement group per
  zone, referencing its segment, plus (when given) a TID 1501 group with the RALE total.

The source passed in is the *de-identified* dataset. Patient and study attributes are copied from
it (highdicom's own copy, nothing added beyond what it has), and no date or time from the clock is
written: content, series and instance-creation date/time are taken from the source's own (already
shifted) dates, so the outputs neither reveal the real processing date (which would undo a date
shift) nor change between runs. UIDs are derived from the source SOP Instance UID, the software
version and a digest of the content, so re-processing the same input gives the same objects
(idempotent store), and different content never reuses a UID. See docs/dicom-outputs.md.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Final

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxrmesh.analysis.pixels import Letterbox
from cxrmesh.analysis.regions import REGION_KEYS, Region

MANUFACTURER: Final[str] = "cxrmesh"
ALGORITHM_NAME: Final[str] = "cxrmesh"
DEVICE_SERIAL_NUMBER: Final[str] = "cxrmesh"  # Type 1 in the SEG's Enhanced General Equipment module
SEG_SERIES_NUMBER: Final[int] = 900
SR_SERIES_NUMBER: Final[int] = 901

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

UNIT_PERCENT: Final[Code] = codes.UCUM.Percent  # UCUM "%"
UNIT_NONE: Final[Code] = codes.UCUM.NoUnits  # UCUM "1"

# The reported procedure (TID 1500 "Procedure reported", CID 100 is extensible).
PROCEDURE_REPORTED: Final[Code] = codes.SCT.ChestImaging  # SCT 413815006

# Fallback when a de-identified source carries no date at all (never the clock, see module doc).
_FALLBACK_DATE: Final[str] = "19000101"
_FALLBACK_TIME: Final[str] = "000000"

# Spatial attributes of the source that are not passed on to highdicom (see _source_meta).
_SPATIAL_KEYWORDS: Final[tuple[str, ...]] = (
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
)
_PIXEL_KEYWORDS: Final[frozenset[str]] = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})


@dataclass(frozen=True)
class ZoneSegment:
    """How one of the four regions is described in the SEG and the SR."""

    region: Region
    label: str
    zone: Code
    laterality: Code
    rgb: tuple[int, int, int]

    @property
    def key(self) -> str:
        return REGION_KEYS[self.region]

    @property
    def number(self) -> int:
        """Segment number in the SEG (== the Region label value)."""
        return int(self.region)


ZONE_SEGMENTS: Final[tuple[ZoneSegment, ...]] = (
    ZoneSegment(
        Region.RIGHT_UPPER, "Right upper lung zone", codes.SCT.UpperZoneOfLung, codes.SCT.Right, (230, 159, 0)
    ),
    ZoneSegment(
        Region.RIGHT_LOWER,
        "Right lower lung zone",
        codes.SCT.LowerZoneOfLung,
        codes.SCT.Right,
        (86, 180, 233),
    ),
    ZoneSegment(
        Region.LEFT_UPPER, "Left upper lung zone", codes.SCT.UpperZoneOfLung, codes.SCT.Left, (0, 158, 115)
    ),
    ZoneSegment(
        Region.LEFT_LOWER, "Left lower lung zone", codes.SCT.LowerZoneOfLung, codes.SCT.Left, (204, 121, 167)
    ),
)


# ---------------------------------------------------------------------------------------------
# geometry


def regions_to_source(regions_model: np.ndarray, letterbox: Letterbox) -> np.ndarray:
    """Model-frame region map (0..4, square, any size) -> (rows, cols) source-frame map, nearest.

    The letterbox geometry comes from ``letterbox.rows``/``letterbox.cols`` and the map's own size
    (so a 256² map works with a ``Letterbox`` made for 512²). Source pixel (i, j) takes the model
    pixel nearest to its centre under ``Letterbox.to_model``; computed in integers, so there are no
    rounding ties. This is the inverse of ``letterbox_labels`` (same nearest convention as PIL).
    """
    arr = np.asarray(regions_model)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"model-frame region map must be square 2-D, got shape {arr.shape}")
    if arr.dtype.kind not in "uib":
        raise ValueError(f"region map must have an integer dtype, got {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > max(Region)):
        raise ValueError(f"region labels must lie in 0..{int(max(Region))}, got {arr.min()}..{arr.max()}")
    lb = Letterbox(letterbox.rows, letterbox.cols, arr.shape[0])
    inner_r, inner_c = lb.inner
    oy, ox = lb.offset
    # nearest model index of source centre i: floor((i + 0.5) * inner / n) + offset, exactly.
    ri = (2 * np.arange(lb.rows, dtype=np.int64) + 1) * inner_r // (2 * lb.rows) + oy
    ci = (2 * np.arange(lb.cols, dtype=np.int64) + 1) * inner_c // (2 * lb.cols) + ox
    return np.ascontiguousarray(arr[np.ix_(ri, ci)], dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# UIDs, dates, source metadata


def derived_uid(*parts: object) -> hd.UID:
    """A deterministic '2.25.' UID: SHA-256 of the length-prefixed parts as a version-8 UUID.

    (``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy sources and is
    random, hence this helper.)
    """
    h = hashlib.sha256()
    for part in ("cxrmesh.dicom.outputs", *parts):
        b = str(part).encode("utf-8")
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    raw = bytearray(h.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # RFC 9562 version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    return hd.UID(f"2.25.{int.from_bytes(raw, 'big')}")


# The fixed identity of the "device" observer (TID 1004) in every report.
DEVICE_OBSERVER_UID: Final[str] = str(derived_uid("device-observer", ALGORITHM_NAME))


def tracking_uid(source_sop_instance_uid: str, region_key: str) -> hd.UID:
    """Tracking UID of one zone of one image: the same in the SEG segment and the SR group."""
    return derived_uid("tracking", str(source_sop_instance_uid), region_key)


def _source_timestamp(source: Dataset) -> tuple[str, str]:
    """(DA, TM) for the outputs' content/series/creation date-time, from the source's own dates."""
    for date_kw, time_kw in (
        ("ContentDate", "ContentTime"),
        ("AcquisitionDate", "AcquisitionTime"),
        ("SeriesDate", "SeriesTime"),
        ("StudyDate", "StudyTime"),
    ):
        da = str(source.get(date_kw, "") or "").strip()
        if len(da) == 8 and da.isdigit():
            tm = str(source.get(time_kw, "") or "").strip() or _FALLBACK_TIME
            return da, tm
    return _FALLBACK_DATE, _FALLBACK_TIME


def _source_meta(source: Dataset) -> Dataset:
    """The source's attributes without pixel data, ready for highdicom.

    * Type 2 Patient/Study attributes that highdicom reads with attribute access (and a PS3.15
      profile may have removed rather than emptied) are added *empty*: zero-length values identify
      no-one, and the output IODs require them.
    * Spatial attributes are dropped: a CR/DX has no frame of reference, and for such sources
      highdicom writes a Pixel Measures item without Slice Thickness that its own reader (0.28)
      rejects; a ``0\\0`` Pixel Spacing (uncalibrated CR) would even be invalid. The SEG frames
      are tied to the source pixel-for-pixel (Spatial Locations Preserved = YES) instead.
    """
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if not str(source.get(kw, "") or "").strip():
            raise ValueError(f"source dataset lacks {kw}")
    meta = Dataset()
    for elem in source:
        if elem.keyword in _PIXEL_KEYWORDS or elem.keyword in _SPATIAL_KEYWORDS:
            continue
        meta.add(copy.deepcopy(elem))
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
    ):
        if kw not in meta:
            setattr(meta, kw, None)
    if hasattr(source, "file_meta"):
        meta.file_meta = copy.deepcopy(source.file_meta)
    return meta


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


def _make_reproducible(ds: Dataset, da: str, tm: str) -> None:
    """Replace what highdicom takes from the clock or a random source after construction.

    * Instance Creation Date/Time: always "now" in highdicom; set to the source-derived stamp.
    * Contributing Equipment: highdicom lists itself with Contribution DateTime = now (Type 3);
      removed. (The source's acquisition equipment item it adds is copied from the source.)
    * Dimension Organization UID: random in highdicom; derived from the instance UID.
    """
    ds.InstanceCreationDate = da
    ds.InstanceCreationTime = tm
    for item in ds.get("ContributingEquipmentSequence", []):
        if str(item.get("ManufacturerModelName", "")) == "highdicom" and "ContributionDateTime" in item:
            del item.ContributionDateTime
    if "DimensionOrganizationSequence" in ds:
        dim_uid = derived_uid("dimension-organization", str(ds.SOPInstanceUID))
        for item in ds.DimensionOrganizationSequence:
            item.DimensionOrganizationUID = dim_uid
        for item in ds.get("DimensionIndexSequence", []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = dim_uid


@contextlib.contextmanager
def _pseudonym_names_ok():
    """Silence highdicom's person-name heuristic for the copied Patient's Name.

    De-identified names are single-component pseudonyms, which highdicom flags on every call (and
    the message would carry the pseudonym into the logs). Note: ``warnings.catch_warnings`` swaps
    process-global filters, so it is not thread-safe before Python 3.14; at worst another thread's
    warning is shown or hidden while an object is built.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"The string .* is unlikely to represent the intended person name",
            category=UserWarning,
        )
        yield


def _coding_schemes() -> list[CodingSchemeIdentificationItem]:
    return [CodingSchemeIdentificationItem(**_PRIVATE_SCHEME_ITEM_ARGS)]


def _check_version(software_version: str) -> str:
    v = str(software_version).strip()
    if not v or len(v) > 64 or "\\" in v:
        raise ValueError(
            f"software_version must be a non-empty LO string (<= 64 chars), got {software_version!r}"
        )
    return v


# ---------------------------------------------------------------------------------------------
# SEG


def algorithm_identification(software_version: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=_check_version(software_version),
    )


def segment_descriptions(
    source_sop_instance_uid: str, software_version: str
) -> list[hd.seg.SegmentDescription]:
    """The four segment descriptions (numbers 1..4 == ``Region`` labels)."""
    algo = algorithm_identification(software_version)
    out = []
    for zs in ZONE_SEGMENTS:
        desc = hd.seg.SegmentDescription(
            segment_number=zs.number,
            segment_label=zs.label,
            segmented_property_category=codes.cid7150.AnatomicalStructure,
            segmented_property_type=zs.zone,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=tracking_uid(source_sop_instance_uid, zs.key),
            tracking_id=zs.label,
            display_color=hd.color.CIELabColor.from_rgb(*zs.rgb),
        )
        # Laterality as Segmented Property Type Modifier (CID 244); highdicom has no argument for it.
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(zs.laterality)
        ]
        out.append(desc)
    return out


def make_segmentation(
    source: Dataset,
    regions_source: np.ndarray,
    *,
    series_number: int = SEG_SERIES_NUMBER,
    software_version: str,
) -> hd.seg.Segmentation:
    """A BINARY SEG of the four lung zones on ``source`` (the de-identified image's dataset).

    ``regions_source`` is the (Rows, Columns) label map in the source frame (``Region`` labels,
    e.g. from :func:`regions_to_source`). Always four frames, one per segment, even for an empty
    zone, so that segment k is frame k and every SR group has a frame to reference.
    """
    version = _check_version(software_version)
    meta = _source_meta(source)
    labels = np.asarray(regions_source)
    shape = (int(meta.Rows), int(meta.Columns))
    if labels.shape != shape:
        raise ValueError(f"region map shape {labels.shape} does not match the source image {shape}")
    if labels.dtype.kind not in "uib":
        raise ValueError(f"region map must have an integer dtype, got {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > max(Region)):
        raise ValueError(f"region labels must lie in 0..{int(max(Region))}")
    labels = np.ascontiguousarray(labels, dtype=np.uint8)

    src_uid = str(meta.SOPInstanceUID)
    content = hashlib.sha256(repr(labels.shape).encode() + labels.tobytes()).hexdigest()
    da, tm = _source_timestamp(meta)
    with _pseudonym_names_ok():
        seg = hd.seg.Segmentation(
            source_images=[meta],
            pixel_array=labels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(src_uid, version),
            series_instance_uid=derived_uid("seg-series", src_uid, version),
            series_number=series_number,
            sop_instance_uid=derived_uid("seg", src_uid, version, content),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME,
            software_versions=version,
            device_serial_number=DEVICE_SERIAL_NUMBER,
            content_label="LUNG_ZONES",
            content_description="cxrmesh lung zones: right/left x upper/lower",
            series_description="cxrmesh lung zones",
            omit_empty_frames=False,
            content_date=da,
            content_time=tm,
            series_date=da,
            series_time=tm,
        )
    _make_reproducible(seg, da, tm)
    return seg


# ---------------------------------------------------------------------------------------------
# SR


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
) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report on ``source`` whose zone groups reference ``segmentation``.

    ``table`` is :func:`cxrmesh.analysis.quantify.region_table` output (fractions in 0..1; written as
    percent). ``rale`` maps region key -> {"extent", "density"[, "score"]}; ``rale_total`` is the
    0..48 sum. Either may be None; if both are given they must agree.
    """
    version = _check_version(software_version)
    meta = _source_meta(source)
    _check_segmentation(segmentation, meta)
    src_uid = str(meta.SOPInstanceUID)
    algo = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=version)

    payload: dict[str, object] = {"seg": str(segmentation.SOPInstanceUID), "zones": {}}
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

    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=DEVICE_OBSERVER_UID,
                name=ALGORITHM_NAME,
                manufacturer_name=MANUFACTURER,
                model_name=ALGORITHM_NAME,
            ),
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        referenced_images=_image_library_images(source),
    )
    da, tm = _source_timestamp(meta)
    with _pseudonym_names_ok():
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
    _make_reproducible(sr, da, tm)
    return sr


# ---------------------------------------------------------------------------------------------
# bytes


def to_bytes(ds: Dataset) -> bytes:
    """PS3.10 file bytes (preamble, file meta, data set) of a highdicom or pydicom dataset."""
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
