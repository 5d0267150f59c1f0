"""Why the mesh refuses a DICOM: one exception with a stable code for every admission check.

The code is machine-readable (the gRPC layer maps a rejection to INVALID_ARGUMENT and clients switch
on the code); the reason says what was found and what is accepted, so the person at the sending
modality or PACS can fix it. Checks run in a fixed order (``read.read_dicom`` -> ``rules.validate``
-> ``decode.decode_pixels``) so each fault has one code.
"""

from __future__ import annotations

from typing import Final

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
