"""Pure ingestion domain logic: admit (validate), de-identify and normalise one incoming DICOM.

No servers and no Kafka here; the gRPC ingestion service calls, in this order::

    ds = read_dicom(raw)          # DicomRejected -> INVALID_ARGUMENT
    validate(ds)
    stored = decode_pixels(ds)
    deid = deidentify(ds, secret)  # secret from the service settings
    norm = normalise(deid.dataset, stored)
"""

from cxrmesh.dicom.decode import decode_pixels
from cxrmesh.dicom.deid import Deidentified, StudyMetadata, deidentify
from cxrmesh.dicom.normalise import Normalised, normalise, pixel_spacing_mm
from cxrmesh.dicom.phi import phi_strings
from cxrmesh.dicom.read import MAX_DICOM_BYTES, read_dicom
from cxrmesh.dicom.rejection import REJECTION_CODES, DicomRejected
from cxrmesh.dicom.rules import validate

__all__ = [
    "MAX_DICOM_BYTES",
    "REJECTION_CODES",
    "Deidentified",
    "DicomRejected",
    "Normalised",
    "StudyMetadata",
    "decode_pixels",
    "deidentify",
    "normalise",
    "phi_strings",
    "pixel_spacing_mm",
    "read_dicom",
    "validate",
]
