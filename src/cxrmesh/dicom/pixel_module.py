"""The pixel rules of admission: is every header value the pixel pipeline uses physically plausible
for a chest radiograph, and does the pixel data match what the header and transfer syntax say?

Every value ``decode``, ``normalise`` and ``cxrmesh.analysis.pixels`` read is checked here first
(frames, photometric interpretation, bit depths, pixel representation, geometry, spacing, rescale,
window and LUTs, the pixel data's encoding and length), against the ranges of
:mod:`cxrmesh.contracts.limits`, each with its source. A refusal names the value, the accepted
range and what to fix.
"""

from __future__ import annotations

import math
import struct
from typing import Final

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
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

from cxrmesh.contracts import limits
from cxrmesh.dicom.rejection import DicomRejected

NATIVE_TRANSFER_SYNTAXES: Final[frozenset[UID]] = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
)
J2K_TRANSFER_SYNTAXES: Final[frozenset[UID]] = frozenset(
    {JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K}
)
JPEG_TRANSFER_SYNTAXES: Final[frozenset[UID]] = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless}
)
# Compressed syntaxes we accept when an installed plugin can decode them (checked at run time).
COMPRESSED_TRANSFER_SYNTAXES: Final[frozenset[UID]] = (
    J2K_TRANSFER_SYNTAXES | JPEG_TRANSFER_SYNTAXES | {RLELossless}
)
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) LE: the Basic Offset Table item opens encapsulated data


def text(ds: Dataset, keyword: str) -> str:
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


def _numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """All values of a numeric attribute as floats (NaN for one that is not a number); None if absent."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return [math.nan]


def check_pixel_module(ds: Dataset) -> None:
    """Refuse pixel data the pipeline cannot display as a radiograph, with the value at fault."""
    _check_present(ds)
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    _check_transfer_syntax(ts)
    _check_frames(ds)
    _check_photometric(ds)
    _check_bits(ds)
    _check_representation(ds)
    rows, cols = _check_geometry(ds)
    _check_spacing(ds, rows, cols)
    _check_rescale(ds)
    _check_window(ds)
    _check_encoding(ds, ts, rows, cols)


def _check_present(ds: Dataset) -> None:
    if "PixelData" not in ds or ds.get("PixelData") in (None, b""):
        other = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
        found = f"only {other}" if other else "no Pixel Data (7FE0,0010)"
        raise DicomRejected(
            "no_pixel_data",
            f"the object has {found}; send the image itself, not a report, "
            "presentation state or header-only export.",
        )


def _check_transfer_syntax(ts: UID) -> None:
    if not _decodable(ts):
        raise DicomRejected(
            "unsupported_transfer_syntax",
            f"transfer syntax {ts.name} ({ts}) cannot be decoded here; accepted: uncompressed (implicit/"
            "explicit VR), JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE. "
            "Ask the sender to transcode (e.g. to Explicit VR Little Endian or JPEG 2000).",
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


def _check_frames(ds: Dataset) -> None:
    if "NumberOfFrames" not in ds:
        return
    frames = _int(ds, "NumberOfFrames")
    if frames is not None and frames > 1:
        raise DicomRejected(
            "multi_frame",
            f"the image has {frames} frames; send each radiograph as its own single-frame object.",
        )
    if frames != 1:
        raise DicomRejected(
            "bad_frame_count",
            f"NumberOfFrames is {ds.get('NumberOfFrames')!r}, not a positive frame count; a radiograph has "
            "one frame (NumberOfFrames 1 or absent). The header is corrupt; re-export the image.",
        )


def _check_photometric(ds: Dataset) -> None:
    samples = _int(ds, "SamplesPerPixel")
    photometric = text(ds, "PhotometricInterpretation")
    if samples not in (None, 1) or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomRejected(
            "bad_photometric",
            f"PhotometricInterpretation {photometric or 'absent'!r} with SamplesPerPixel {samples}; "
            "only greyscale MONOCHROME1 or MONOCHROME2 with one sample per pixel is accepted "
            "(secondary captures and colour screenshots are not radiographs).",
        )
    planar = ds.get("PlanarConfiguration")
    if planar is not None and _int(ds, "PlanarConfiguration") not in (0, 1):
        raise DicomRejected(
            "bad_photometric",
            f"PlanarConfiguration is {planar!r}; it is 0 or 1 (PS3.3 C.7.6.3.1.3) and has no meaning for a "
            "greyscale image. Remove it or re-export the image.",
        )


def _check_bits(ds: Dataset) -> None:
    allocated, stored, high = _int(ds, "BitsAllocated"), _int(ds, "BitsStored"), _int(ds, "HighBit")
    low, top = limits.BITS_STORED
    if (
        allocated not in limits.BITS_ALLOCATED
        or stored is None
        or not low <= stored <= top
        or stored > allocated
        or (high is not None and high != stored - 1)
    ):
        raise DicomRejected(
            "bad_bit_depth",
            f"BitsAllocated {allocated}, BitsStored {stored}, HighBit {high}; accepted: "
            f"BitsAllocated {' or '.join(map(str, limits.BITS_ALLOCATED))}, BitsStored {low}..{top} and not "
            "above BitsAllocated, HighBit = BitsStored - 1.",
        )


def _check_representation(ds: Dataset) -> None:
    representation = _int(ds, "PixelRepresentation")
    modality = text(ds, "Modality")
    if representation not in (0, 1) or (modality == "DX" and representation != 0):
        allowed = "0 (unsigned; the DX image module allows no other)" if modality == "DX" else "0 or 1"
        raise DicomRejected(
            "bad_pixel_representation",
            f"PixelRepresentation is {ds.get('PixelRepresentation')!r} for a {modality} image; accepted: "
            f"{allowed}. Without it the stored values cannot be read; re-export the image.",
        )


def _check_geometry(ds: Dataset) -> tuple[int, int]:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    low, top = limits.MIN_SIDE, limits.MAX_SIDE
    if rows is None or cols is None or not (low <= rows <= top and low <= cols <= top):
        raise DicomRejected(
            "bad_size",
            f"image is {rows} x {cols} (rows x columns); accepted: {low}..{top} on each side. "
            "Send the original-resolution radiograph, not a thumbnail.",
        )
    if max(rows, cols) / min(rows, cols) > limits.MAX_ASPECT:
        raise DicomRejected(
            "bad_size",
            f"image is {rows} x {cols} (rows x columns), an aspect ratio of "
            f"{max(rows, cols) / min(rows, cols):.2f}; chest detectors are at most {limits.MAX_ASPECT}:1. "
            "Stitched or cropped strips are not chest radiographs; send the full frontal image.",
        )
    return rows, cols


def _check_spacing(ds: Dataset, rows: int, cols: int) -> None:
    low, top = limits.PIXEL_SPACING_MM
    field_low, field_top = limits.FIELD_MM
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _numbers(ds, keyword)
        if values is None or values == [0.0, 0.0]:  # absent, or 0\0 = uncalibrated (accepted as unknown)
            continue
        problem = None
        if len(values) != 2 or not all(math.isfinite(v) and low <= v <= top for v in values):
            problem = f"accepted: two values (row\\column) of {low}..{top} mm each"
        elif max(values) / min(values) > limits.MAX_SPACING_ANISOTROPY:
            problem = f"row and column spacing differ by more than {limits.MAX_SPACING_ANISOTROPY - 1:.0%}"
        elif not (field_low <= rows * values[0] <= field_top and field_low <= cols * values[1] <= field_top):
            problem = (
                f"the imaged field would be {rows * values[0]:.0f} x {cols * values[1]:.0f} mm; "
                f"accepted: {field_low:.0f}..{field_top:.0f} mm on each side"
            )
        if problem:
            raise DicomRejected(
                "bad_pixel_spacing",
                f"{keyword} is {ds.get(keyword)!r}: {problem}. Detectors are 0.1-0.2 mm; "
                "fix the calibration or remove the attribute.",
            )


def _check_rescale(ds: Dataset) -> None:
    slope, intercept = _numbers(ds, "RescaleSlope"), _numbers(ds, "RescaleIntercept")
    low, top = limits.RESCALE_SLOPE_ABS
    bad_slope = slope is not None and (len(slope) != 1 or not low <= abs(slope[0]) <= top)
    bad_intercept = intercept is not None and (
        len(intercept) != 1 or not abs(intercept[0]) <= limits.RESCALE_INTERCEPT_ABS_MAX
    )
    if bad_slope or bad_intercept:
        raise DicomRejected(
            "bad_rescale",
            f"RescaleSlope {ds.get('RescaleSlope')!r}, RescaleIntercept {ds.get('RescaleIntercept')!r}; "
            f"accepted: one finite slope with {low:g} <= |slope| <= {top:g} and one intercept within "
            f"+-{limits.RESCALE_INTERCEPT_ABS_MAX:g}. The modality LUT is corrupt; re-export the image.",
        )
    for item in _items(ds, "ModalityLUTSequence", "bad_rescale"):
        _check_lut(item, "ModalityLUTSequence", "bad_rescale")


def _check_window(ds: Dataset) -> None:
    centers, widths = _numbers(ds, "WindowCenter"), _numbers(ds, "WindowWidth")
    function = text(ds, "VOILUTFunction") or "LINEAR"
    if function not in limits.VOI_LUT_FUNCTIONS:
        raise DicomRejected(
            "bad_window",
            f"VOILUTFunction is {function!r}; accepted: {', '.join(sorted(limits.VOI_LUT_FUNCTIONS))} "
            "(or absent). Fix or remove it.",
        )
    if centers is not None or widths is not None:
        smallest = 1.0 if function == "LINEAR" else math.nextafter(0.0, 1.0)
        ok = (
            centers is not None
            and widths is not None
            and len(centers) == len(widths)
            and 1 <= len(centers) <= limits.MAX_WINDOWS
            and all(abs(c) <= limits.WINDOW_ABS_MAX for c in centers)
            and all(smallest <= w <= limits.WINDOW_ABS_MAX for w in widths)
        )
        if not ok:
            raise DicomRejected(
                "bad_window",
                f"WindowCenter {ds.get('WindowCenter')!r} / WindowWidth {ds.get('WindowWidth')!r} "
                f"({function}); accepted: the same number (1..{limits.MAX_WINDOWS}) of finite centres and "
                f"widths, width >= {'1' if function == 'LINEAR' else '> 0'} (PS3.3 C.11.2.1.2). "
                "Fix or remove the window.",
            )
    lut_items = _items(ds, "VOILUTSequence", "bad_window")
    if len(lut_items) > limits.MAX_WINDOWS:
        raise DicomRejected("bad_window", f"VOILUTSequence has {len(lut_items)} LUTs; accepted: at most 16.")
    for item in lut_items:
        _check_lut(item, "VOILUTSequence", "bad_window")


def _items(ds: Dataset, keyword: str, code: str) -> list[Dataset]:
    """The items of a sequence attribute ([] if absent); refuses a value that is not a sequence."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if not isinstance(value, Sequence) or not all(isinstance(item, Dataset) for item in value):
        raise DicomRejected(
            code, f"{keyword} is not a sequence of items; the LUT is corrupt. Re-export the image."
        )
    return list(value)


def _entries(data: object) -> int:
    """How many LUT entries `data` holds (16-bit words when it is bytes)."""
    if isinstance(data, bytes):
        return len(data) // 2
    if isinstance(data, (list, tuple, MultiValue)):
        return len(data)
    return 0 if data is None else 1


def _check_lut(item: Dataset, sequence: str, code: str) -> None:
    """A LUT's descriptor (entries, first value, bits) must describe its data (PS3.3 C.11.1.1.1)."""
    descriptor = item.get("LUTDescriptor")
    data = item.get("LUTData")
    problem = None
    try:
        entries, _first, bits = (int(v) for v in descriptor)
    except (TypeError, ValueError):
        problem = f"LUTDescriptor {descriptor!r} is not three numbers"
    else:
        entries = entries or 65536
        count = _entries(data)
        low, top = limits.LUT_BITS
        if not low <= bits <= top:
            problem = f"LUTDescriptor says {bits} bits per entry; accepted: {low}..{top}"
        elif count not in (entries, (entries + 1) // 2 if bits == 8 else entries):
            problem = f"LUTDescriptor says {entries} entries but LUTData holds {count}"
    if problem:
        raise DicomRejected(
            code, f"{sequence}: {problem}. The LUT is corrupt; remove it or re-export the image."
        )


def _check_encoding(ds: Dataset, ts: UID, rows: int, cols: int) -> None:
    element = ds["PixelData"]
    value = ds.PixelData
    encapsulated = ts not in NATIVE_TRANSFER_SYNTAXES
    looks_encapsulated = bool(element.is_undefined_length) or value[:4] == _ITEM_TAG
    if encapsulated != looks_encapsulated:
        says = "compressed (encapsulated)" if encapsulated else "uncompressed (native)"
        found = "encapsulated fragments" if looks_encapsulated else "native pixel values"
        raise DicomRejected(
            "pixel_encoding_mismatch",
            f"transfer syntax {ts.name} says the pixel data is {says}, but Pixel Data holds {found}; "
            "the file meta header and the data disagree. Re-export the image.",
        )
    if encapsulated:
        return
    allocated = int(ds.BitsAllocated)
    expected = rows * cols * (allocated // 8)
    got = len(value)
    if got not in (expected, expected + expected % 2):
        raise DicomRejected(
            "pixel_length_mismatch",
            f"Pixel Data holds {got} bytes but {rows} x {cols} pixels of {allocated} bits need "
            f"{expected}; the header and the pixel data disagree. Re-export the image.",
        )


def j2k_geometry(frame: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, tiles) from a JPEG 2000 codestream's SIZ marker; None if there is none."""
    start = frame.find(b"\xff\x4f\xff\x51")  # SOC + SIZ (also found inside a JP2 wrapper)
    if start < 0 or len(frame) < start + 42:
        return None
    xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz = struct.unpack_from(">8L", frame, start + 8)
    (components,) = struct.unpack_from(">H", frame, start + 40)
    if xtsiz == 0 or ytsiz == 0 or xsiz <= xosiz or ysiz <= yosiz:
        return None
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    return ysiz - yosiz, xsiz - xosiz, components, tiles
