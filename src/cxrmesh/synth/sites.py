"""The three acquisition sites of the synthetic corpus.

The retrieval paper's data came from three sources; each synthetic site has its own equipment,
matrix, pixel spacing, bit depth, photometric interpretation, exposure/noise/contrast style,
projection mix and burned-in side-marker style, so models must learn to ignore site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Site:
    name: str
    institution: str
    modality: Literal["CR", "DX"]
    manufacturer: str
    model_name: str
    photometric: Literal["MONOCHROME1", "MONOCHROME2"]
    bits_stored: int
    pixel_spacing_mm: tuple[float, float]  # range (low, high)
    ap_fraction: float  # share of AP (portable) projections
    noise: float  # relative quantum-noise level
    gamma: float  # contrast-curve exponent
    edge_enhance: float  # unsharp-mask strength of the vendor processing
    rescale: tuple[float, float]  # (slope, intercept) written to the modality LUT
    voi_function: Literal["LINEAR", "SIGMOID"]
    compressed_fraction: float  # share written as JPEG 2000 lossless
    marker: Literal["box", "plain", "circle"]
    # diagnosis mix (normal, covid, other pneumonia): sites differ, as real ones do
    diagnosis_mix: tuple[float, float, float]


# One column per site, one row per field (read across to compare the sites).
_SITE_TABLE: dict[str, tuple] = {
    "name": ("site-a", "site-b", "site-c"),
    "institution": (
        "Northgate General Hospital",
        "Riverside University Medical Center",
        "St. Aurelia Community Hospital",
    ),
    "modality": ("CR", "DX", "DX"),
    "manufacturer": ("FUJIFILM Corporation", "Carestream Health", "Siemens Healthineers"),
    "model_name": ("FCR PROFECT CS", "DRX-Evolution", "Ysio Max"),
    "photometric": ("MONOCHROME1", "MONOCHROME2", "MONOCHROME2"),
    "bits_stored": (10, 12, 16),
    "pixel_spacing_mm": ((0.168, 0.2), (0.139, 0.139), (0.143, 0.16)),
    "ap_fraction": (0.25, 0.4, 0.15),
    "noise": (1.2, 0.8, 1.0),
    "gamma": (1.15, 0.95, 1.05),
    "edge_enhance": (0.6, 0.9, 0.4),
    "rescale": ((1.0, 0.0), (1.0, 0.0), (0.5, 0.0)),
    "voi_function": ("LINEAR", "SIGMOID", "LINEAR"),
    "compressed_fraction": (0.0, 0.5, 0.3),
    "marker": ("box", "plain", "circle"),
    "diagnosis_mix": ((0.35, 0.45, 0.20), (0.30, 0.40, 0.30), (0.45, 0.30, 0.25)),
}
SITES: tuple[Site, ...] = tuple(
    Site(**{field: column[i] for field, column in _SITE_TABLE.items()})
    for i in range(len(_SITE_TABLE["name"]))
)

SITE_BY_NAME = {s.name: s for s in SITES}
