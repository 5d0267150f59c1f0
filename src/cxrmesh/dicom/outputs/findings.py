"""The findings report: what cxrmesh found beyond the zone measurements (the most similar prior
cases, the diagnosis vote of those neighbours, the prognosis), as sentences with their caveats, in a
DICOM SR that a PACS files in the source image's study and shows to the radiologist.

Why this form:

* **Enhanced SR with TID 2000 "Basic Diagnostic Imaging Report"**, not a TID 1500 Comprehensive 3D
  SR. The content is text a person reads, not image measurements: TID 1500 viewers (OHIF, Slicer)
  list measurement groups tied to regions and would show little of it, while TID 2000 in Basic Text
  or Enhanced SR is the pattern of IHE's Simple Image and Numeric Report profile, which PACS and
  report readers render as a titled document with headed sections. Enhanced SR is the simplest of
  those IODs that holds numbers (NUM), so the vote share and the probability are also machine
  readable. Comprehensive (3D) SR would add nothing this document uses and is shown by fewer
  readers.
* **Title LOINC 18748-4 "Diagnostic Imaging Report"**: the generic title of TID 2000's context group
  (CID 7000), for an interpretation of imaging that is not tied to one modality-specific report
  type. DCM 126000 "Imaging Measurement Report" is the measurement SR's title (``sr.py``) and would
  be wrong here; the Chest CAD SR (DCM 112000, TID 4100) models detections with coordinates, not
  retrieval, votes or prognosis, and few viewers render it. So that no reader takes the document
  for the radiologist's report it is PRELIMINARY and UNVERIFIED, its observer is a device, its
  series says "not a diagnosis", and its first section says so in words.
* **Sections** (TID 2000 row 8, headings from the baseline CID 7001 extended with private codes):
  "About this report", "Image quality gate" (when a verdict is known), "Similar prior cases",
  "Diagnosis vote of similar cases", "Prognosis". Each holds TID 2002 narrative: TEXT items whose
  concept name says what the sentence is ("Caveat", "Similar prior case", "Finding"), NUM items
  (TID 1404) inferred-from under the sentence they support, and an IMAGE reference to the source.
* **The same sentences** come from :func:`findings_text`, so tests and the HTML report can show
  exactly what the PACS shows.

Like the SEG and the measurement SR (see the package docstring and docs/dicom-outputs.md): made
from the *de-identified* source, patient/study attributes copied from it and nothing else, dates
from the source and never the clock, UIDs derived from the source SOP Instance UID, the software
version and a digest of the content, equipment = cxrmesh.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import highdicom as hd
from highdicom.sr.enum import RelationshipTypeValues as Rel
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cxrmesh.dicom.outputs.common import (
    ALGORITHM_NAME,
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    check_version,
    derived_uid,
    device_observer_context,
    make_reproducible,
    pseudonym_names_ok,
    source_meta,
    source_timestamp,
)

# The private scheme is the measurement SR's (same designator, declared the same way); _coding_schemes and
# _digest are shared with it and would sit better in common.py.
from cxrmesh.dicom.outputs.sr import PROCEDURE_REPORTED, _coding_schemes, _digest, _private

FINDINGS_SERIES_NUMBER: Final[int] = 902
SERIES_DESCRIPTION: Final[str] = "cxrmesh decision support (not a diagnosis)"
TEMPLATE_ID: Final[str] = "2000"  # TID 2000 Basic Diagnostic Imaging Report (DCMR)

# What the prognosis probability is of when the caller does not say: PrognosisResult's
# probability_intubation_72h (protos/cxrmesh/v1/events.proto).
DEFAULT_PROGNOSIS_OUTCOME: Final[str] = "intubation within 72 hours"
PROGNOSIS_STATUSES: Final[frozenset[str]] = frozenset({"done", "no_clinical_data", "image_refused"})
QUALITY_VERDICTS: Final[frozenset[str]] = frozenset({"pass", "flagged", "refused"})

# A study key is a keyed pseudonym (hex, cxrmesh.dicom.pseudonyms). Dots, spaces and "^" are refused so
# that an original UID or a person name passed here by mistake never reaches the PACS.
_STUDY_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

TITLE: Final[Code] = codes.LN.DiagnosticImagingReport  # LN 18748-4
ENGLISH: Final[hd.sr.CodedConcept] = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
CODE_FINDING: Final[Code] = codes.DCM.Finding  # DCM 121071 (CID 7002)
CODE_SOURCE_IMAGE: Final[Code] = Code("121324", "DCM", "Source image")


# Private codes of this report (the measurement SR uses CXM0xx of the same scheme).
HEADING_ABOUT: Final[Code] = _private("CXM100", "About this report")
HEADING_QUALITY: Final[Code] = _private("CXM101", "Image quality gate")
HEADING_SIMILAR: Final[Code] = _private("CXM102", "Similar prior cases")
HEADING_VOTE: Final[Code] = _private("CXM103", "Diagnosis vote of similar cases")
HEADING_PROGNOSIS: Final[Code] = _private("CXM104", "Prognosis")
CODE_CAVEAT: Final[Code] = _private("CXM110", "Caveat")
CODE_SIMILAR_CASE: Final[Code] = _private("CXM111", "Similar prior case")
CODE_VOTE_SHARE: Final[Code] = _private("CXM112", "Share of the vote")
CODE_VOTE_K: Final[Code] = _private("CXM113", "Number of similar cases voting")
CODE_PROBABILITY: Final[Code] = _private("CXM114", "Predicted probability of the outcome")
UNIT_PERCENT: Final[Code] = codes.UCUM.Percent
UNIT_CASES: Final[Code] = Code("{cases}", "UCUM", "cases")

# The caveats, word for word (tests and readers rely on them).
CAVEAT_ABOUT: Final[str] = (
    "Decision support, not a diagnosis: produced automatically by cxrmesh from the de-identified image "
    "and not reviewed by a person."
)
CAVEAT_SIMILAR: Final[str] = (
    "Prior cases in this site's archive whose images look most like this one (similarity of the image "
    "embeddings, 1 = identical); look-alike images need not share a diagnosis or an outcome."
)
CAVEAT_VOTE: Final[str] = (
    "Decision support, not a diagnosis: the vote of the {k} most similar prior cases in this site's archive; "
    "it reflects the diagnoses of look-alike images, not an assessment of this patient."
)
CAVEAT_PROGNOSIS: Final[str] = (
    "Prognosis estimated from the image embedding, zone measurements and clinical data; "
    "not validated for individual treatment decisions."
)
CAVEAT_FLAGGED: Final[str] = (
    "The image was measured but flagged: check it before relying on the results derived from it."
)
NO_CLINICAL_DATA: Final[str] = (
    "No probability: submit clinical data (vital signs, laboratory tests, comorbidities) to get the "
    "probability of {outcome}."
)
IMAGE_REFUSED: Final[str] = "No probability: the image quality gate refused this image ({why})."


@dataclass(frozen=True)
class SimilarCaseText:
    study_key: str  # the prior case's pseudonymous key (never an original identifier)
    similarity: float  # 0..1 (a cosine; -1..1 is accepted)
    labels: tuple[str, ...]  # its known diagnosis labels (may be empty)
    outcome: str = ""  # its known outcome, when any (e.g. "intubated", "discharged")


@dataclass(frozen=True)
class Findings:
    similar: tuple[SimilarCaseText, ...]
    vote_label: str | None  # the neighbours' majority diagnosis, None when no vote
    vote_share: float | None  # share of the k neighbours that voted for it
    vote_k: int
    prognosis_status: str  # "done" | "no_clinical_data" | "image_refused"
    prognosis_probability: float | None  # when done
    prognosis_outcome: str = ""  # what the probability is of (e.g. "intubation or death")
    quality_verdict: str = ""  # "pass" | "flagged" | "refused" and reasons, when any


@dataclass(frozen=True)
class _Number:
    name: Code
    value: float | int
    unit: Code


@dataclass(frozen=True)
class _Line:
    concept: Code
    text: str
    numbers: tuple[_Number, ...] = ()


@dataclass(frozen=True)
class _Section:
    heading: Code
    lines: tuple[_Line, ...]


# ------------------------------------------------------------------------------------- checks


def _text(value: object, what: str) -> str:
    """One line of plain text (no control characters: each sentence is one line in the reader)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if _CONTROL.search(value):
        raise ValueError(f"{what} contains control characters")
    return value.strip()


def _fraction(value: object, what: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number")
    v = float(value)
    if not math.isfinite(v) or not low <= v <= 1.0:
        raise ValueError(f"{what} must be a finite number in {low:g}..1")
    return v


def _verdict(quality_verdict: str) -> tuple[str, str]:
    """("pass" | "flagged" | "refused" | "", reasons) from e.g. "refused: lateral view"."""
    text = _text(quality_verdict, "quality_verdict")
    if not text:
        return "", ""
    word = re.split(r"[\s:;,(]", text, maxsplit=1)[0]
    if word.lower() not in QUALITY_VERDICTS:
        raise ValueError(f"quality_verdict must start with one of {sorted(QUALITY_VERDICTS)}")
    return word.lower(), text[len(word) :].strip(" :;,-()")


def _check_case(case: SimilarCaseText, i: int) -> None:
    if not isinstance(case.study_key, str) or not _STUDY_KEY.fullmatch(case.study_key):
        # the key itself is left out of the message: no study identifier in errors
        raise ValueError(f"similar case {i}: study_key must be a pseudonymous key ([A-Za-z0-9_-], <= 64)")
    _fraction(case.similarity, f"similar case {i}: similarity", low=-1.0)
    if not isinstance(case.labels, tuple):
        raise ValueError(f"similar case {i}: labels must be a tuple of strings")
    for label in case.labels:
        _text(label, f"similar case {i}: label")
    _text(case.outcome, f"similar case {i}: outcome")


def _check(f: Findings) -> None:
    for i, case in enumerate(f.similar, start=1):
        _check_case(case, i)
    if isinstance(f.vote_k, bool) or not isinstance(f.vote_k, int) or f.vote_k < 0:
        raise ValueError("vote_k must be a non-negative integer")
    if f.vote_label is None:
        if f.vote_share is not None:
            raise ValueError("vote_share must be None when there is no vote_label")
    else:
        if not _text(f.vote_label, "vote_label"):
            raise ValueError("vote_label must not be empty (use None for no vote)")
        if f.vote_share is None or f.vote_k < 1:
            raise ValueError("a vote_label needs a vote_share and vote_k >= 1")
        _fraction(f.vote_share, "vote_share")
    if f.prognosis_status not in PROGNOSIS_STATUSES:
        raise ValueError(f"prognosis_status must be one of {sorted(PROGNOSIS_STATUSES)}")
    if f.prognosis_status == "done":
        if f.prognosis_probability is None:
            raise ValueError("prognosis_status 'done' needs a prognosis_probability")
        _fraction(f.prognosis_probability, "prognosis_probability")
    elif f.prognosis_probability is not None:
        raise ValueError(
            f"prognosis_probability must be None when prognosis_status is {f.prognosis_status!r}"
        )
    _text(f.prognosis_outcome, "prognosis_outcome")
    _verdict(f.quality_verdict)


# ------------------------------------------------------------------------------------- sentences


def _percent(fraction: float) -> str:
    return f"{100.0 * fraction:.1f} %"


def _as_percent(fraction: float) -> float:
    """The NUM value: percent to 6 decimals (so 0.234 is written "23.4", not "23.4000000000000")."""
    return round(100.0 * fraction, 6)


def _similar_lines(f: Findings) -> tuple[_Line, ...]:
    lines = [_Line(CODE_CAVEAT, CAVEAT_SIMILAR)]
    if not f.similar:
        lines.append(_Line(CODE_FINDING, "No similar prior case was found in this site's archive."))
    for i, c in enumerate(f.similar, start=1):
        labels = ", ".join(s for s in (label.strip() for label in c.labels) if s) or "not known"
        outcome = c.outcome.strip() or "not known"
        text = (
            f"{i}. Case {c.study_key}: similarity {c.similarity:.3f}; diagnosis {labels}; outcome {outcome}."
        )
        lines.append(_Line(CODE_SIMILAR_CASE, text))
    return tuple(lines)


def _vote_lines(f: Findings) -> tuple[_Line, ...]:
    if f.vote_label is None or f.vote_share is None:
        if f.vote_k == 0:
            text = "No diagnosis vote: no similar prior case with a known diagnosis."
        else:
            text = f"No diagnosis vote from the {f.vote_k} most similar prior cases with a known diagnosis."
        return (_Line(CODE_FINDING, text), _Line(CODE_CAVEAT, CAVEAT_VOTE.format(k=f.vote_k)))
    label, share = f.vote_label.strip(), float(f.vote_share)
    text = (
        f"Diagnosis vote of the {f.vote_k} most similar prior cases with a known diagnosis: "
        f"{label} ({_percent(share)} of the vote)."
    )
    numbers = (
        _Number(CODE_VOTE_SHARE, _as_percent(share), UNIT_PERCENT),
        _Number(CODE_VOTE_K, f.vote_k, UNIT_CASES),
    )
    return (_Line(CODE_FINDING, text, numbers), _Line(CODE_CAVEAT, CAVEAT_VOTE.format(k=f.vote_k)))


def _prognosis_lines(f: Findings) -> tuple[_Line, ...]:
    outcome = f.prognosis_outcome.strip() or DEFAULT_PROGNOSIS_OUTCOME
    if f.prognosis_status == "no_clinical_data":
        return (_Line(CODE_FINDING, NO_CLINICAL_DATA.format(outcome=outcome)),)
    if f.prognosis_status == "image_refused":
        _, reasons = _verdict(f.quality_verdict)
        return (_Line(CODE_FINDING, IMAGE_REFUSED.format(why=reasons or "no reason was given")),)
    p = float(f.prognosis_probability)  # type: ignore[arg-type]  # checked: done has one
    return (
        _Line(
            CODE_FINDING,
            f"Probability of {outcome}: {_percent(p)}.",
            (_Number(CODE_PROBABILITY, _as_percent(p), UNIT_PERCENT),),
        ),
        _Line(CODE_CAVEAT, CAVEAT_PROGNOSIS),
    )


def _quality_lines(f: Findings) -> tuple[_Line, ...]:
    verdict, reasons = _verdict(f.quality_verdict)
    if not verdict:
        return ()
    lines = [_Line(CODE_FINDING, f"Image quality gate: {verdict}" + (f" ({reasons})." if reasons else "."))]
    if verdict == "flagged":
        lines.append(_Line(CODE_CAVEAT, CAVEAT_FLAGGED))
    return tuple(lines)


def _sections(f: Findings) -> tuple[_Section, ...]:
    _check(f)
    sections = [_Section(HEADING_ABOUT, (_Line(CODE_CAVEAT, CAVEAT_ABOUT),))]
    if quality := _quality_lines(f):
        sections.append(_Section(HEADING_QUALITY, quality))
    sections += [
        _Section(HEADING_SIMILAR, _similar_lines(f)),
        _Section(HEADING_VOTE, _vote_lines(f)),
        _Section(HEADING_PROGNOSIS, _prognosis_lines(f)),
    ]
    return tuple(sections)


def findings_text(findings: Findings) -> list[str]:
    """The report's sentences in document order, caveats included (what the SR's TEXT items say).

    Raises ValueError for inconsistent findings (e.g. a probability without status "done").
    """
    return [line.text for section in _sections(findings) for line in section.lines]


# ------------------------------------------------------------------------------------- the SR


def _line_item(line: _Line) -> hd.sr.TextContentItem:
    item = hd.sr.TextContentItem(name=line.concept, value=line.text, relationship_type=Rel.CONTAINS)
    if line.numbers:  # TID 2002 row 4: the sentence INFERRED FROM its TID 1404 numbers
        item.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(
                    name=n.name, value=n.value, unit=n.unit, relationship_type=Rel.INFERRED_FROM
                )
                for n in line.numbers
            ]
        )
    return item


def _content(sections: Sequence[_Section], source: Dataset) -> hd.sr.ContainerContentItem:
    root = hd.sr.ContainerContentItem(name=TITLE, is_content_continuous=False, template_id=TEMPLATE_ID)
    observation_context = device_observer_context()
    items: list[Dataset] = [
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported, value=PROCEDURE_REPORTED, relationship_type=Rel.HAS_CONCEPT_MOD
        ),
        *hd.sr.LanguageOfContentItemAndDescendants(ENGLISH),
        *observation_context,
    ]
    for section in sections:
        container = hd.sr.ContainerContentItem(
            name=section.heading, is_content_continuous=False, relationship_type=Rel.CONTAINS
        )
        children: list[Dataset] = [_line_item(line) for line in section.lines]
        if section.heading == HEADING_ABOUT:  # TID 2001 row 1: the image the report is about
            children.append(
                hd.sr.ImageContentItem(
                    name=CODE_SOURCE_IMAGE,
                    referenced_sop_class_uid=str(source.SOPClassUID),
                    referenced_sop_instance_uid=str(source.SOPInstanceUID),
                    relationship_type=Rel.CONTAINS,
                )
            )
        container.ContentSequence = hd.sr.ContentSequence(children)
        items.append(container)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def _character_set(source: Dataset, sections: Sequence[_Section]) -> object:
    """The source's character set, or UTF-8 when a sentence needs more than ASCII."""
    if all(line.text.isascii() for s in sections for line in s.lines):
        return source.get("SpecificCharacterSet")
    return "ISO_IR 192"


def make_findings_report(
    source: Dataset,
    findings: Findings,
    *,
    software_version: str,
    series_number: int = FINDINGS_SERIES_NUMBER,
) -> hd.sr.EnhancedSR:
    """An Enhanced SR (TID 2000) of ``findings`` on the de-identified ``source`` image.

    Same source, findings, version and series number give the same bytes and UIDs; any change of
    the findings gives a new SOP Instance UID in the same series (a new version: a new series).
    Raises ValueError for inconsistent findings or a source without its identifying UIDs.
    """
    version = check_version(software_version)
    sections = _sections(findings)
    meta = source_meta(source)
    src_uid = str(meta.SOPInstanceUID)
    payload = {"findings": dataclasses.asdict(findings), "series_number": int(series_number)}
    da, tm = source_timestamp(meta)
    with pseudonym_names_ok():
        sr = hd.sr.EnhancedSR(
            evidence=[meta],
            content=_content(sections, meta),
            series_instance_uid=derived_uid("findings-series", src_uid, version),
            series_number=series_number,
            sop_instance_uid=derived_uid("findings", src_uid, version, _digest(payload)),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME,
            software_versions=version,
            device_serial_number=DEVICE_SERIAL_NUMBER,
            series_description=SERIES_DESCRIPTION,
            is_complete=True,
            is_final=False,
            is_verified=False,
            coding_schemes=_coding_schemes(),
            content_date=da,
            content_time=tm,
            series_date=da,
            series_time=tm,
            specific_character_set=_character_set(meta, sections),
        )
    make_reproducible(sr, da, tm)
    return sr
