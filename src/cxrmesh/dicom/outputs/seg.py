"""The DICOM Segmentation (SEG, BINARY) of the four lung zones, pixel-for-pixel on the source image."""

from __future__ import annotations

import hashlib

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxrmesh.analysis.regions import Region
from cxrmesh.dicom.outputs.common import (
    ALGORITHM_NAME,
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SEG_SERIES_NUMBER,
    ZONE_SEGMENTS,
    check_version,
    derived_uid,
    make_reproducible,
    pseudonym_names_ok,
    source_meta,
    source_timestamp,
    tracking_uid,
)


def algorithm_identification(software_version: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=check_version(software_version),
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
    version = check_version(software_version)
    meta = source_meta(source)
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
    da, tm = source_timestamp(meta)
    with pseudonym_names_ok():
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
    make_reproducible(seg, da, tm)
    return seg
