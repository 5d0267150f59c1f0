"""What the SEG and the SR share: the device identity, the four zone segments, derived UIDs, the
source's metadata and dates, reproducibility fixes, and the bytes of a finished object.

See the package docstring (``cxrmesh.dicom.outputs``) for why no clock and no random source is used.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import Final

import highdicom as hd
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxrmesh.analysis.regions import REGION_KEYS, Region

MANUFACTURER: Final[str] = "cxrmesh"
ALGORITHM_NAME: Final[str] = "cxrmesh"
DEVICE_SERIAL_NUMBER: Final[str] = "cxrmesh"  # Type 1 in the SEG's Enhanced General Equipment module
# Type 2 attributes of the Patient and General Study modules every output carries (empty when the
# source lacks one); re-identification (cxrmesh.dicom.reidentify) restores exactly these
PATIENT_STUDY_TYPE2: Final[tuple[str, ...]] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
SEG_SERIES_NUMBER: Final[int] = 900
SR_SERIES_NUMBER: Final[int] = 901

# Fallback when a de-identified source carries no date at all (never the clock, see module doc).
FALLBACK_DATE: Final[str] = "19000101"
FALLBACK_TIME: Final[str] = "000000"

# Spatial attributes of the source that are not passed on to highdicom (see source_meta).
SPATIAL_KEYWORDS: Final[tuple[str, ...]] = (
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
)
PIXEL_KEYWORDS: Final[frozenset[str]] = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})


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


def device_observer_context() -> hd.sr.ObservationContext:
    """The observer of every cxrmesh SR: this software as a device, not a person (both SRs say so)."""
    return hd.sr.ObservationContext(
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


def tracking_uid(source_sop_instance_uid: str, region_key: str) -> hd.UID:
    """Tracking UID of one zone of one image: the same in the SEG segment and the SR group."""
    return derived_uid("tracking", str(source_sop_instance_uid), region_key)


def source_timestamp(source: Dataset) -> tuple[str, str]:
    """(DA, TM) for the outputs' content/series/creation date-time, from the source's own dates."""
    for date_kw, time_kw in (
        ("ContentDate", "ContentTime"),
        ("AcquisitionDate", "AcquisitionTime"),
        ("SeriesDate", "SeriesTime"),
        ("StudyDate", "StudyTime"),
    ):
        da = str(source.get(date_kw, "") or "").strip()
        if len(da) == 8 and da.isdigit():
            tm = str(source.get(time_kw, "") or "").strip() or FALLBACK_TIME
            return da, tm
    return FALLBACK_DATE, FALLBACK_TIME


def source_meta(source: Dataset) -> Dataset:
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
        if elem.keyword in PIXEL_KEYWORDS or elem.keyword in SPATIAL_KEYWORDS:
            continue
        meta.add(copy.deepcopy(elem))
    for kw in PATIENT_STUDY_TYPE2:
        if kw not in meta:
            setattr(meta, kw, None)
    if hasattr(source, "file_meta"):
        meta.file_meta = copy.deepcopy(source.file_meta)
    return meta


def make_reproducible(ds: Dataset, da: str, tm: str) -> None:
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
def pseudonym_names_ok():
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


def check_version(software_version: str) -> str:
    v = str(software_version).strip()
    if not v or len(v) > 64 or "\\" in v:
        raise ValueError(
            f"software_version must be a non-empty LO string (<= 64 chars), got {software_version!r}"
        )
    return v


def to_bytes(ds: Dataset) -> bytes:
    """PS3.10 file bytes (preamble, file meta, data set) of a highdicom or pydicom dataset."""
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
