"""What the findings SR says about a study, read from its study view (pure: no I/O).

The study view already gathers every stage's result, the similar cases and the diagnosis vote, so
the findings are a translation of that one message into ``Findings``. Absent parts stay absent
(no vote without labelled neighbours, no probability without clinical data, none for a refused
image): the SR says so rather than showing a number nobody computed. The probability is of
PrognosisResult's outcome, the findings report's default (intubation within 72 hours).
"""

from __future__ import annotations

from cxrmesh.contracts import convert
from cxrmesh.dicom.outputs.findings import Findings, SimilarCaseText
from cxrmesh.v1 import common_pb2, events_pb2, search_pb2, studyview_pb2

PROGNOSIS_STATUS = {
    events_pb2.PrognosisResult.STATUS_DONE: "done",
    events_pb2.PrognosisResult.STATUS_NO_CLINICAL_DATA: "no_clinical_data",
    events_pb2.PrognosisResult.STATUS_IMAGE_REFUSED: "image_refused",
}
OUTCOME_TEXT = {
    common_pb2.OUTCOME_INTUBATED_72H: "intubated within 72 hours",
    common_pb2.OUTCOME_NOT_INTUBATED: "not intubated within 72 hours",
}


class NotComposable(ValueError):
    """The view lacks what a findings report needs (no prognosis verdict): the content is at fault."""


def _clip(value: float, low: float = 0.0) -> float:
    """A float32 from the wire within its range (a cosine of 1.0000001 is 1)."""
    return min(1.0, max(low, float(value)))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def similar_case(case: search_pb2.SimilarCase) -> SimilarCaseText:
    """One similar case as the report lists it: its pseudonym, similarity, known labels and outcome."""
    label = convert.diagnosis_name(case.diagnosis)
    return SimilarCaseText(
        study_key=case.study_key,
        similarity=_clip(case.similarity, low=-1.0),
        labels=(label,) if label else (),
        outcome=OUTCOME_TEXT.get(case.outcome, ""),
    )


def quality_verdict(quality: events_pb2.QualityGate) -> str:
    """The gate's verdict and its reasons ("refused: not a frontal view; ..."), "" when unknown."""
    verdict = convert.VERDICT_NAMES.get(quality.verdict, "")
    reasons = "; ".join(_one_line(r) for r in quality.reasons if r.strip())
    return f"{verdict}: {reasons}" if verdict and reasons else verdict


def findings_of(view: studyview_pb2.StudyView) -> Findings:
    """The findings of a complete study view; ``NotComposable`` when it has no prognosis verdict."""
    status = PROGNOSIS_STATUS.get(view.prognosis.status) if view.HasField("prognosis") else None
    if status is None:
        raise NotComposable("the study view has no prognosis verdict for this study")
    vote = view.diagnosis
    label = convert.diagnosis_name(vote.diagnosis) or None
    done = status == "done"
    return Findings(
        similar=tuple(similar_case(c) for c in view.similar_cases),
        vote_label=label,
        vote_share=_clip(vote.scores.get(label, 0.0)) if label else None,
        vote_k=max(0, int(vote.neighbours_used)),
        prognosis_status=status,
        prognosis_probability=_clip(view.prognosis.probability_intubation_72h) if done else None,
        quality_verdict=quality_verdict(view.quantification.quality),
    )
