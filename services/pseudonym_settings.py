"""Settings of the services that admit DICOM (ingestion; search for DICOM queries): key and pixel policy."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from cxrmesh.contracts.limits import MIN_SECRET_BYTES
from cxrmesh.dicom.burned_in import PixelPolicy, require_ocr
from cxrmesh.runtime.settings import ServiceSettings


class PseudonymKeySettings(ServiceSettings):
    """Services that make pseudonyms share this key, and the same rules for PHI in pixels."""

    # required, no default: a guessable key would make the pseudonyms reversible by lookup
    deid_secret: SecretStr = Field(description="HMAC key of the pseudonyms; rotating it makes new pseudonyms")

    burned_in_ocr: bool = Field(
        True,
        description="read burned-in text (tesseract) and refuse images that show the patient's identifiers",
    )
    burned_in_admit_flagged: bool = Field(
        False, description="BurnedInAnnotation=YES images go to the OCR check instead of being refused"
    )

    def pixel_policy(self) -> PixelPolicy:
        """The admission's pixel rules; with OCR on, a missing tesseract stops the service at start."""
        if self.burned_in_ocr:
            require_ocr()
        return PixelPolicy(ocr=self.burned_in_ocr, admit_flagged=self.burned_in_admit_flagged)

    @field_validator("deid_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        """Refuse a short key at start-up rather than at the first study."""
        if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)")
        return value
