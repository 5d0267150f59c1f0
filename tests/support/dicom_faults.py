"""Bad DICOM files, one per ingestion rejection code, built from one good file.

Used by the domain tests here and by the mesh end-to-end test, which sends each over gRPC and
expects INVALID_ARGUMENT with distinct reasons. Every file is refused by exactly the code it is
keyed by when passed through ``read_dicom`` -> ``validate`` -> ``decode_pixels`` in that order.
``too_large`` has no entry: a 128 MiB file is not worth building (the tests lower the limit; the
hostile corpus in tests/data/hostile has a deflate bomb for it).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import MPEG4HP41, UID, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from cxrmesh.contracts import limits

PRIVATE_CREATOR = (0x0009, 0x0010)
PRIVATE_BLOB = (0x0009, 0x1001)
PRIVATE_SEQUENCE = (0x0009, 0x1002)


def _write(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _read(good: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(good))


def _stored(ds: Dataset) -> np.ndarray:
    arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=0)
    return np.ascontiguousarray(arr)


def _native(good: bytes, arr: np.ndarray) -> Dataset:
    """The good file's header as Explicit VR Little Endian with stored pixels `arr`."""
    ds = _read(good)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.astype(f"<u{int(ds.BitsAllocated) // 8}").tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds["PixelData"].is_undefined_length = False
    return ds


def with_private(ds: Dataset, vr: str, value: object) -> Dataset:
    """`ds` with a private element (0009,1001) of `vr` and `value` under the creator 'CXRMESH FAULTS'."""
    ds.add_new(PRIVATE_CREATOR, "LO", "CXRMESH FAULTS")
    ds.add_new(PRIVATE_SEQUENCE if vr == "SQ" else PRIVATE_BLOB, vr, value)
    return ds


def declared_length(raw: bytes, marker: bytes, length: int) -> bytes:
    """`raw` with the 32-bit length of the explicit-VR OB element whose value is `marker` replaced.

    The file then ends long before the value would: a sender that declares gigabytes it never sends.
    """
    at = raw.index(b"\x09\x00\x01\x10OB\x00\x00" + len(marker).to_bytes(4, "little") + marker)
    return raw[: at + 8] + length.to_bytes(4, "little") + raw[at + 12 :]


def nested(depth: int) -> Sequence:
    """A private sequence nested `depth` levels deep."""
    inner = Dataset()
    for _ in range(depth - 1):
        item = Dataset()
        item.add_new(PRIVATE_CREATOR, "LO", "CXRMESH FAULTS")
        item.add_new(PRIVATE_SEQUENCE, "SQ", Sequence([inner]))
        inner = item
    return Sequence([inner])


def _j2k_codestream(good: bytes, stored: np.ndarray) -> bytes:
    """The good image's JPEG 2000 codestream (encoded here if the file is not J2K already)."""
    ds = _read(good)
    if UID(ds.file_meta.TransferSyntaxUID) != JPEG2000Lossless:
        ds = _native(good, stored)
        ds.compress(JPEG2000Lossless, stored, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    return b"".join(next(generate_fragmented_frames(ds.PixelData, number_of_frames=1)))


def bad_dicoms(good: bytes) -> dict[str, bytes]:
    """One bad file per rejection code (the key), each derived from the good file `good`."""
    out: dict[str, bytes] = {}
    stored = _stored(_read(good))

    # a PNG sent instead of the DICOM (e.g. a training copy)
    out["not_dicom"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
    # transfer interrupted in the middle of the pixel data
    out["truncated"] = good[: len(good) * 2 // 3]

    # a private element declaring 2 GiB (the sender never sends them)
    marker = b"CXRMESH!"
    raw = _write(with_private(_native(good, stored), "OB", marker))
    out["element_too_large"] = declared_length(raw, marker, 1 << 31)
    # a private sequence of more empty items than any header has elements
    items = Sequence([Dataset() for _ in range(limits.MAX_ELEMENTS + 1)])
    out["too_many_elements"] = _write(with_private(_native(good, stored), "SQ", items))
    out["nesting_too_deep"] = _write(
        with_private(_native(good, stored), "SQ", nested(limits.MAX_SEQUENCE_DEPTH + 1))
    )

    ds = _native(good, stored)
    del ds.SOPInstanceUID
    out["missing_uid"] = _write(ds)

    ds = _native(good, stored)
    ds.Modality = "CT"
    out["unsupported_modality"] = _write(ds)

    ds = _native(good, stored)
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PROCESSING"
    out["for_processing"] = _write(ds)

    ds = _native(good, stored)
    ds.BodyPartExamined = "ABDOMEN"
    out["not_chest"] = _write(ds)

    ds = _native(good, stored)
    ds.ViewPosition = "LL"
    out["not_frontal"] = _write(ds)

    ds = _native(good, stored)
    del ds.PixelData
    out["no_pixel_data"] = _write(ds)

    # a video transfer syntax nothing here decodes
    ds = _native(good, stored)
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01\x67\x64\x00\x29" * 64])
    ds["PixelData"].VR = "OB"
    out["unsupported_transfer_syntax"] = _write(ds)

    ds = _native(good, np.concatenate([stored, stored]))
    ds.Rows = stored.shape[0]
    ds.NumberOfFrames = 2
    out["multi_frame"] = _write(ds)

    ds = _native(good, stored)
    ds.NumberOfFrames = 0
    out["bad_frame_count"] = _write(ds)

    ds = _native(good, stored)
    ds.PhotometricInterpretation = "RGB"
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    out["bad_photometric"] = _write(ds)

    ds = _native(good, stored)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = stored.astype("<u4").tobytes()
    ds["PixelData"].VR = "OB"
    out["bad_bit_depth"] = _write(ds)

    ds = _native(good, stored)
    del ds.PixelRepresentation
    out["bad_pixel_representation"] = _write(ds)

    # a thumbnail: every 16th pixel of the top-left corner
    ds = _native(good, np.ascontiguousarray(stored[::16, ::16][:120, :120]))
    out["bad_size"] = _write(ds)

    ds = _native(good, stored)
    ds.PixelSpacing = [5.0, 5.0]  # 5 mm pixels: a field of metres
    out["bad_pixel_spacing"] = _write(ds)

    ds = _native(good, stored)
    ds.RescaleSlope, ds.RescaleIntercept = 0, 0  # every pixel maps to 0
    out["bad_rescale"] = _write(ds)

    ds = _native(good, stored)
    ds.WindowCenter, ds.WindowWidth = 1000, -5
    out["bad_window"] = _write(ds)

    # the meta header says RLE (pydicom will not write that, so the UID is patched: same length), the
    # pixel data is native values
    raw = _write(_native(good, stored))
    out["pixel_encoding_mismatch"] = raw.replace(ExplicitVRLittleEndian.encode(), RLELossless.encode(), 1)

    ds = _native(good, stored)
    half = len(ds.PixelData) // 2
    ds.PixelData = ds.PixelData[: half - half % 2]
    out["pixel_length_mismatch"] = _write(ds)

    # a JPEG 2000 stream cut in half inside a complete file (a broken encoder or store)
    ds = _native(good, stored)
    stream = _j2k_codestream(good, stored)
    stream = stream[: len(stream) // 2]
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([stream + b"\x00" * (len(stream) % 2)])
    ds["PixelData"].VR = "OB"
    out["undecodable_pixels"] = _write(ds)

    ds = _native(good, np.full_like(stored, int(np.median(stored))))
    out["blank_image"] = _write(ds)
    return out
