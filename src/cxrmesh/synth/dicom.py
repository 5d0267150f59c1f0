"""Write one synthetic chest radiograph as a conformant CR or DX DICOM file.

The corpus must look like what a PACS would send: the right IOD for the site's modality, the
pixel-interpretation attributes the preprocessing contract reads (rescale, window, VOI LUT
function, photometric interpretation), and a full set of fake PHI for the de-identification
stage to remove. Output is byte-deterministic (UIDs and all timestamps derive from the inputs,
never from the clock) so that a corpus can be regenerated and diffed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pydicom.valuerep import format_number_as_ds

from cxrmesh.analysis.pixels import PixelModule
from cxrmesh.synth.phi import PatientPHI, StudyPHI, institution_address, site_code
from cxrmesh.synth.sites import Site

ComputedRadiographyImageStorage = UID("1.2.840.10008.5.1.4.1.1.1")
SOP_CLASS_BY_MODALITY: dict[str, UID] = {
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
}
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, JPEG2000Lossless)

# Fixed offsets from the study start so every timestamp is a function of the input.
_SERIES_OFFSET = timedelta(seconds=30)
_ACQUISITION_OFFSET = timedelta(seconds=75)
_CONTENT_OFFSET = timedelta(seconds=95)
_CREATION_OFFSET = timedelta(seconds=140)


def deterministic_uid(*parts: object) -> str:
    """A '2.25.' UID derived from SHA-256 of the parts, so a regenerated corpus keeps its UIDs.

    The first 128 bits of the hash are stamped as an RFC 9562 version-8 UUID (as the 2.25 root
    expects a UUID integer); the decimal form has no leading zeros and the UID is <= 44 chars.
    """
    h = hashlib.sha256()
    for part in parts:
        b = str(part).encode("utf-8")
        h.update(len(b).to_bytes(8, "big"))  # length-prefix: ("ab", "c") != ("a", "bc")
        h.update(b)
    raw = bytearray(h.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8 (custom)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    return f"2.25.{int.from_bytes(raw, 'big')}"


@dataclass(frozen=True)
class RadiographMeta:
    """Everything about one radiograph other than its pixels."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    study_datetime: datetime
    series_number: int
    instance_number: int
    study_description: str
    view_position: str  # "PA" or "AP"
    pixel: PixelModule
    pixel_spacing_mm: tuple[float, float]  # (row spacing, column spacing)
    kvp: float
    exposure_mas: float
    sid_mm: float  # source-image (detector) distance
    patient_age_years: int
    patient: PatientPHI
    study: StudyPHI
    site: Site


def write_radiograph(path: Path, stored: np.ndarray, meta: RadiographMeta, transfer_syntax: str) -> None:
    """Write `stored` (2-D uint16 stored values) with `meta` as a CR/DX file at `path`.

    The file is written to a temporary name and renamed, so a crashed or parallel generator never
    leaves a truncated object that looks valid.
    """
    ts = _check_transfer_syntax(transfer_syntax)
    arr = _check_pixels(stored, meta.pixel)
    _check_meta(meta)
    ds = build_dataset(arr, meta)
    ds.file_meta = _file_meta(meta, ts)
    if ts == JPEG2000Lossless:
        # generate_instance_uid defaults to True in pydicom 3 and would replace our
        # deterministic SOP Instance UID with a random one.
        ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    else:
        ds.PixelData = arr.astype("<u2", copy=False).tobytes()
        ds["PixelData"].VR = "OW"
    path = Path(path)
    # Per-process temp name (not mkstemp) so the file gets umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        dcmwrite(tmp, ds, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_transfer_syntax(transfer_syntax: str) -> UID:
    ts = UID(str(transfer_syntax))
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        names = ", ".join(f"{u.name} ({u})" for u in SUPPORTED_TRANSFER_SYNTAXES)
        raise ValueError(f"unsupported transfer syntax {transfer_syntax!r}; supported: {names}")
    return ts


def _check_pixels(stored: np.ndarray, pixel: PixelModule) -> np.ndarray:
    """Validate stored values; returns a C-contiguous little-endian uint16 view/copy."""
    if not isinstance(stored, np.ndarray):
        raise ValueError(f"stored must be a numpy array, got {type(stored).__name__}")
    if stored.ndim != 2:
        raise ValueError(f"stored must be 2-D (rows, columns), got shape {stored.shape}")
    if stored.dtype.kind != "u" or stored.dtype.itemsize != 2:
        raise ValueError(f"stored must be uint16, got dtype {stored.dtype}")
    rows, cols = stored.shape
    if not (0 < rows <= 0xFFFF and 0 < cols <= 0xFFFF):
        raise ValueError(f"stored shape {stored.shape} is outside 1..65535 rows/columns")
    if not 1 <= pixel.bits_stored <= 16:
        raise ValueError(f"bits_stored must be within 1..16, got {pixel.bits_stored}")
    vmax = int(stored.max())
    limit = (1 << pixel.bits_stored) - 1
    if vmax > limit:
        raise ValueError(
            f"stored values exceed bits_stored={pixel.bits_stored}: max {vmax} > {limit} "
            "(the high bits would be masked off by readers)"
        )
    return np.ascontiguousarray(stored, dtype="<u2")


def _check_meta(meta: RadiographMeta) -> None:
    if meta.site.modality not in SOP_CLASS_BY_MODALITY:
        raise ValueError(f"unsupported modality {meta.site.modality!r}; expected CR or DX")
    if meta.view_position not in ("PA", "AP"):
        raise ValueError(f"view_position must be 'PA' or 'AP', got {meta.view_position!r}")
    if meta.pixel.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {meta.pixel.photometric!r}")
    if min(meta.pixel_spacing_mm) <= 0:
        raise ValueError(f"pixel_spacing_mm must be positive, got {meta.pixel_spacing_mm}")
    if not 0 <= meta.patient_age_years <= 999:
        raise ValueError(f"patient_age_years must be within 0..999, got {meta.patient_age_years}")
    for name in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        if not UID(getattr(meta, name)).is_valid:
            raise ValueError(f"{name} is not a valid UID: {getattr(meta, name)!r}")


def _file_meta(meta: RadiographMeta, ts: UID) -> FileMetaDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = SOP_CLASS_BY_MODALITY[meta.site.modality]
    fm.MediaStorageSOPInstanceUID = meta.sop_instance_uid
    fm.TransferSyntaxUID = ts
    return fm


def _ds(x: float) -> str:
    """Format a number as a valid DS (<= 16 chars); pydicom would otherwise warn or write too long."""
    return format_number_as_ds(float(x))


def _da(dt: datetime) -> str:
    return dt.strftime("%Y%m%d")


def _tm(dt: datetime) -> str:
    return dt.strftime("%H%M%S.%f" if dt.microsecond else "%H%M%S")


def build_dataset(arr: np.ndarray, meta: RadiographMeta) -> Dataset:
    """The dataset without Pixel Data (split out so tests and tools can inspect it cheaply)."""
    site, pix, pat, stu = meta.site, meta.pixel, meta.patient, meta.study
    is_dx = site.modality == "DX"
    mono1 = pix.photometric == "MONOCHROME1"
    t0 = meta.study_datetime
    ds = Dataset()

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    created = t0 + _CREATION_OFFSET
    ds.InstanceCreationDate = _da(created)
    ds.InstanceCreationTime = _tm(created)
    ds.SOPClassUID = SOP_CLASS_BY_MODALITY[site.modality]
    ds.SOPInstanceUID = meta.sop_instance_uid

    # General Study
    ds.StudyDate = _da(t0)
    ds.StudyTime = _tm(t0)
    ds.AccessionNumber = stu.accession_number
    ds.StudyDescription = meta.study_description
    ds.ReferringPhysicianName = stu.referring_physician
    ds.StudyInstanceUID = meta.study_instance_uid
    ds.StudyID = stu.study_id

    # General Series (+ CR Series / DX Series)
    series_t = t0 + _SERIES_OFFSET
    ds.SeriesDate = _da(series_t)
    ds.SeriesTime = _tm(series_t)
    ds.Modality = site.modality
    ds.SeriesDescription = f"CHEST {meta.view_position}"
    ds.PerformingPhysicianName = stu.performing_physician
    ds.OperatorsName = stu.operator
    ds.SeriesInstanceUID = meta.series_instance_uid
    ds.SeriesNumber = meta.series_number
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = meta.view_position
    if is_dx:
        ds.PresentationIntentType = "FOR PRESENTATION"

    # General Equipment
    ds.Manufacturer = site.manufacturer
    ds.InstitutionName = site.institution
    ds.InstitutionAddress = institution_address(site.name)
    ds.StationName = stu.station_name
    ds.ManufacturerModelName = site.model_name
    ds.DeviceSerialNumber = stu.device_serial_number

    # Patient
    ds.PatientName = pat.patient_name
    ds.PatientID = pat.patient_id
    ds.IssuerOfPatientID = site_code(site.name)
    ds.PatientBirthDate = pat.birth_date.strftime("%Y%m%d")
    ds.PatientSex = pat.sex
    other = Dataset()
    other.PatientID = pat.other_patient_ids
    other.IssuerOfPatientID = "EMPI"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    # Retired but still sent by many modalities; de-identification must catch both forms.
    ds.OtherPatientIDs = pat.other_patient_ids
    ds.PatientAddress = pat.address
    ds.PatientTelephoneNumbers = pat.phone
    ds.PatientIdentityRemoved = "NO"

    # Patient Study
    ds.PatientAge = f"{meta.patient_age_years:03d}Y"

    # Acquisition (CR Image / DX acquisition attributes)
    ds.KVP = _ds(meta.kvp)
    ds.DistanceSourceToDetector = _ds(meta.sid_mm)
    ds.Exposure = round(meta.exposure_mas)
    ds.ExposureInuAs = round(meta.exposure_mas * 1000)

    # General Image
    acq_t = t0 + _ACQUISITION_OFFSET
    content_t = t0 + _CONTENT_OFFSET
    ds.AcquisitionDate = _da(acq_t)
    ds.AcquisitionTime = _tm(acq_t)
    ds.ContentDate = _da(content_t)
    ds.ContentTime = _tm(content_t)
    ds.InstanceNumber = meta.instance_number
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"  # the burned-in side marker identifies no-one
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    if is_dx:
        ds.ImageLaterality = "U"  # DX Anatomy Imaged: unpaired/both
        region = Dataset()
        region.CodeValue = "43799004"
        region.CodingSchemeDesignator = "SCT"
        region.CodeMeaning = "Chest"
        ds.AnatomicRegionSequence = Sequence([region])

    # Image Pixel
    rows, cols = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = pix.photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = pix.bits_stored
    ds.HighBit = pix.bits_stored - 1
    ds.PixelRepresentation = 0

    # Spacing: CR Image / DX Detector carry the imager spacing; PixelSpacing equals it since no
    # magnification correction is claimed (so no Pixel Spacing Calibration Type is needed).
    spacing = [_ds(meta.pixel_spacing_mm[0]), _ds(meta.pixel_spacing_mm[1])]
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    if is_dx:
        ds.DetectorType = "SCINTILLATOR"
        ds.DetectorConfiguration = "AREA"

    # DX Image (intensity relationship) and Modality LUT
    if is_dx:
        # +1: lower stored value = less X-ray intensity (dense tissue), which MONOCHROME1 shows
        # white; -1 for MONOCHROME2, where dense tissue has high values.
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
        ds.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
    ds.RescaleIntercept = _ds(pix.rescale_intercept)
    ds.RescaleSlope = _ds(pix.rescale_slope)
    ds.RescaleType = "US"

    # VOI LUT
    ds.WindowCenter = _ds(pix.window_center)
    ds.WindowWidth = _ds(pix.window_width)
    ds.WindowCenterWidthExplanation = "DEFAULT"
    ds.VOILUTFunction = pix.voi_lut_function

    if is_dx:
        ds.AcquisitionContextSequence = Sequence()  # type 2 in the DX IOD: present, may be empty

    return ds
