"""The studies the benchmarks send: synthetic full-resolution DICOM, and fresh copies of them.

Ingestion refuses nothing it has seen as new work twice (a re-sent study is answered as a
duplicate and goes nowhere), so every pass of a benchmark over the same images sends copies with
new study, series and SOP UIDs and a patient ID of their own: the same pixels, new studies.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from cxrmesh.client import manifest_headers
from cxrmesh.synth.corpus import generate
from cxrmesh.v1 import ingestion_pb2

Study = tuple[Path, ingestion_pb2.IngestHeader]


def studies(folder: Path, n: int, seed: int = 29) -> list[Study]:
    """``n`` synthetic full-resolution studies (made in ``folder`` if missing) with their headers."""
    if not (folder / "manifest.jsonl").is_file():
        generate(folder, n=n, seed=seed, write_dicom=True)
    return sorted(manifest_headers(folder / "manifest.jsonl").items())[:n]


def fresh_copy(path: Path, tag: str) -> pydicom.Dataset:
    """The file as a new study: new UIDs, the patient ID suffixed with ``tag`` (one patient, one tag)."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = f"{ds.get('PatientID', '')}-{tag}"[-64:]
    return ds


def encoded(ds: pydicom.Dataset) -> bytes:
    """A dataset as the bytes of a DICOM file (what a sender puts on the wire)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def fresh_bytes(items: list[Study], tag: str) -> list[tuple[bytes, ingestion_pb2.IngestHeader]]:
    """Every study of ``items`` as new-study bytes, encoded before any clock starts."""
    return [(encoded(fresh_copy(path, tag)), header) for path, header in items]
