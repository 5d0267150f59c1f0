"""Bounded reading of an incoming DICOM: refuse what is too large, not DICOM, or cut short.

Only :func:`read_dicom` parses untrusted bytes; the header rules (``rules``) and pixel decoding
(``decode``) work on the dataset it returns.
"""

from __future__ import annotations

import io
import warnings
from typing import Final

import pydicom
from pydicom.dataset import Dataset

from cxrmesh.contracts import limits
from cxrmesh.dicom.bounds import check_bounds
from cxrmesh.dicom.rejection import DicomRejected
from cxrmesh.dicom.truncation import truncation

MAX_DICOM_BYTES: Final[int] = limits.MAX_DICOM_BYTES


def read_dicom(raw: bytes) -> Dataset:
    """Parse a Part 10 file from bytes, refusing what is not DICOM, too large or cut short.

    Before pydicom reads a value, the declared structure is held to the parsing limits (``bounds``:
    element sizes, element count, sequence depth, inflated size), so no file costs more memory or
    stack than those limits allow, whatever its tags.
    pydicom reads a truncated file without complaint (a short Pixel Data value, or a file that
    simply ends early), so the element structure is checked first (``truncation``) to tell "cut
    short" from "malformed" - the two need different fixes at the sender (resend vs. fix the exporter).
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
    check_bounds(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the very faults this looks for
        where = truncation(raw)
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
