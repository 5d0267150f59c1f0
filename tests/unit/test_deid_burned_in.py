"""Burned-in PHI in the pixels: BurnedInAnnotation=YES is refused, a radiograph with the patient's
name or ID burned in is refused by the OCR check, and normal radiographs with side markers and
"AP PORTABLE" labels (the synthetic corpus burns those in) pass. Needs tesseract (tesseract-ocr)."""

from __future__ import annotations

import io
import shutil
import statistics
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import ExplicitVRLittleEndian

from cxrmesh.dicom import DicomRejected, decode_pixels, read_dicom
from cxrmesh.dicom import burned_in as burned_in_module
from cxrmesh.dicom.admit import process_dicom
from cxrmesh.dicom.burned_in import OcrUnavailable, PixelPolicy, read_text, require_ocr

SECRET = b"cxrmesh-test-secret-not-for-production"
pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr is not installed")


def _raw(corpus: Path, row: dict) -> bytes:
    return (corpus / row["paths"]["dicom"]).read_bytes()


def _write(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _burn(raw: bytes, lines: list[str]) -> bytes:
    """The radiograph with `lines` burned into its top-left corner as a modality would: white text
    on a black box, in stored pixel values (so MONOCHROME1 is inverted), written uncompressed."""
    ds = read_dicom(raw)
    stored = decode_pixels(ds).copy()
    size = int(ds.Rows) // 32
    font = ImageFont.load_default(size=size)
    shape = (stored.shape[1], stored.shape[0])
    text, box = Image.new("L", shape, 0), Image.new("L", shape, 0)
    for i, line in enumerate(lines):
        xy = (size, size + i * round(1.4 * size))
        left, top, right, bottom = ImageDraw.Draw(text).textbbox(xy, line, font=font)
        pad = size // 3
        ImageDraw.Draw(box).rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=255)
        ImageDraw.Draw(text).text(xy, line, fill=255, font=font)
    black, white = stored.min(), stored.max()
    if ds.PhotometricInterpretation == "MONOCHROME1":
        black, white = white, black
    stored[np.asarray(box) > 0] = black
    stored[np.asarray(text) > 127] = white
    ds.PixelData = stored.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return _write(ds)


def _name_lines(raw: bytes) -> list[str]:
    ds = read_dicom(raw)
    family, given = str(ds.PatientName).split("^")[:2]
    return [f"{family.upper()}, {given.upper()}", f"ID {ds.PatientID}"]


def test_normal_radiographs_with_markers_pass(corpus: Path, manifest: list[dict]) -> None:
    require_ocr()
    seconds, ap = [], 0
    for row in manifest:
        _deid, norm = process_dicom(_raw(corpus, row), SECRET)
        seconds.append(read_text(norm.display).seconds)
        ap += read_dicom(_raw(corpus, row)).get("ViewPosition") == "AP"
    assert ap, "the corpus must hold AP films (they carry the AP PORTABLE label)"
    median, worst = statistics.median(seconds), max(seconds)
    print(f"\nOCR per image: median {median:.3f} s, max {worst:.3f} s, n={len(seconds)}")


def _refused(raw: bytes) -> DicomRejected:
    with pytest.raises(DicomRejected) as info:
        process_dicom(raw, SECRET)
    assert info.value.code == "burned_in_phi"
    return info.value


def test_burned_in_name_refused(corpus: Path, manifest: list[dict]) -> None:
    for row in manifest:
        raw = _raw(corpus, row)
        err = _refused(_burn(raw, _name_lines(raw)))
        assert "burned into the image" in err.reason
        assert str(read_dicom(raw).PatientID) not in err.reason  # the reason itself carries no PHI


def test_burned_in_birth_date_refused(corpus: Path, manifest: list[dict]) -> None:
    for row in manifest[:4]:
        raw = _raw(corpus, row)
        born = str(read_dicom(raw).PatientBirthDate)
        _refused(_burn(raw, [f"DOB {born[6:]}/{born[4:6]}/{born[:4]}"]))


def test_generic_burned_in_text_passes(corpus: Path, manifest: list[dict]) -> None:
    raw = _raw(corpus, manifest[0])
    deid, _norm = process_dicom(_burn(raw, ["R", "PA ERECT", "CHEST"]), SECRET)
    assert deid.study_key


def test_burned_in_annotation_yes_refused(corpus: Path, manifest: list[dict]) -> None:
    ds = read_dicom(_raw(corpus, manifest[0]))
    ds.BurnedInAnnotation = "YES"
    flagged = _write(ds)
    with pytest.raises(DicomRejected) as info:
        process_dicom(flagged, SECRET)
    assert info.value.code == "burned_in_phi" and "BurnedInAnnotation is YES" in info.value.reason
    # a site that trusts the OCR check admits flagged images whose text is not PHI
    assert process_dicom(flagged, SECRET, PixelPolicy(admit_flagged=True))[0].study_key


def test_missing_tesseract_fails_closed(
    corpus: Path, manifest: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _raw(corpus, manifest[0])
    monkeypatch.setattr(burned_in_module.pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(OcrUnavailable, match="tesseract-ocr"):
        process_dicom(raw, SECRET)
    with pytest.raises(OcrUnavailable):
        require_ocr()
    # turning the check off is an explicit choice (pixels scrubbed upstream)
    assert process_dicom(raw, SECRET, PixelPolicy(ocr=False))[0].study_key
