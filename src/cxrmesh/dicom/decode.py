"""Decoding of an admitted DICOM's stored pixel values, refusing corrupt streams and blank images."""

from __future__ import annotations

import warnings

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from cxrmesh.dicom.rejection import DicomRejected


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
