"""What the reports say about one StudyView: status, labels, ordered regions and scores, prognosis.

The text report and the HTML report read a study through these functions, so both word a study the
same way. Study keys are keyed pseudonyms; the reports still show only their first ``KEY_CHARS``.
"""

from __future__ import annotations

from cxrmesh.analysis.regions import REGION_KEYS
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
