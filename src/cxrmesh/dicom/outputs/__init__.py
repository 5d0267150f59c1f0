"""The four-region results as DICOM objects a PACS and viewers understand (via highdicom).

Three objects per analysed radiograph, all in the source image's study:

* a **Segmentation** (SEG, BINARY): four segments (right upper, right lower, left upper, left
  lower lung zone), one frame per segment, pixel-for-pixel on the source image;
* a **Comprehensive 3D SR** with a TID 1500 Measurement Report: one TID 1410 measurement group per
  zone, referencing its segment, plus (when given) a TID 1501 group with the RALE total;
* a **findings report** (Enhanced SR, TID 2000, ``findings``): the similar prior cases, the neighbours'
  diagnosis vote and the prognosis as sentences with their caveats (made by the PACS sender, which has
  the whole study).

The source passed in is the *de-identified* dataset. Patient and study attributes are copied from
it (highdicom's own copy, nothing added beyond what it has), and no date or time from the clock is
written: content, series and instance-creation date/time are taken from the source's own (already
shifted) dates, so the outputs neither reveal the real processing date (which would undo a date
shift) nor change between runs. UIDs are derived from the source SOP Instance UID, the software
version and a digest of the content, so re-processing the same input gives the same objects
(idempotent store), and different content never reuses a UID. See docs/dicom-outputs.md.

The work is split by object: ``seg`` (the Segmentation), ``sr`` (the Measurement Report), with
``common`` (identity, zone segments, UIDs, dates, bytes) and ``geometry`` (model -> source frame).
"""

from cxrmesh.dicom.outputs.common import ZONE_SEGMENTS, ZoneSegment, derived_uid, to_bytes, tracking_uid
from cxrmesh.dicom.outputs.findings import (
    FINDINGS_SERIES_NUMBER,
    Findings,
    SimilarCaseText,
    findings_text,
    make_findings_report,
)
from cxrmesh.dicom.outputs.geometry import regions_to_source
from cxrmesh.dicom.outputs.seg import make_segmentation
from cxrmesh.dicom.outputs.sr import make_measurement_report

__all__ = [
    "FINDINGS_SERIES_NUMBER",
    "ZONE_SEGMENTS",
    "Findings",
    "SimilarCaseText",
    "ZoneSegment",
    "derived_uid",
    "findings_text",
    "make_findings_report",
    "make_measurement_report",
    "make_segmentation",
    "regions_to_source",
    "to_bytes",
    "tracking_uid",
]
