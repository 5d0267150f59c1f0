"""Admission control for an incoming DICOM: parse it, check it is a frontal chest radiograph the
preprocessing contract can handle, and decode its stored pixel values.

Every refusal is a :class:`DicomRejected` with a stable machine-readable ``code`` (the gRPC layer
maps it to INVALID_ARGUMENT and clients switch on it) and a ``reason`` that says what was found
and what is accepted, so the person at the sending modality or PACS can fix it. Checks run in a
fixed order (``read_dicom`` -> ``validate`` -> ``decode_pixels``) so each fault has one code.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Final

import numpy as np
import pydicom
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

MAX_DICOM_BYTES: Final[int] = 128 * 1024 * 1024
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

# Every code read_dicom/validate/decode_pixels can raise (too_large is the only one with no
# example in tests/dicom_faults.py: a 128 MiB file is not worth building).
REJECTION_CODES: Final[tuple[str, ...]] = (
    "too_large",
    "not_dicom",
    "truncated",
    "missing_uid",
    "unsupported_modality",
    "for_processing",
    "not_chest",
    "not_frontal",
    "no_pixel_data",
    "unsupported_transfer_syntax",
    "multi_frame",
    "bad_photometric",
    "bad_bit_depth",
    "bad_size",
    "pixel_length_mismatch",
    "undecodable_pixels",
    "blank_image",
)


class DicomRejected(ValueError):
    """A DICOM the mesh refuses; `code` is stable (machine-readable), `reason` tells a person what to fix."""

    def __init__(self, code: str, reason: str) -> None:
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


def _accepted_syntaxes() -> str:
    return "uncompressed (implicit/explicit VR), JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE"


# ---------------------------------------------------------------------------------------------
# read_dicom


def read_dicom(raw: bytes) -> Dataset:
    """Parse a Part 10 file from bytes, refusing what is not DICOM, too large or cut short.

    pydicom reads a truncated file without complaint (a short Pixel Data value, or a file that
    simply ends early), so the element structure is walked first to tell "cut short" from
    "malformed" - the two need different fixes at the sender (resend vs. fix the exporter).
    """
    raw = bytes(raw)
    if len(raw) > MAX_DICOM_BYTES:
        raise DicomRejected(
            "too_large",
            f"file is {len(raw)} bytes; the limit is {MAX_DICOM_BYTES} bytes ({MAX_DICOM_BYTES >> 20} MiB). "
            "Send a single-frame radiograph (compressed with JPEG 2000 if needed).",
        )
    if len(raw) < 132 or raw[128:132] != b"DICM":
        what = "empty" if not raw else f"{len(raw)} bytes starting {raw[:8].hex()}"
        raise DicomRejected(
            "not_dicom",
            f"not a DICOM Part 10 file ({what}; no 'DICM' marker at byte 128). "
            "Send the file as exported by the PACS/modality, with its 128-byte preamble and "
            "file meta header.",
        )
    where = _find_truncation(raw)
    if where is not None:
        raise DicomRejected(
            "truncated",
            f"file is cut short: {where}. The transfer was probably interrupted; resend the complete file.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(raw), force=False)
            for _ in ds.iterall():  # parse every element now so malformed values fail here
                pass
    except Exception as exc:  # untrusted input: any parser failure is a refusal, never a crash
        raise DicomRejected(
            "not_dicom",
            f"the DICOM structure could not be parsed ({type(exc).__name__}: {str(exc)[:200]}). "
            "Re-export the image from the PACS/modality.",
        ) from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise DicomRejected(
            "not_dicom",
            "the file meta header has no (0002,0010) Transfer Syntax UID, so its encoding is unknown. "
            "Re-export the image as a conformant Part 10 file.",
        )
    return ds


_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
_KNOWN_VRS = _LONG_VRS | frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH"}
    | {b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class _Short(Exception):
    """The byte stream ended inside an element."""


class _Unparseable(Exception):
    """The structure is not what the walker understands; leave judgement to pydicom."""


def _find_truncation(raw: bytes) -> str | None:
    """Describe where the file ends inside an element, or None if every element is complete."""
    try:
        pos, ts = _walk_meta(raw, 132)
        if ts is None:
            return None
        body = raw[pos:]
        if ts == DeflatedExplicitVRLittleEndian:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body)
            except zlib.error as exc:
                raise _Unparseable from exc
            if not inflater.eof:
                return "the deflated data set stream ends before its end marker"
        implicit = ts == ImplicitVRLittleEndian
        little = ts != ExplicitVRBigEndian
        _walk(body, 0, len(body), implicit=implicit, little=little, until=None)
    except _Short as short:
        return str(short)
    except _Unparseable:
        return None
    return None


def _walk_meta(raw: bytes, pos: int) -> tuple[int, UID | None]:
    """Walk the explicit-VR little-endian group 0002 header; returns (end, transfer syntax)."""
    ts: UID | None = None
    meta_end: int | None = None  # from File Meta Information Group Length, when present
    while pos + 4 <= len(raw):
        group = struct.unpack_from("<H", raw, pos)[0]
        if group != 0x0002:
            break
        tag, vr, length, hdr = _header(raw, pos, len(raw), implicit=False, little=True)
        if pos + hdr + length > len(raw):
            raise _Short(f"the file meta header ends inside element {_fmt(tag)}")
        if tag == 0x00020000 and vr == b"UL" and length == 4:
            meta_end = pos + hdr + 4 + struct.unpack_from("<L", raw, pos + hdr)[0]
        if tag == 0x00020010:
            ts = UID(raw[pos + hdr : pos + hdr + length].rstrip(b"\x00 ").decode("ascii", "replace"))
        pos += hdr + length
    else:
        if pos < len(raw):
            raise _Short(f"the file ends inside the file meta header at byte {pos}")
    if meta_end is not None and meta_end > len(raw):
        raise _Short(f"the file meta header declares {meta_end} bytes but the file has only {len(raw)}")
    return pos, ts


def _header(buf: bytes, pos: int, end: int, *, implicit: bool, little: bool) -> tuple[int, bytes, int, int]:
    """Decode one element header: (tag, VR, value length, header size)."""
    e = "<" if little else ">"
    if pos + 8 > end:
        raise _Short(f"{end - pos} stray bytes at byte {pos} where an element header should start")
    group, elem = struct.unpack_from(f"{e}HH", buf, pos)
    tag = (group << 16) | elem
    if group == 0xFFFE or implicit:
        return tag, b"", struct.unpack_from(f"{e}L", buf, pos + 4)[0], 8
    vr = buf[pos + 4 : pos + 6]
    if vr not in _KNOWN_VRS:
        raise _Unparseable
    if vr in _LONG_VRS:
        if pos + 12 > end:
            raise _Short(f"the file ends inside the header of element {_fmt(tag)}")
        return tag, vr, struct.unpack_from(f"{e}L", buf, pos + 8)[0], 12
    return tag, vr, struct.unpack_from(f"{e}H", buf, pos + 6)[0], 8


def _walk(buf: bytes, pos: int, end: int, *, implicit: bool, little: bool, until: int | None) -> int:
    """Walk elements from pos; stop at `until` (a delimiter tag) or at `end`."""
    while pos < end:
        tag, vr, length, hdr = _header(buf, pos, end, implicit=implicit, little=little)
        pos += hdr
        if until is not None and tag == until:
            return pos
        if length == _UNDEFINED:
            # Undefined-length sequence or encapsulated pixel data: walk items to the delimiter.
            # A UN value of undefined length is encoded implicit VR little endian (PS3.5 6.2.2).
            if vr == b"UN":
                pos = _walk_items(buf, pos, end, tag, implicit=True, little=True)
            else:
                pos = _walk_items(buf, pos, end, tag, implicit=implicit, little=little)
        else:
            if pos + length > end:
                raise _Short(
                    f"element {_fmt(tag)} declares {length} bytes but only {end - pos} remain in the file"
                )
            pos += length
    if until is not None:
        raise _Short("the file ends before the end of an undefined-length item")
    return pos


def _walk_items(buf: bytes, pos: int, end: int, owner: int, *, implicit: bool, little: bool) -> int:
    while True:
        if pos + 8 > end:
            raise _Short(f"undefined-length element {_fmt(owner)} has no sequence delimiter before the end")
        tag, _vr, length, hdr = _header(buf, pos, end, implicit=True, little=little)
        pos += hdr
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unparseable
        if length == _UNDEFINED:
            pos = _walk(buf, pos, end, implicit=implicit, little=little, until=_ITEM_END)
        else:
            if pos + length > end:
                raise _Short(
                    f"an item of element {_fmt(owner)} declares {length} bytes "
                    f"but only {end - pos} remain in the file"
                )
            pos += length


def _fmt(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# ---------------------------------------------------------------------------------------------
# validate


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


# ---------------------------------------------------------------------------------------------
# decode_pixels


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Stored pixel values (rows, columns), decoded without caching on `ds`; refuses blank images."""
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    rows, cols = int(ds.Rows), int(ds.Columns)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, _meta = get_decoder(ts).as_array(ds, index=0)
    except Exception as exc:  # decoder plugins raise many types for a corrupt stream
        raise DicomRejected(
            "undecodable_pixels",
            f"the {ts.name} pixel data could not be decoded ({type(exc).__name__}: {str(exc)[:200]}). "
            "The compressed stream is corrupt or incomplete; re-export or resend the image.",
        ) from exc
    arr = np.asarray(arr)
    if arr.shape != (rows, cols):
        raise DicomRejected(
            "undecodable_pixels",
            f"decoded pixel data has shape {arr.shape} but the header says {rows} x {cols}; "
            "the compressed stream does not match its header. Re-export the image.",
        )
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise DicomRejected(
            "blank_image",
            f"every pixel has the same stored value ({lo}); the image is blank. "
            "Check the acquisition or export and resend the actual radiograph.",
        )
    return arr
