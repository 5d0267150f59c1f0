"""The header rules of admission: is this a single-frame, frontal chest CR/DX the preprocessing
contract can display, with a pixel module and transfer syntax this installation can decode?"""

from __future__ import annotations

from typing import Final

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cxrmesh.dicom.rejection import DicomRejected

MIN_SIDE: Final[int] = 256
MAX_SIDE: Final[int] = 8192
ACCEPTED_MODALITIES: Final[frozenset[str]] = frozenset({"CR", "DX"})
FRONTAL_VIEWS: Final[frozenset[str]] = frozenset({"PA", "AP"})
# BodyPartExamined is free-ish CS text in practice ("CHEST", "THORAX", "PORT CHEST", "CHEST_PA"),
# so a value is chest if any of its words is one of these.
CHEST_WORDS: Final[frozenset[str]] = frozenset({"CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "CXR"})
NATIVE_TRANSFER_SYNTAXES: Final[frozenset[UID]] = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
)
# Compressed syntaxes we accept when an installed plugin can decode them (checked at run time).
COMPRESSED_TRANSFER_SYNTAXES: Final[frozenset[UID]] = frozenset(
    {
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        HTJ2K,
        RLELossless,
    }
)


def _accepted_syntaxes() -> str:
    return "uncompressed (implicit/explicit VR), JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE"


def _text(ds: Dataset, keyword: str) -> str:
    """A single-valued string attribute, stripped and upper-cased ('' if absent or empty)."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        value = "\\".join(str(v) for v in value)
    return str(value).strip().upper()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def validate(ds: Dataset) -> None:
    """Refuse anything that is not a single-frame, frontal chest CR/DX the pipeline can display."""
    _check_uids(ds)
    _check_what(ds)
    _check_pixel_module(ds)


def _check_uids(ds: Dataset) -> None:
    for keyword in ("StudyInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if not value:
            raise DicomRejected(
                "missing_uid",
                f"{keyword} is missing or empty; the mesh keys studies and images by it. "
                "Send the image as stored in the PACS (with its Study and SOP Instance UIDs).",
            )
        if not UID(value).is_valid:
            raise DicomRejected(
                "missing_uid",
                f"{keyword} {value[:80]!r} is not a valid UID (digits and dots, at most 64 characters). "
                "Fix the exporting system's UID generation.",
            )


def _check_what(ds: Dataset) -> None:
    modality = _text(ds, "Modality")
    if modality not in ACCEPTED_MODALITIES:
        found = f"Modality {modality!r}" if modality else "no Modality"
        raise DicomRejected(
            "unsupported_modality",
            f"found {found}; only radiographs are accepted (Modality CR or DX). "
            "CT, MR, US and other modalities cannot be analysed.",
        )
    intent = _text(ds, "PresentationIntentType")
    if intent == "FOR PROCESSING":
        raise DicomRejected(
            "for_processing",
            "this is a DX 'FOR PROCESSING' (raw detector) image; send the 'FOR PRESENTATION' image "
            "that radiologists read.",
        )
    body = _text(ds, "BodyPartExamined")
    if body:
        words = set(body.replace("_", " ").replace("-", " ").replace("\\", " ").split())
        if not words & CHEST_WORDS:
            raise DicomRejected(
                "not_chest",
                f"BodyPartExamined is {body!r}; only chest radiographs are accepted "
                "(BodyPartExamined CHEST or THORAX, or absent).",
            )
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        raise DicomRejected(
            "not_frontal",
            f"ViewPosition is {view!r}; only frontal projections are accepted (PA or AP, or absent). "
            "Lateral, oblique and decubitus views are not analysed.",
        )
    if not view:
        for item in ds.get("ViewCodeSequence", []) or []:
            meaning = str(item.get("CodeMeaning", "")).upper()
            if any(w in meaning for w in ("LATERAL", "OBLIQUE", "DECUBITUS")):
                raise DicomRejected(
                    "not_frontal",
                    f"ViewCodeSequence says {meaning.lower()!r}; only frontal (PA or AP) views are accepted.",
                )


def _check_pixel_module(ds: Dataset) -> None:
    if "PixelData" not in ds or ds.get("PixelData") in (None, b""):
        other = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        found = f"only {other}" if other else "no Pixel Data (7FE0,0010)"
        raise DicomRejected(
            "no_pixel_data",
            f"the object has {found}; send the image itself, not a report, "
            "presentation state or header-only export.",
        )
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    if not _decodable(ts):
        raise DicomRejected(
            "unsupported_transfer_syntax",
            f"transfer syntax {ts.name} ({ts}) cannot be decoded here; accepted: {_accepted_syntaxes()}. "
            "Ask the sender to transcode (e.g. to Explicit VR Little Endian or JPEG 2000).",
        )
    frames = _int(ds, "NumberOfFrames")
    if frames is not None and frames > 1:
        raise DicomRejected(
            "multi_frame",
            f"the image has {frames} frames; send each radiograph as its own single-frame object.",
        )
    samples = _int(ds, "SamplesPerPixel")
    photometric = _text(ds, "PhotometricInterpretation")
    if samples not in (None, 1) or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomRejected(
            "bad_photometric",
            f"PhotometricInterpretation {photometric or 'absent'!r} with SamplesPerPixel {samples}; "
            "only greyscale MONOCHROME1 or MONOCHROME2 with one sample per pixel is accepted "
            "(secondary captures and colour screenshots are not radiographs).",
        )
    allocated, stored, high = _int(ds, "BitsAllocated"), _int(ds, "BitsStored"), _int(ds, "HighBit")
    if (
        allocated not in (8, 16)
        or stored is None
        or not 8 <= stored <= 16
        or stored > allocated
        or (high is not None and high != stored - 1)
    ):
        raise DicomRejected(
            "bad_bit_depth",
            f"BitsAllocated {allocated}, BitsStored {stored}, HighBit {high}; accepted: "
            "BitsAllocated 8 or 16, BitsStored 8..16 and not above BitsAllocated, HighBit = BitsStored - 1.",
        )
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None or not (MIN_SIDE <= rows <= MAX_SIDE and MIN_SIDE <= cols <= MAX_SIDE):
        raise DicomRejected(
            "bad_size",
            f"image is {rows} x {cols} (rows x columns); accepted: {MIN_SIDE}..{MAX_SIDE} on each side. "
            "Send the original-resolution radiograph, not a thumbnail.",
        )
    if ts in NATIVE_TRANSFER_SYNTAXES:
        expected = rows * cols * (allocated // 8)
        got = len(ds.PixelData)
        if got < expected:
            raise DicomRejected(
                "pixel_length_mismatch",
                f"Pixel Data holds {got} bytes but {rows} x {cols} pixels of {allocated} bits need "
                f"{expected}; the header and the pixel data disagree. Re-export the image.",
            )


def _decodable(ts: UID) -> bool:
    """True if the syntax is one we accept and an installed plugin (or pydicom) can decode it."""
    if ts in NATIVE_TRANSFER_SYNTAXES:
        return True
    if ts not in COMPRESSED_TRANSFER_SYNTAXES:
        return False
    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:
        return False
