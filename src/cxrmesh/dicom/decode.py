"""Decoding of an admitted DICOM's stored pixel values, refusing corrupt streams and blank images.

A compressed frame declares its own size (JPEG SOF, JPEG 2000 SIZ), and the decoder allocates what
the stream declares, not what the DICOM header says; so the stream's declared geometry is compared
with the header (already held to the plausible ranges) before a byte is decoded.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import _get_jpg_parameters  # pydicom's own JPEG/JPEG-LS header parser
from pydicom.uid import UID

from cxrmesh.contracts import limits
from cxrmesh.dicom.pixel_module import J2K_TRANSFER_SYNTAXES, JPEG_TRANSFER_SYNTAXES, j2k_geometry
from cxrmesh.dicom.rejection import DicomRejected


def decode_pixels(ds: Dataset) -> np.ndarray:
    """Stored pixel values (rows, columns), decoded without caching on `ds`; refuses blank images."""
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    rows, cols = int(ds.Rows), int(ds.Columns)
    try:
        _check_stream_geometry(ds, ts, rows, cols)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, _meta = get_decoder(ts).as_array(ds, index=0)
    except DicomRejected:
        raise
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


def _check_stream_geometry(ds: Dataset, ts: UID, rows: int, cols: int) -> None:
    """Refuse a JPEG / JPEG 2000 frame whose own header declares another size, colour or a tile bomb."""
    if ts not in J2K_TRANSFER_SYNTAXES and ts not in JPEG_TRANSFER_SYNTAXES:
        return  # native data was length-checked; RLE decodes into the header's geometry
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    tiles = 1
    if ts in J2K_TRANSFER_SYNTAXES:
        geometry = j2k_geometry(frame)
        if geometry is not None:
            *geometry, tiles = geometry
    else:
        params = _get_jpg_parameters(frame)
        geometry = [params.get("height"), params.get("width"), params.get("components")] if params else None
    if geometry is None:
        raise DicomRejected(
            "undecodable_pixels",
            f"the {ts.name} frame has no readable image header (SOF/SIZ marker); the stream is corrupt. "
            "Re-export the image.",
        )
    if list(geometry) != [rows, cols, 1] or tiles > limits.MAX_J2K_TILES:
        declared_rows, declared_cols, components = geometry
        raise DicomRejected(
            "undecodable_pixels",
            f"the {ts.name} stream declares {declared_rows} x {declared_cols} pixels, {components} "
            f"component(s) in {tiles} tile(s), but the header says {rows} x {cols} greyscale (at most "
            f"{limits.MAX_J2K_TILES} tiles); it is not decoded. Re-export the image.",
        )
