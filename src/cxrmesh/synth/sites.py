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


SITES: tuple[Site, ...] = (
    Site(
        name="site-a",
        institution="Northgate General Hospital",
        modality="CR",
        manufacturer="FUJIFILM Corporation",
        model_name="FCR PROFECT CS",
        photometric="MONOCHROME1",
        bits_stored=10,
        pixel_spacing_mm=(0.168, 0.2),
        ap_fraction=0.25,
        noise=1.2,
        gamma=1.15,
        edge_enhance=0.6,
        rescale=(1.0, 0.0),
        voi_function="LINEAR",
        compressed_fraction=0.0,
        marker="box",
        diagnosis_mix=(0.35, 0.45, 0.20),
    ),
    Site(
        name="site-b",
        institution="Riverside University Medical Center",
        modality="DX",
        manufacturer="Carestream Health",
        model_name="DRX-Evolution",
        photometric="MONOCHROME2",
        bits_stored=12,
        pixel_spacing_mm=(0.139, 0.139),
        ap_fraction=0.4,
        noise=0.8,
        gamma=0.95,
        edge_enhance=0.9,
        rescale=(1.0, 0.0),
        voi_function="SIGMOID",
        compressed_fraction=0.5,
        marker="plain",
        diagnosis_mix=(0.30, 0.40, 0.30),
    ),
    Site(
        name="site-c",
        institution="St. Aurelia Community Hospital",
        modality="DX",
        manufacturer="Siemens Healthineers",
        model_name="Ysio Max",
        photometric="MONOCHROME2",
        bits_stored=16,
        pixel_spacing_mm=(0.143, 0.16),
        ap_fraction=0.15,
        noise=1.0,
        gamma=1.05,
        edge_enhance=0.4,
        rescale=(0.5, 0.0),
        voi_function="LINEAR",
        compressed_fraction=0.3,
        marker="circle",
        diagnosis_mix=(0.45, 0.30, 0.25),
    ),
)

SITE_BY_NAME = {s.name: s for s in SITES}
