"""What the gateway takes: the SOP classes of a chest radiograph and the encodings ingestion decodes.

The same lists gate both fronts: the Storage SCP's presentation contexts (a sender learns at association
time that a CT or an SR has no home here) and each STOW-RS part. Transfer syntaxes are ingestion's
(``cxrmesh.dicom.pixel_module``), the compressed ones only where a decoder is installed: the gateway
runs from the same image as ingestion, and a context it accepts must be one ingestion can read, so a
sender that also offers an uncompressed syntax falls back to it instead of getting a refusal.
"""

from __future__ import annotations

from pydicom.pixels import get_decoder
from pydicom.uid import UID
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from cxrmesh.dicom.pixel_module import COMPRESSED_TRANSFER_SYNTAXES, NATIVE_TRANSFER_SYNTAXES

RADIOGRAPHS: tuple[UID, ...] = (
    UID(ComputedRadiographyImageStorage),
    UID(DigitalXRayImageStorageForPresentation),
    UID(DigitalXRayImageStorageForProcessing),
)
SECONDARY_CAPTURE = UID(SecondaryCaptureImageStorage)  # digitised film, only when the settings say so

_DEFAULTS = (UID("1.2.840.10008.1.2.1"), UID("1.2.840.10008.1.2"))  # explicit, implicit VR little endian


def _decodable(ts: UID) -> bool:
    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:
        return False


def transfer_syntaxes() -> list[UID]:
    """Every syntax ingestion reads: native ones, and compressed ones with an installed decoder."""
    found = set(NATIVE_TRANSFER_SYNTAXES) | {ts for ts in COMPRESSED_TRANSFER_SYNTAXES if _decodable(ts)}
    return [*_DEFAULTS, *sorted(found - set(_DEFAULTS))]


def storage_classes(accept_secondary_capture: bool) -> tuple[UID, ...]:
    """The Storage SOP classes accepted (CR and DX always; Secondary Capture when configured)."""
    return RADIOGRAPHS + ((SECONDARY_CAPTURE,) if accept_secondary_capture else ())
