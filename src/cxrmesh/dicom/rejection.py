"""Why the mesh refuses a DICOM: one exception with a stable code for every admission check.

The code is machine-readable (the gRPC layer maps a rejection to INVALID_ARGUMENT and clients switch
on the code); the reason says what was found and what is accepted, so the person at the sending
modality or PACS can fix it. Checks run in a fixed order (``read.read_dicom`` -> ``rules.validate``
-> ``decode.decode_pixels``) so each fault has one code.
"""

from __future__ import annotations

from typing import Final

# Every code read_dicom/validate/decode_pixels can raise, in the order they are checked (too_large is
# the only one with no example in tests/support/dicom_faults.py: a 128 MiB file is not worth building;
# the hostile corpus in tests/data/hostile has a deflate bomb for it).
ADMISSION_CODES: Final[tuple[str, ...]] = (
    "too_large",
    "not_dicom",
    "element_too_large",
    "too_many_elements",
    "nesting_too_deep",
    "truncated",
    "missing_uid",
    "unsupported_modality",
    "for_processing",
    "not_chest",
    "not_frontal",
    "no_pixel_data",
    "unsupported_transfer_syntax",
    "multi_frame",
    "bad_frame_count",
    "bad_photometric",
    "bad_pixel_representation",
    "bad_bit_depth",
    "bad_size",
    "bad_pixel_spacing",
    "bad_rescale",
    "bad_window",
    "pixel_encoding_mismatch",
    "pixel_length_mismatch",
    "undecodable_pixels",
    "blank_image",
)
# ... and every code any check of an incoming DICOM can raise.
REJECTION_CODES: Final[tuple[str, ...]] = (
    *ADMISSION_CODES,
    "burned_in_phi",  # burned_in.py: BurnedInAnnotation=YES, or OCR text that matches header PHI
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
