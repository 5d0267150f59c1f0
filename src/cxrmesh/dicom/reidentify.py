"""The way back: an output made from a de-identified study, filed under the original study again.

Ingestion ``capture``s what the de-identification (``deid``) replaced - the study's instance UIDs and
its Patient/Study module values - and keeps it sealed (``cxrmesh.runtime.db.identities``). Only the PACS
sender opens it, to ``reidentify`` the SEG/SR it is about to send, so a PACS files them under the
patient and study it knows. Everything else in the mesh sees pseudonyms only.

Re-identification puts back exactly what the original had and takes away every trace of the
de-identification: a pseudonym in a keyword the original lacked is emptied (Type 2: it must be
present) or removed, the dates are moved back by the study's offset, and the de-identification
markers go. The output's own UIDs (derived from the de-identified source by ``cxrmesh.dicom.outputs``)
identify no-one and are kept.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import timedelta
from typing import Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cxrmesh.contracts.identity import OriginalIdentity
from cxrmesh.dicom.dates import map_values, parse_da, shift_da, shift_dt
from cxrmesh.dicom.outputs.common import PATIENT_STUDY_TYPE2

__all__ = ["IdentityMismatch", "OriginalIdentity", "capture", "reidentify"]

# The instance UIDs the de-identification replaces that outputs refer to.
UID_KEYWORDS: Final[tuple[str, ...]] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
# Patient/Study module attributes, by whether their module type requires them present (Type 2):
# a keyword the original lacked is emptied when Type 2, removed otherwise. PatientAge is kept by the
# de-identification (capped at 90) or computed from the birth date when the original had none.
TYPE2_KEYWORDS: Final[tuple[str, ...]] = PATIENT_STUDY_TYPE2  # one list, with the outputs' own
OPTIONAL_KEYWORDS: Final[tuple[str, ...]] = ("IssuerOfPatientID", "StudyDescription", "PatientAge")
ATTRIBUTE_KEYWORDS: Final[tuple[str, ...]] = TYPE2_KEYWORDS + OPTIONAL_KEYWORDS
# Markers of the de-identification, which a re-identified object must not carry.
DEID_MARKERS: Final[tuple[str, ...]] = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
)
UTF8: Final[str] = "ISO_IR 192"


class IdentityMismatch(ValueError):
    """The output is not of the study the identity was captured from (it would file under another)."""


def capture(original: Dataset, deidentified: Dataset) -> OriginalIdentity:
    """What ``deidentified`` (the de-identification of ``original``) replaced, to put it back later."""
    uids = {}
    for kw in UID_KEYWORDS:
        was, now = _text(original.get(kw)), _text(deidentified.get(kw))
        if was and now and was != now:
            uids[now] = was
    attributes = {kw: _text(original[kw].value) for kw in ATTRIBUTE_KEYWORDS if kw in original}
    return OriginalIdentity(uids=uids, attributes=attributes)


def reidentify(output: Dataset, identity: OriginalIdentity) -> Dataset:
    """A copy of ``output`` filed under the original study of ``identity`` (``output`` is not changed).

    Raises ``IdentityMismatch`` when the output's study is not the identity's: sending it would put
    one patient's results into another's record.
    """
    study = _text(output.get("StudyInstanceUID"))
    if study not in identity.uids:
        raise IdentityMismatch("the output's study is not the one this identity was captured from")
    out = copy.deepcopy(output)
    offset = _date_offset(out, identity)
    for elem in _elements(out):  # every element decoded now, before the character set may change
        if elem.VR == "UI":
            map_values(elem, lambda v: identity.uids.get(v, v))
        elif offset is not None and elem.VR == "DA":
            map_values(elem, lambda v: shift_da(v, offset))
        elif offset is not None and elem.VR == "DT":
            map_values(elem, lambda v: shift_dt(v, offset))
    for kw in ATTRIBUTE_KEYWORDS:
        if kw in identity.attributes:
            setattr(out, kw, _value(identity.attributes[kw]))
        elif kw in TYPE2_KEYWORDS and kw in out:
            out[kw].value = ""  # Type 2: present, with no value
        elif kw in out:
            del out[kw]
    for kw in DEID_MARKERS:
        if kw in out:
            del out[kw]
    if offset is not None and "LongitudinalTemporalInformationModified" in out:
        del out.LongitudinalTemporalInformationModified  # the dates are the original ones again
    if not all(v.isascii() for v in identity.attributes.values()):
        out.SpecificCharacterSet = UTF8  # values are decoded text now: written again as UTF-8
    return out


def _date_offset(output: Dataset, identity: OriginalIdentity) -> timedelta | None:
    """How far the output's dates were moved: its (shifted) study date back to the original's.

    One keyed offset per patient moves every date of a study (``deid``), and the outputs take their
    dates from the de-identified source, never the clock (``cxrmesh.dicom.outputs``), so this one
    difference moves every date of the output back. Unknown without both study dates: then the dates
    stay as they are.
    """
    shifted = parse_da(_text(output.get("StudyDate")))
    original = parse_da(identity.attributes.get("StudyDate", ""))
    if shifted is None or original is None:
        return None
    return original - shifted


def _elements(ds: Dataset) -> Iterator[DataElement]:
    """Every non-sequence element of ``ds`` and of its sequences' items, at any depth."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item)
        else:
            yield elem


def _text(value: object) -> str:
    """A stored value as text: multi-values joined with the DICOM separator."""
    if value is None:
        return ""
    if isinstance(value, DataElement):
        value = value.value
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _value(text: str) -> str | list[str]:
    return text.split("\\") if "\\" in text else text
