"""The header rules of admission: is this a single-frame, frontal chest CR/DX the preprocessing
contract can display, with a pixel module and transfer syntax this installation can decode?

What the image is (UIDs, modality, body part, view) is checked here; whether its pixel module is
plausible and matches its pixel data, in ``pixel_module``."""

from __future__ import annotations

from typing import Final

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from cxrmesh.dicom.pixel_module import check_pixel_module
from cxrmesh.dicom.pixel_module import text as _text
from cxrmesh.dicom.rejection import DicomRejected

ACCEPTED_MODALITIES: Final[frozenset[str]] = frozenset({"CR", "DX"})
FRONTAL_VIEWS: Final[frozenset[str]] = frozenset({"PA", "AP"})
# BodyPartExamined is free-ish CS text in practice ("CHEST", "THORAX", "PORT CHEST", "CHEST_PA"),
# so a value is chest if any of its words is one of these.
CHEST_WORDS: Final[frozenset[str]] = frozenset({"CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "CXR"})


def validate(ds: Dataset) -> None:
    """Refuse anything that is not a single-frame, frontal chest CR/DX the pipeline can display."""
    _check_uids(ds)
    _check_what(ds)
    check_pixel_module(ds)


def _check_uids(ds: Dataset) -> None:
    for keyword in ("StudyInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if not value:
            raise DicomRejected(
                "missing_uid",
                f"{keyword} is missing or empty; the mesh keys studies and images by it. "
                "Send the image as stored in the PACS (with its Study and SOP Instance UIDs).",
            )
        if not UID(value).is_valid:
            raise DicomRejected(
                "missing_uid",
                f"{keyword} {value[:80]!r} is not a valid UID (digits and dots, at most 64 characters). "
                "Fix the exporting system's UID generation.",
            )


def _check_what(ds: Dataset) -> None:
    modality = _text(ds, "Modality")
    if modality not in ACCEPTED_MODALITIES:
        found = f"Modality {modality!r}" if modality else "no Modality"
        raise DicomRejected(
            "unsupported_modality",
            f"found {found}; only radiographs are accepted (Modality CR or DX). "
            "CT, MR, US and other modalities cannot be analysed.",
        )
    intent = _text(ds, "PresentationIntentType")
    if intent == "FOR PROCESSING":
        raise DicomRejected(
            "for_processing",
            "this is a DX 'FOR PROCESSING' (raw detector) image; send the 'FOR PRESENTATION' image "
            "that radiologists read.",
        )
    body = _text(ds, "BodyPartExamined")
    if body:
        words = set(body.replace("_", " ").replace("-", " ").replace("\\", " ").split())
        if not words & CHEST_WORDS:
            raise DicomRejected(
                "not_chest",
                f"BodyPartExamined is {body!r}; only chest radiographs are accepted "
                "(BodyPartExamined CHEST or THORAX, or absent).",
            )
    view = _text(ds, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        raise DicomRejected(
            "not_frontal",
            f"ViewPosition is {view!r}; only frontal projections are accepted (PA or AP, or absent). "
            "Lateral, oblique and decubitus views are not analysed.",
        )
    if not view:
        items = ds.get("ViewCodeSequence") or []
        for item in items if isinstance(items, Sequence) else []:
            meaning = str(item.get("CodeMeaning", "") if isinstance(item, Dataset) else "").upper()
            if any(w in meaning for w in ("LATERAL", "OBLIQUE", "DECUBITUS")):
                raise DicomRejected(
                    "not_frontal",
                    f"ViewCodeSequence says {meaning.lower()!r}; only frontal (PA or AP) views are accepted.",
                )
