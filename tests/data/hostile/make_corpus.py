"""Build the hostile DICOM corpus: small files that ingestion must refuse, each with its code and why.

Run ``.venv/bin/python tests/data/hostile/make_corpus.py`` to rebuild: it rewrites every ``*.dcm``
here, ``manifest.json`` (file -> expected rejection code, and why) and the table in ``README.md``.
tests/unit/test_hostile_dicom.py runs every file through read -> validate -> decode and expects the code.

The files start from one tiny valid radiograph (256 x 256, 8 bits, RLE, so a few kilobytes each) and
break one thing: a header value no chest radiograph has, a structure that costs the parser memory or
stack (declared gigabytes, a deflate bomb, a million items, deep nesting), or a compressed stream that
lies about its size. Everything is deterministic (fixed UIDs), so a rebuild gives the same bytes.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from cxrmesh.contracts import limits

HERE = Path(__file__).resolve().parent
ROOT = "1.2.826.0.1.3680043.10.1443"  # a fixed UID root: the corpus is rebuilt byte for byte
SIDE = 256


def base(syntax: str = RLELossless) -> Dataset:
    """A valid, tiny frontal chest CR: 256 x 256 8-bit blocks, 0.5 mm pixels (a 128 mm field)."""
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    pixels = (((rows // 32 + cols // 32) % 4) * 60 + 20).astype(np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = f"{ROOT}.3"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{ROOT}.3", f"{ROOT}.1", f"{ROOT}.2"
    ds.PatientName, ds.PatientID = "HOSTILE^CORPUS", "HOSTILE-0"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = SIDE, SIDE, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.PixelData = pixels.tobytes()
    if syntax == RLELossless:
        ds.compress(RLELossless, pixels, generate_instance_uid=False)
    elif syntax == JPEG2000Lossless:
        ds.compress(JPEG2000Lossless, pixels, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    elif syntax == JPEGBaseline8Bit:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([_even(buf.getvalue())])
        ds["PixelData"].VR = "OB"
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def write(ds: Dataset, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buf, ds, enforce_file_format=True, **kwargs)
    return buf.getvalue()


def _even(data: bytes) -> bytes:
    return data + b"\x00" * (len(data) % 2)


def _changed(changes: dict[str, object], syntax: str = RLELossless) -> Callable[[], bytes]:
    """A builder: the base file with header attributes set (None deletes one)."""

    def build() -> bytes:
        ds = base(syntax)
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return write(ds)

    return build


def _private(vr: str, value: object) -> Dataset:
    ds = base()
    ds.add_new((0x0009, 0x0010), "LO", "CXRMESH HOSTILE")
    ds.add_new((0x0009, 0x1001), vr, value)
    return ds


def _declared(vr: str, length: int, syntax: str = RLELossless) -> bytes:
    """A private element (0009,1001) that declares `length` bytes and is followed by a few."""
    marker = b"HOSTILE!"
    ds = _private(vr, marker if vr in ("OB", "UN") else marker.decode())
    little = syntax != ExplicitVRBigEndian
    if syntax != RLELossless:
        ds = _as_native(ds, syntax)
    raw = write(ds)
    order = "<" if little else ">"
    tag = struct.pack(f"{order}HH", 0x0009, 0x1001)
    if syntax == ImplicitVRLittleEndian:
        head = tag + struct.pack("<L", len(marker))
        return raw.replace(head + marker, tag + struct.pack("<L", length) + marker, 1)
    head = tag + vr.encode() + b"\x00\x00" + struct.pack(f"{order}L", len(marker))
    lie = tag + vr.encode() + b"\x00\x00" + struct.pack(f"{order}L", length)
    return raw.replace(head + marker, lie + marker, 1)


def _as_native(ds: Dataset, syntax: str) -> Dataset:
    """`ds` re-encoded with native pixel data in `syntax`."""
    pixels = ds.pixel_array
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = False
    return ds


def _pixel_data_declares(length: int) -> bytes:
    """Native pixel data whose element declares `length` bytes (the file ends long before)."""
    raw = write(_as_native(base(), ExplicitVRLittleEndian))
    head = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<L", SIDE * SIDE)
    return raw.replace(head, head[:8] + struct.pack("<L", length), 1)


def _deflate_bomb() -> bytes:
    """A deflated data set of zeros that inflates past MAX_DICOM_BYTES (about 1000:1)."""
    meta = write(_as_native(base(), DeflatedExplicitVRLittleEndian))
    squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    stream = [squeezer.compress(chunk) for _ in range((limits.MAX_DICOM_BYTES >> 20) + 1)]
    return meta[: _meta_end(meta)] + b"".join(stream) + squeezer.flush()


def _meta_end(raw: bytes) -> int:
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return 132 + 12 + group_length


def _many_fragments() -> bytes:
    ds = base()
    frame = b"".join(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    item = b"\xfe\xff\x00\xe0"
    empty = item + bytes(4)
    ds.PixelData = empty * (limits.MAX_ELEMENTS + 1) + item + struct.pack("<L", len(frame)) + frame
    return write(ds)


def _many_elements() -> bytes:
    ds = base()
    ds.add_new((0x0009, 0x0010), "LO", "CXRMESH HOSTILE")
    for n in range(limits.MAX_ELEMENTS + 1):
        ds.add_new((0x0009 + 2 * (n // 0xFF), 0x1000 + n % 0xFF), "SS", 0)
    return write(ds)


def _deep_undefined(depth: int) -> bytes:
    """Undefined-length sequences nested `depth` deep, framed by hand (pydicom would recurse)."""
    raw = write(base())
    sq = b"\x09\x00\x02\x10SQ\x00\x00\xff\xff\xff\xff"
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    creator = b"\x09\x00\x10\x00LO\x10\x00CXRMESH HOSTILE "
    nest = (creator + sq + item) * depth + (item_end + seq_end) * depth
    at = raw.index(b"\x10\x00\x10\x00")  # PatientName (0010,0010): private group 0009 goes before it
    return raw[:at] + nest + raw[at:]


def _nested_defined(depth: int) -> bytes:
    inner = Dataset()
    for _ in range(depth - 1):
        item = Dataset()
        item.add_new((0x0009, 0x0010), "LO", "CXRMESH HOSTILE")
        item.add_new((0x0009, 0x1002), "SQ", Sequence([inner]))
        inner = item
    ds = base()
    ds.add_new((0x0009, 0x0010), "LO", "CXRMESH HOSTILE")
    ds.add_new((0x0009, 0x1002), "SQ", Sequence([inner]))
    return write(ds)


def _j2k_siz(**fields: int) -> bytes:
    """The JPEG 2000 base file with SIZ fields (xsiz, ysiz, xtsiz, ytsiz, csiz) overwritten."""
    ds = base(JPEG2000Lossless)
    frame = b"".join(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    at = frame.index(b"\xff\x4f\xff\x51") + 8
    names = ("xsiz", "ysiz", "xosiz", "yosiz", "xtsiz", "ytsiz", "xtosiz", "ytosiz", "csiz")
    values = dict(zip(names, struct.unpack_from(">8LH", frame, at), strict=True)) | fields
    frame = frame[:at] + struct.pack(">8LH", *values.values()) + frame[at + 34 :]
    ds.PixelData = encapsulate([_even(frame)])
    return write(ds)


def _jpeg_sof(height: int, width: int) -> bytes:
    ds = base(JPEGBaseline8Bit)
    frame = b"".join(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    at = frame.index(b"\xff\xc0") + 5
    frame = frame[:at] + struct.pack(">HH", height, width) + frame[at + 4 :]
    ds.PixelData = encapsulate([_even(frame)])
    return write(ds)


def _rle_header(segments: int) -> bytes:
    ds = base()
    frame = bytearray(b"".join(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    frame[0:4] = struct.pack("<L", segments)
    ds.PixelData = encapsulate([bytes(frame)])
    return write(ds)


def _native_changed(changes: dict[str, object], extra: bytes = b"") -> Callable[[], bytes]:
    def build() -> bytes:
        ds = _as_native(base(), ExplicitVRLittleEndian)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.PixelData = ds.PixelData + extra
        return write(ds)

    return build


def _lut(descriptor: list[int], entries: int) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = list(range(entries))
    item["LUTData"].VR = "US"
    return Sequence([item])


def _blank() -> bytes:
    ds = base()
    ds.compress(RLELossless, np.full((SIDE, SIDE), 90, np.uint8), generate_instance_uid=False)
    return write(ds)


# name -> (expected code, why it must be refused, builder)
CASES: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "empty": ("not_dicom", "zero bytes", lambda: b""),
    "png_signature": (
        "not_dicom",
        "a PNG sent instead of a DICOM",
        lambda: b"\x89PNG\r\n\x1a\n" + bytes(300),
    ),
    "preamble_only": (
        "not_dicom",
        "128-byte preamble and DICM, then no file meta header",
        lambda: bytes(128) + b"DICM",
    ),
    "garbage_after_dicm": (
        "element_too_large",
        "DICM then random bytes: the first 'element' declares 2.7 GB",
        lambda: bytes(128) + b"DICM" + np.random.default_rng(7).bytes(4000),
    ),
    "meta_length_lie": (
        "truncated",
        "the file meta group length declares 1 GB",
        lambda: (raw := write(base()))[:140] + struct.pack("<L", 1 << 30) + raw[144:],
    ),
    "private_ob_2gib": (
        "element_too_large",
        "a private OB element declares 2 GiB",
        lambda: _declared("OB", 1 << 31),
    ),
    "private_ut_1gib": ("element_too_large", "a UT string declares 1 GiB", lambda: _declared("UT", 1 << 30)),
    "private_un_4gib": (
        "element_too_large",
        "a UN element declares 4 GiB - 2 (just under undefined length)",
        lambda: _declared("UN", 0xFFFFFFFE),
    ),
    "implicit_giant_element": (
        "element_too_large",
        "implicit VR: a private element declares 512 MiB",
        lambda: _declared("OB", 1 << 29, ImplicitVRLittleEndian),
    ),
    "big_endian_giant_element": (
        "element_too_large",
        "big endian: a private element declares 2 GiB",
        lambda: _declared("OB", 1 << 31, ExplicitVRBigEndian),
    ),
    "pixel_data_declares_4gib": (
        "element_too_large",
        "Pixel Data declares 4 GiB - 2, more than any accepted image",
        lambda: _pixel_data_declares(0xFFFFFFFE),
    ),
    "deflate_bomb": (
        "too_large",
        "a deflated data set of ~130 KB that inflates past 128 MiB",
        _deflate_bomb,
    ),
    "many_fragments": (
        "too_many_elements",
        "encapsulated pixel data split into more fragments than MAX_ELEMENTS",
        _many_fragments,
    ),
    "many_elements": ("too_many_elements", "more private elements than MAX_ELEMENTS", _many_elements),
    "deep_undefined_sequences": (
        "nesting_too_deep",
        "undefined-length sequences nested 500 deep (a stack attack on recursive parsers)",
        lambda: _deep_undefined(500),
    ),
    "deep_defined_sequences": (
        "nesting_too_deep",
        "defined-length sequences nested MAX_SEQUENCE_DEPTH + 1 deep",
        lambda: _nested_defined(limits.MAX_SEQUENCE_DEPTH + 1),
    ),
    "missing_study_uid": ("missing_uid", "no StudyInstanceUID", _changed({"StudyInstanceUID": None})),
    "bad_uid_characters": ("missing_uid", "a UID with letters", _changed({"SOPInstanceUID": "1.2.abc.4"})),
    "ct_modality": ("unsupported_modality", "Modality CT", _changed({"Modality": "CT"})),
    "not_chest": ("not_chest", "BodyPartExamined HAND", _changed({"BodyPartExamined": "HAND"})),
    "lateral": ("not_frontal", "ViewPosition LL", _changed({"ViewPosition": "LL"})),
    "no_pixel_data": ("no_pixel_data", "the Pixel Data element removed", _changed({"PixelData": None})),
    "frames_zero": ("bad_frame_count", "NumberOfFrames 0", _changed({"NumberOfFrames": 0})),
    "frames_negative": ("bad_frame_count", "NumberOfFrames -3", _changed({"NumberOfFrames": -3})),
    "frames_many": (
        "multi_frame",
        "NumberOfFrames 1000 over one frame of data",
        _changed({"NumberOfFrames": 1000}),
    ),
    "photometric_ybr": (
        "bad_photometric",
        "YBR_FULL with 3 samples: a colour image",
        _changed({"PhotometricInterpretation": "YBR_FULL", "SamplesPerPixel": 3}),
    ),
    "samples_zero": ("bad_photometric", "SamplesPerPixel 0", _changed({"SamplesPerPixel": 0})),
    "planar_configuration_5": (
        "bad_photometric",
        "PlanarConfiguration 5",
        _changed({"PlanarConfiguration": 5}),
    ),
    "bits_allocated_12": ("bad_bit_depth", "BitsAllocated 12", _changed({"BitsAllocated": 12})),
    "bits_stored_zero": ("bad_bit_depth", "BitsStored 0", _changed({"BitsStored": 0, "HighBit": 0})),
    "high_bit_20": ("bad_bit_depth", "HighBit 20 beyond BitsAllocated 8", _changed({"HighBit": 20})),
    "pixel_representation_7": (
        "bad_pixel_representation",
        "PixelRepresentation 7",
        _changed({"PixelRepresentation": 7}),
    ),
    "dx_signed": (
        "bad_pixel_representation",
        "a DX image with signed pixels (the DX module allows unsigned only)",
        _changed({"Modality": "DX", "PixelRepresentation": 1}),
    ),
    "rows_zero": ("bad_size", "Rows 0", _changed({"Rows": 0})),
    "columns_65535": ("bad_size", "Columns 65535", _changed({"Columns": 65535})),
    "aspect_strip": ("bad_size", "256 x 1024: a 4:1 strip", _changed({"Columns": 1024})),
    "spacing_negative": ("bad_pixel_spacing", "PixelSpacing -0.5", _changed({"PixelSpacing": [-0.5, -0.5]})),
    "spacing_one_value": (
        "bad_pixel_spacing",
        "PixelSpacing with one value",
        _changed({"PixelSpacing": [0.5]}),
    ),
    "spacing_anisotropic": (
        "bad_pixel_spacing",
        "0.2 mm rows, 0.5 mm columns",
        _changed({"PixelSpacing": [0.2, 0.5]}),
    ),
    "spacing_tiny_field": (
        "bad_pixel_spacing",
        "0.06 mm pixels: a 15 mm field",
        _changed({"PixelSpacing": [0.06, 0.06]}),
    ),
    "imager_spacing_nan": (
        "bad_pixel_spacing",
        "ImagerPixelSpacing NaN",
        _changed({"ImagerPixelSpacing": ["NaN", "NaN"]}),
    ),
    "rescale_slope_zero": (
        "bad_rescale",
        "RescaleSlope 0: every pixel one value",
        _changed({"RescaleSlope": 0}),
    ),
    "rescale_slope_nan": ("bad_rescale", "RescaleSlope NaN", _changed({"RescaleSlope": "NaN"})),
    "rescale_intercept_huge": (
        "bad_rescale",
        "RescaleIntercept 1e300",
        _changed({"RescaleIntercept": "1e300"}),
    ),
    "modality_lut_lie": (
        "bad_rescale",
        "a Modality LUT that declares 4096 entries and holds 10",
        _changed({"ModalityLUTSequence": _lut([4096, 0, 12], 10)}),
    ),
    "window_width_zero": ("bad_window", "WindowWidth 0", _changed({"WindowWidth": 0})),
    "window_center_infinite": ("bad_window", "WindowCenter inf", _changed({"WindowCenter": "inf"})),
    "window_count_mismatch": (
        "bad_window",
        "two centres and one width",
        _changed({"WindowCenter": [100, 200], "WindowWidth": 50}),
    ),
    "voi_function_unknown": ("bad_window", "VOILUTFunction CUBIC", _changed({"VOILUTFunction": "CUBIC"})),
    "voi_lut_32_bits": (
        "bad_window",
        "a VOI LUT with 32-bit entries",
        _changed({"VOILUTSequence": _lut([256, 0, 32], 256)}),
    ),
    "native_data_says_rle": (
        "pixel_encoding_mismatch",
        "the meta header says RLE, the pixel data is native",
        lambda: write(_as_native(base(), ExplicitVRLittleEndian)).replace(
            ExplicitVRLittleEndian.encode(), RLELossless.encode(), 1
        ),
    ),
    "native_too_long": (
        "pixel_length_mismatch",
        "native pixel data 4 KiB longer than 256 x 256 x 8 bits",
        _native_changed({}, bytes(4096)),
    ),
    "native_rows_lie": (
        "pixel_length_mismatch",
        "Rows 300 over 256 rows of native data",
        _native_changed({"Rows": 300}),
    ),
    "j2k_declares_huge": (
        "undecodable_pixels",
        "a JPEG 2000 stream whose SIZ declares 60000 x 60000 (a decoder would allocate 3.6 GB)",
        lambda: _j2k_siz(xsiz=60000, ysiz=60000, xtsiz=60000, ytsiz=60000),
    ),
    "j2k_tile_bomb": (
        "undecodable_pixels",
        "a JPEG 2000 stream of 1 x 1 pixel tiles (65536 tiles)",
        lambda: _j2k_siz(xtsiz=1, ytsiz=1),
    ),
    "j2k_three_components": (
        "undecodable_pixels",
        "a JPEG 2000 stream of 3 components",
        lambda: _j2k_siz(csiz=3),
    ),
    "jpeg_sof_huge": (
        "undecodable_pixels",
        "a JPEG whose SOF declares 40000 x 40000",
        lambda: _jpeg_sof(40000, 40000),
    ),
    "rle_segment_lie": (
        "undecodable_pixels",
        "an RLE header that declares 15 segments",
        lambda: _rle_header(15),
    ),
    "blank_pixels": ("blank_image", "a valid header over pixels that are all one value", _blank),
}


def build() -> dict[str, dict[str, str]]:
    """Write every case and the manifest; return the manifest."""
    for stale in HERE.glob("*.dcm"):
        stale.unlink()
    manifest = {}
    for name, (code, why, builder) in CASES.items():
        path = HERE / f"{name}.dcm"
        path.write_bytes(builder())
        manifest[path.name] = {"code": code, "why": why}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    _write_readme(manifest)
    return manifest


def _write_readme(manifest: dict[str, dict[str, str]]) -> None:
    lines = [
        "# Hostile DICOM corpus",
        "",
        "Files that ingestion must refuse, each with the rejection code it must get and why. Generated by",
        "`make_corpus.py` (rebuild: `.venv/bin/python tests/data/hostile/make_corpus.py`); checked by",
        "`tests/unit/test_hostile_dicom.py`. `manifest.json` is the machine-readable index.",
        "",
        "| file | code | why |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | `{row['code']}` | {row['why']} |" for name, row in manifest.items()]
    (HERE / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    print(f"{len(build())} files in {HERE}", file=sys.stderr)
