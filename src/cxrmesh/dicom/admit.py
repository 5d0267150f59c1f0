"""One DICOM through the ingestion domain: parse, validate, decode, de-identify, normalise.

Used by the ingestion service and by search for DICOM queries, so both refuse and normalise a
file the same way.
"""

from __future__ import annotations

from cxrmesh.dicom.decode import decode_pixels
from cxrmesh.dicom.deid import Deidentified, deidentify
from cxrmesh.dicom.normalise import Normalised, normalise
from cxrmesh.dicom.read import read_dicom
from cxrmesh.dicom.rules import validate


def process_dicom(raw: bytes, secret: bytes) -> tuple[Deidentified, Normalised]:
    """Pure: raises ``DicomRejected`` with a code and a reason for anything the mesh refuses."""
    ds = read_dicom(raw)
    validate(ds)
    stored = decode_pixels(ds)
    return deidentify(ds, secret), normalise(ds, stored)
