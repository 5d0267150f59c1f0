"""What the reports say about one StudyView: status, labels, ordered regions and scores, prognosis,
the quality gate's verdict and the estimated-landmark mark, and the file name of its page.

The text report and the HTML report read a study through these functions, so both word a study the
same way. Study keys are keyed pseudonyms; the reports still show only their first ``KEY_CHARS``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cxrmesh.analysis.regions import REGION_KEYS
from cxrmesh.contracts import convert
from cxrmesh.v1 import common_pb2, events_pb2, search_pb2, studyview_pb2

KEY_CHARS = 8  # only this much of a study key is ever shown
SIMILAR_SHOWN = 5  # similar cases listed per study
RALE_MAX = 48

REGION_NAMES = {
    "right_upper": "right upper",
    "right_lower": "right lower",
    "left_upper": "left upper",
    "left_lower": "left lower",
}
REGION_ORDER = tuple(REGION_KEYS.values())
DIAGNOSIS_LABELS = {
    common_pb2.DIAGNOSIS_UNSPECIFIED: "unknown",
    common_pb2.DIAGNOSIS_NORMAL: "normal",
    common_pb2.DIAGNOSIS_COVID19: "covid19",
    common_pb2.DIAGNOSIS_OTHER_PNEUMONIA: "other pneumonia",
}
OUTCOME_LABELS = {
    common_pb2.OUTCOME_UNSPECIFIED: "outcome unknown",
    common_pb2.OUTCOME_NOT_INTUBATED: "not intubated",
    common_pb2.OUTCOME_INTUBATED_72H: "intubated <=72 h",
}
SCORE_ORDER = ("covid19", "normal", "other_pneumonia")
VOTE_ORDER = ("covid19", "normal", "other pneumonia", "undetermined", "no vote")
STATE_LABELS = {
    studyview_pb2.STAGE_STATE_UNSPECIFIED: "unknown",
    studyview_pb2.STAGE_PENDING: "pending",
    studyview_pb2.STAGE_DONE: "done",
    studyview_pb2.STAGE_FAILED: "failed",
}


def short_key(key: str) -> str:
    """The first ``KEY_CHARS`` characters of a study key (never more)."""
    return key[:KEY_CHARS] if key else "(no key)"


def failed_stages(view: studyview_pb2.StudyView) -> list[studyview_pb2.Stage]:
    return [s for s in view.stages if s.state == studyview_pb2.STAGE_FAILED]


def study_status(view: studyview_pb2.StudyView) -> str:
    """``failed`` (a stage failed), ``complete`` (all done) or ``in progress``."""
    if failed_stages(view):
        return "failed"
    return "complete" if view.complete else "in progress"


def status_class(status: str) -> str:
    """The CSS class of a study status: ``failed``, ``complete`` or ``progress``."""
    return {"failed": "failed", "complete": "complete"}.get(status, "progress")


def has_vote(view: studyview_pb2.StudyView) -> bool:
    return view.HasField("diagnosis") and bool(view.diagnosis.scores)


def vote_label(view: studyview_pb2.StudyView) -> str:
    if not has_vote(view):
        return "no vote"
    if view.diagnosis.diagnosis == common_pb2.DIAGNOSIS_UNSPECIFIED:
        return "undetermined"
    return DIAGNOSIS_LABELS.get(view.diagnosis.diagnosis, "unknown")


def scores(reply: search_pb2.DiagnoseReply) -> list[tuple[str, float]]:
    """The vote's scores, highest first (known diagnoses before others at equal score)."""
    known = [(k, reply.scores[k]) for k in SCORE_ORDER if k in reply.scores]
    extra = sorted((k, v) for k, v in reply.scores.items() if k not in SCORE_ORDER)
    return sorted(known + extra, key=lambda kv: -kv[1])


def has_regions(view: studyview_pb2.StudyView) -> bool:
    return view.HasField("quantification") and bool(view.quantification.regions)


def regions(q: events_pb2.StudyQuantified) -> list[events_pb2.RegionMeasurement]:
    """The region measurements in the order right upper, right lower, left upper, left lower, others."""
    by_key = {r.region: r for r in q.regions}
    ordered = [by_key.pop(k) for k in REGION_ORDER if k in by_key]
    return ordered + list(by_key.values())


def prognosis_done(view: studyview_pb2.StudyView) -> bool:
    return view.HasField("prognosis") and view.prognosis.status == events_pb2.PrognosisResult.STATUS_DONE


def prognosis_text(view: studyview_pb2.StudyView) -> str:
    if not view.HasField("prognosis"):
        for stage in view.stages:
            if stage.name == "prognosis" and stage.state == studyview_pb2.STAGE_FAILED:
                return f"none: stage failed ({stage.reason or 'no reason given'})"
        return "none yet (pending)"
    p = view.prognosis
    if p.status == events_pb2.PrognosisResult.STATUS_IMAGE_REFUSED:
        return "none: the image was refused by the quality gate (not measured)"
    if p.status == events_pb2.PrognosisResult.STATUS_NO_CLINICAL_DATA:
        missing = ", ".join(p.missing_clinical) if p.missing_clinical else "all variables"
        return f"no clinical data: submit clinical data to get a probability (missing: {missing})"
    if p.status != events_pb2.PrognosisResult.STATUS_DONE:
        return "none (status unknown)"
    text = f"P(intubation within 72 h) = {100 * p.probability_intubation_72h:.1f} %"
    if p.neighbours_with_outcome:
        text += f" ({p.neighbours_intubated}/{p.neighbours_with_outcome} labelled neighbours intubated)"
    return text


def metadata_text(m: common_pb2.StudyMetadata) -> str:
    parts = [
        m.modality,
        m.view_position,
        m.sex,
        m.age_band,
        m.study_date,
        f"site {m.site[:8]}" if m.site else "",
    ]
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------ quality gate and landmark marks
LANDMARKS_ESTIMATED = "landmarks estimated"
LANDMARKS_ESTIMATED_NOTE = (
    "the detector's landmarks were implausible for this lung map; "
    "the upper/lower split uses landmarks estimated from the lung outline"
)
CONFIDENCE_MEANING = "chance within 10 mm"
PAGE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Mark:
    """A badge on a study: ``kind`` (its CSS class: estimated, flagged, refused), its label and why."""

    kind: str
    label: str
    reasons: tuple[str, ...]


def quality_verdict(view: studyview_pb2.StudyView) -> str:
    """``pass``, ``flagged`` or ``refused``; empty when the gate said nothing (older events)."""
    if not view.HasField("quantification"):
        return ""
    return convert.VERDICT_NAMES.get(view.quantification.quality.verdict, "")


def quality_reasons(view: studyview_pb2.StudyView) -> list[str]:
    return list(view.quantification.quality.reasons) if quality_verdict(view) else []


def is_refused(view: studyview_pb2.StudyView) -> bool:
    """The quality gate refused the image: nothing was measured."""
    return quality_verdict(view) == "refused"


def estimated_landmarks(view: studyview_pb2.StudyView) -> set[str]:
    """Names of the landmarks the split used that were estimated from the lung map (none when refused).

    Each landmark says so itself; a study that says its split used estimated landmarks while none of
    them does counts all of them as estimated (the cautious reading).
    """
    if not view.HasField("quantification") or is_refused(view):
        return set()
    q = view.quantification
    named = {lm.name for lm in q.landmarks if lm.estimated}
    if q.landmarks_estimated and not named:
        return {lm.name for lm in q.landmarks}
    return named


def landmarks_estimated(view: studyview_pb2.StudyView) -> bool:
    if not view.HasField("quantification") or is_refused(view):
        return False
    return view.quantification.landmarks_estimated or bool(estimated_landmarks(view))


def marks(view: studyview_pb2.StudyView) -> list[Mark]:
    """The study's badges: landmarks estimated, quality flagged or refused (a passing study has none)."""
    found = []
    if landmarks_estimated(view):
        found.append(Mark("estimated", LANDMARKS_ESTIMATED, (LANDMARKS_ESTIMATED_NOTE,)))
    verdict = quality_verdict(view)
    if verdict in ("flagged", "refused"):
        found.append(Mark(verdict, f"quality: {verdict}", tuple(quality_reasons(view))))
    return found


def mark_line(mark: Mark) -> str:
    """A mark as a sentence for a terminal, e.g. ``quality: flagged: lungs unequal in size``."""
    return f"{mark.label}: {'; '.join(mark.reasons) or 'no reason given'}"


def mark_lines(view: studyview_pb2.StudyView) -> list[str]:
    return [mark_line(m) for m in marks(view)]


def other_warnings(view: studyview_pb2.StudyView) -> list[str]:
    """The quantification's warnings less those already listed as the quality gate's reasons."""
    given = set(quality_reasons(view))
    return [w for w in view.quantification.warnings if w not in given]


def confidence_percent(lm: events_pb2.Landmark) -> str:
    """The calibrated confidence as ``82 %``; empty when the event carries none (older events)."""
    if lm.confidence == 0 and lm.detector_score == 0:
        return ""
    return f"{100 * lm.confidence:.0f} %"


def landmark_confidence(lm: events_pb2.Landmark) -> str:
    """``82 % chance within 10 mm`` (the calibrated confidence); empty when there is none."""
    percent = confidence_percent(lm)
    return f"{percent} {CONFIDENCE_MEANING}" if percent else ""


def page_name(key: str) -> str:
    """A file name stem for the study's page: its short key with anything outside [A-Za-z0-9_-] as ``_``."""
    return PAGE_NAME_UNSAFE.sub("_", key[:KEY_CHARS]) if key else "no-key"


def page_names(views: Sequence[studyview_pb2.StudyView]) -> list[str]:
    """One distinct page name per study, in order (``-2``, ``-3`` ... after a repeated short key)."""
    names: list[str] = []
    for view in views:
        stem = page_name(view.study_key)
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names.append(name)
    return names


def metadata_rows(m: common_pb2.StudyMetadata) -> list[tuple[str, str]]:
    """Every metadata field that is set, as (label, text); the site pseudonym cut like a study key."""
    rows = [
        ("modality", m.modality),
        ("view position", m.view_position),
        ("sex", m.sex),
        ("age band", m.age_band),
        ("study date (shifted)", m.study_date),
        ("site", m.site[:KEY_CHARS]),
        ("manufacturer", m.manufacturer),
        ("size", f"{m.columns} x {m.rows} pixels" if m.rows and m.columns else ""),
        ("bits stored", str(m.bits_stored) if m.bits_stored else ""),
        ("photometric", m.photometric),
        ("transfer syntax", m.transfer_syntax),
        ("pixel spacing", f"{m.pixel_spacing_mm:.3f} mm" if m.pixel_spacing_mm else ""),
    ]
    return [(label, text) for label, text in rows if text]


def model_rows(view: studyview_pb2.StudyView) -> list[tuple[str, str]]:
    """Which model produced each result, as (stage, ``name version``), for the stages that report one."""
    found = [
        (stage, f"{msg.model.name} {msg.model.version}".strip())
        for stage, field, msg in (
            ("segmentation", "segmentation", view.segmentation),
            ("quantification", "quantification", view.quantification),
            ("prognosis", "prognosis", view.prognosis),
        )
        if view.HasField(field) and msg.HasField("model")
    ]
    if view.HasField("segmentation") and view.segmentation.member_agreement:
        found.append(("segmentation members' agreement", f"{view.segmentation.member_agreement:.2f}"))
    return found
