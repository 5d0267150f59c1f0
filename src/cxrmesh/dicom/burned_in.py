"""Burned-in PHI in the pixels: honour BurnedInAnnotation and look for identifying text with OCR.

De-identifying the header is not enough when the modality or a secondary capture wrote the
patient's name, ID or birth date into the image. Two checks run at admission:

* ``BurnedInAnnotation = YES``: the sender says the pixels carry identifying text, so the image is
  refused unless the policy admits flagged images (then the OCR check below decides).
* OCR (tesseract, Debian package ``tesseract-ocr``, through ``pytesseract``) over the top and bottom
  bands of the display image, where modalities put their annotations: a word that matches one of
  the study's identifying header values (``phi.phi_strings``: name parts, IDs, dates...) refuses the
  image. Generic text (side markers "L"/"R", "AP PORTABLE") matches nothing and passes.

Fail closed: without tesseract the check raises ``OcrUnavailable`` (a deployment fault, not a bad
file) unless the policy turns OCR off; an OCR run that does not finish in time refuses the image.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Final

import numpy as np
import pytesseract
from PIL import Image
from pydicom.dataset import Dataset

from cxrmesh.dicom.phi import phi_strings
from cxrmesh.dicom.rejection import DicomRejected

BAND: Final[float] = 0.25  # top and bottom quarter of the display image are read
UPSCALE: Final[int] = 2  # tesseract reads glyphs of ~20 px or more; the display is 512 px
OCR_CONFIG: Final[str] = "--psm 11"  # sparse text: scattered annotations, no page layout
OCR_TIMEOUT_S: Final[float] = 10.0
MIN_CONFIDENCE: Final[float] = 30.0
MIN_NEEDLE: Final[int] = 3  # shorter header values ("L", an initial) identify no-one
FUZZY_MIN_CHARS: Final[int] = 5  # OCR misreads a letter or two of long words
PARTIAL_MIN_CHARS: Final[int] = 6  # a run this long inside a header value is no coincidence
PARTIAL_MAX_NEEDLE: Final[int] = 16  # IDs, dates, names; not UIDs (digit runs would match by chance)
FUZZY_RATIO: Final[float] = 0.75


class OcrUnavailable(RuntimeError):
    """The OCR engine is missing or broken: the deployment is wrong, not the file."""


@dataclass(frozen=True)
class PixelPolicy:
    """What to do about PHI in pixels (the ingestion settings choose; the defaults fail safe)."""

    ocr: bool = True  # False: skip the OCR check (only for sites that scrub pixels upstream)
    admit_flagged: bool = False  # True: BurnedInAnnotation=YES images go to OCR instead of refusal


@dataclass(frozen=True)
class OcrResult:
    words: tuple[str, ...]  # words read with at least MIN_CONFIDENCE
    seconds: float


def _norm(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def _needles(ds: Dataset) -> set[str]:
    """Normalised identifying values of the header, dates in the common printed orders too."""
    out: set[str] = set()
    for value in phi_strings(ds):
        for part in re.split(r"[\s^=,]+", value):
            n = _norm(part)
            if len(n) >= MIN_NEEDLE:
                out.add(n)
            if re.fullmatch(r"\d{8}", n):  # DA: YYYYMMDD -> DDMMYYYY, MMDDYYYY
                out.update({n[6:] + n[4:6] + n[:4], n[4:6] + n[6:] + n[:4]})
    return out


def _matches(word: str, needles: set[str]) -> bool:
    if word in needles:
        return True
    if len(word) >= PARTIAL_MIN_CHARS and any(word in n for n in needles if len(n) <= PARTIAL_MAX_NEEDLE):
        return True  # OCR lost the first or last characters of an ID or date
    if len(word) < FUZZY_MIN_CHARS or word.isdigit():
        return False
    return any(
        not n.isdigit() and (n.startswith(word) or SequenceMatcher(None, word, n).ratio() >= FUZZY_RATIO)
        for n in needles
        if len(n) >= FUZZY_MIN_CHARS
    )


def _bands(display: np.ndarray) -> Image.Image:
    """Top and bottom bands of the display image, stacked and upscaled for the OCR engine."""
    img = np.clip(np.asarray(display, dtype=np.float32) * 255.0, 0, 255).astype(np.uint8)
    h = round(img.shape[0] * BAND)
    gap = np.zeros((8, img.shape[1]), dtype=np.uint8)
    stacked = Image.fromarray(np.vstack([img[:h], gap, img[-h:]]))
    return stacked.resize((stacked.width * UPSCALE, stacked.height * UPSCALE), Image.Resampling.LANCZOS)


def read_text(display: np.ndarray) -> OcrResult:
    """The words tesseract reads in the annotation bands of a display image (values in [0, 1])."""
    start = time.perf_counter()
    try:
        data = pytesseract.image_to_data(
            _bands(display), config=OCR_CONFIG, timeout=OCR_TIMEOUT_S, output_type=pytesseract.Output.DICT
        )
    except pytesseract.TesseractNotFoundError as exc:
        raise OcrUnavailable(
            "the burned-in text check needs the tesseract OCR engine (Debian package tesseract-ocr); "
            "install it, or turn the check off in the ingestion settings if pixels are scrubbed upstream"
        ) from exc
    except RuntimeError as exc:  # pytesseract raises RuntimeError on its timeout
        raise DicomRejected(
            "burned_in_phi",
            f"the burned-in text check did not finish in {OCR_TIMEOUT_S:.0f} s, so identifying text in "
            "the pixels cannot be ruled out; send an image without burned-in annotations",
        ) from exc
    read = zip(data["text"], data["conf"], strict=True)
    words = tuple(w.strip() for w, c in read if w.strip() and float(c) >= MIN_CONFIDENCE)
    return OcrResult(words=words, seconds=time.perf_counter() - start)


def require_ocr() -> str:
    """The tesseract version, or ``OcrUnavailable``: call at service start to fail early."""
    try:
        return str(pytesseract.get_tesseract_version())
    except pytesseract.TesseractNotFoundError as exc:
        raise OcrUnavailable(
            "the burned-in text check needs the tesseract OCR engine (Debian package tesseract-ocr)"
        ) from exc


def check_flag(ds: Dataset, policy: PixelPolicy) -> None:
    """Refuse images whose sender declares burned-in annotation, unless the policy admits them."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES" and not policy.admit_flagged:
        raise DicomRejected(
            "burned_in_phi",
            "BurnedInAnnotation is YES: the sender declares identifying text burned into the pixels, "
            "which header de-identification cannot remove; turn off demographic annotation at the "
            "modality or send a pixel-scrubbed image",
        )


def check_text(ds: Dataset, display: np.ndarray, policy: PixelPolicy) -> OcrResult | None:
    """Refuse a display image whose burned-in text matches the study's identifying header values."""
    if not policy.ocr:
        return None
    result = read_text(display)
    needles = _needles(ds)
    hits = [w for w in result.words if _matches(_norm(w), needles)]
    if hits:
        raise DicomRejected(
            "burned_in_phi",
            f"{len(hits)} word(s) of text burned into the image match the patient's identifying header "
            "values (name, ID or a date); the pixels carry PHI that de-identification cannot remove: "
            "turn off demographic annotation at the modality or send a pixel-scrubbed image",
        )
    return result
