"""Settings of the services that make pseudonyms (ingestion; search for DICOM queries): the shared key."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from cxrmesh.contracts.limits import MIN_SECRET_BYTES
from cxrmesh.runtime.settings import ServiceSettings


class PseudonymKeySettings(ServiceSettings):
    """Services that make pseudonyms share this key."""

    # required, no default: a guessable key would make the pseudonyms reversible by lookup
    deid_secret: SecretStr = Field(description="HMAC key of the pseudonyms; rotating it makes new pseudonyms")

    @field_validator("deid_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        """Refuse a short key at start-up rather than at the first study."""
        if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)")
        return value
