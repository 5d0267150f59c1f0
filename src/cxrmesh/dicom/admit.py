"""One DICOM through the ingestion domain: parse, validate, decode, de-identify, normalise, and
check the pixels for burned-in PHI.

Used by the ingestion service and by search for DICOM queries, so both refuse and normalise a
file the same way.
"""

from __future__ import annotations

from cxrmesh.dicom.burned_in import PixelPolicy, check_flag, check_text
from cxrmesh.dicom.decode import decode_pixels
from cxrmesh.dicom.deid import Deidentified, deidentify
from cxrmesh.dicom.normalise import Normalised, normalise
from cxrmesh.dicom.read import read_dicom
from cxrmesh.dicom.rules import validate

DEFAULT_PIXEL_POLICY = PixelPolicy()  # OCR on, flagged images refused


def process_dicom(
    raw: bytes, secret: bytes, pixels: PixelPolicy = DEFAULT_PIXEL_POLICY
) -> tuple[Deidentified, Normalised]:
    """Raises ``DicomRejected`` with a code and a reason for anything the mesh refuses, and
    ``burned_in.OcrUnavailable`` when the OCR check is on but tesseract is missing."""
    ds = read_dicom(raw)
    validate(ds)
    check_flag(ds, pixels)
    stored = decode_pixels(ds)
    deid, norm = deidentify(ds, secret), normalise(ds, stored)
    check_text(ds, norm.display, pixels)
    return deid, norm
