"""Limits that a service's settings and the code they configure must agree on, stated once.

The settings refuse a value at start-up by the same bound the domain code enforces when it is used,
without the settings (runtime, services) importing the domain package that enforces it. The DICOM
limits below are what ingestion accepts as a chest radiograph (``cxrmesh.dicom.rules``) and how much
of an untrusted file it is willing to parse (``cxrmesh.dicom.bounds``); each says where it comes from.
"""

from __future__ import annotations

from typing import Final

# The de-identification secret (HMAC-SHA256 key of every pseudonym): at least 128 bits.
MIN_SECRET_BYTES: Final[int] = 16

# ---------------------------------------------------------------------------------------------
# Parsing bounds: refused before a value is read into memory (cxrmesh.dicom.bounds).

# One single-frame radiograph of the largest accepted size (MAX_SIDE^2 16-bit pixels) plus its header;
# also the cap of a deflated data set once inflated (a "zip bomb" inflates far past it).
MAX_DICOM_BYTES: Final[int] = 128 * 1024 * 1024
# Pixel Data of one frame at the largest accepted geometry: MAX_SIDE x MAX_SIDE x 16 bits.
MAX_PIXEL_DATA_BYTES: Final[int] = 8192 * 8192 * 2
# Any other element kept as bytes (OB/OW/UN/private blobs): an overlay plane of MAX_SIDE^2 bits is
# 8 MiB, ICC profiles and vendor private blocks are at most a few MiB in practice.
MAX_ELEMENT_BYTES: Final[int] = 16 * 1024 * 1024
# Elements that pydicom decodes into Python objects (strings, numbers, multi-values): report text
# is kilobytes and a 16-bit LUT is 128 KiB; 1 MiB of "1\1\1..." already makes ~500,000 objects.
MAX_VALUE_BYTES: Final[int] = 1024 * 1024
# Elements in the whole file, sequence items and encapsulated fragments included: a CR/DX header
# has a few hundred, vendor private groups a few thousand.
MAX_ELEMENTS: Final[int] = 20_000
# Nesting of sequences: image headers nest code sequences 3-4 deep; deeper is an attack on the
# recursive parser, not a radiograph.
MAX_SEQUENCE_DEPTH: Final[int] = 12

# ---------------------------------------------------------------------------------------------
# Plausibility of a chest radiograph's header (cxrmesh.dicom.rules).

# Rows and Columns: below 256 is a thumbnail (the model frame is 512); above 8192 no chest detector
# exists (43 cm at 0.05 mm is 8600, and chest detectors are 0.1-0.2 mm).
MIN_SIDE: Final[int] = 256
MAX_SIDE: Final[int] = 8192
# Long side / short side: cassettes and detectors are 35x43, 43x43, 24x30, 18x24 cm (at most 1.33);
# 2:1 leaves room for cropped exports, while stitched spine/long-leg images (3:1 and more) are not chests.
MAX_ASPECT: Final[float] = 2.0
# Pixel Spacing / Imager Pixel Spacing in mm: detectors are 0.1-0.2 mm (mammography 0.05); exports
# downsampled for teaching reach ~0.5. 0\0 means "uncalibrated" (RG1) and is accepted as absent.
PIXEL_SPACING_MM: Final[tuple[float, float]] = (0.05, 1.0)
# The imaged field (side x spacing) in mm: a neonatal chest is ~10 cm, the largest cassette 43 cm.
FIELD_MM: Final[tuple[float, float]] = (50.0, 600.0)
# Bit depths (PS3.3 C.7.6.3; CR/DX store 8-16 bits): BitsAllocated 8 or 16, BitsStored 8..16.
BITS_ALLOCATED: Final[tuple[int, ...]] = (8, 16)
BITS_STORED: Final[tuple[int, int]] = (8, 16)
# Rescale Slope (PS3.3 C.11.1): stored values are detector counts scaled to output units; a slope of 0,
# or beyond 1e-4..1e4, maps every pixel to (nearly) one value or overflows the display pipeline.
RESCALE_SLOPE_ABS: Final[tuple[float, float]] = (1e-4, 1e4)
RESCALE_INTERCEPT_ABS_MAX: Final[float] = 1e6
# Window Center/Width (PS3.3 C.11.2.1.2): width >= 1 (LINEAR) or > 0 (LINEAR_EXACT, SIGMOID); centre and
# width within what a 16-bit value through the widest accepted rescale can reach.
WINDOW_ABS_MAX: Final[float] = 65536 * 1e4 + 1e6
MAX_WINDOWS: Final[int] = 16
VOI_LUT_FUNCTIONS: Final[frozenset[str]] = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})
# LUT Descriptor (PS3.3 C.11.1.1.1): entries 1..65536 (0 means 65536), 8..16 bits per entry.
LUT_BITS: Final[tuple[int, int]] = (8, 16)
# Row spacing / column spacing: the letterbox treats pixels as square (cxrmesh.dicom.normalise); real
# detectors differ by well under 1 %, so more than 10 % is a corrupt or hand-edited header.
MAX_SPACING_ANISOTROPY: Final[float] = 1.1
# JPEG 2000 tiles in one frame: encoders use one tile or 256-1024 pixel tiles (at most ~1000 for the
# largest image); tiny tiles make the decoder allocate and loop per tile (a decoding bomb).
MAX_J2K_TILES: Final[int] = 1024
