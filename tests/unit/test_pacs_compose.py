"""The findings the PACS sender writes, read from hand-built study views (no I/O)."""

from __future__ import annotations

import pytest

from cxrmesh.dicom.outputs.findings import findings_text
from cxrmesh.services.pacs_sender.compose import NotComposable, findings_of
from cxrmesh.v1 import common_pb2, events_pb2, search_pb2, studyview_pb2

Status = events_pb2.PrognosisResult
Verdict = events_pb2.QualityGate


def view(
    status: int,
    probability: float = 0.0,
    verdict: int = Verdict.VERDICT_PASS,
    vote: bool = True,
) -> studyview_pb2.StudyView:
    v = studyview_pb2.StudyView(study_key="study-a", complete=True)
    v.similar_cases.extend(
        [
            search_pb2.SimilarCase(
                study_key="prior-1",
                similarity=0.93,
                diagnosis=common_pb2.DIAGNOSIS_COVID19,
                outcome=common_pb2.OUTCOME_INTUBATED_72H,
            ),
            search_pb2.SimilarCase(study_key="prior-2", similarity=0.81),  # no known labels
        ]
    )
    if vote:
        v.diagnosis.CopyFrom(
            search_pb2.DiagnoseReply(
                diagnosis=common_pb2.DIAGNOSIS_COVID19,
                scores={"normal": 0.2, "covid19": 0.7, "other_pneumonia": 0.1},
                neighbours_used=10,
            )
        )
    v.quantification.quality.verdict = verdict
    v.prognosis.CopyFrom(
        Status(
            study_key="study-a",
            status=status,
            probability_intubation_72h=probability,
            neighbours_with_outcome=4,
            neighbours_intubated=1,
        )
    )
    return v


def test_a_done_study_reports_cases_vote_and_probability() -> None:
    f = findings_of(view(Status.STATUS_DONE, probability=0.37))
    assert [(c.study_key, c.labels, c.outcome) for c in f.similar] == [
        ("prior-1", ("covid19",), "intubated within 72 hours"),
        ("prior-2", (), ""),
    ]
    assert [c.similarity for c in f.similar] == [pytest.approx(0.93), pytest.approx(0.81)]
    assert (f.vote_label, f.vote_share, f.vote_k) == ("covid19", pytest.approx(0.7), 10)
    assert f.prognosis_status == "done"
    assert f.prognosis_probability == pytest.approx(0.37)
    assert f.prognosis_outcome == ""  # the report's default: PrognosisResult's intubation within 72 hours
    assert f.quality_verdict == "pass"
    text = findings_text(f)  # the findings report accepts them and says what the PACS will show
    assert "Probability of intubation within 72 hours: 37.0 %." in text
    assert any("Case prior-1: similarity 0.930; diagnosis covid19" in line for line in text)


def test_no_clinical_data_says_so_and_shows_no_probability() -> None:
    v = view(Status.STATUS_NO_CLINICAL_DATA, probability=0.0, verdict=Verdict.VERDICT_FLAGGED)
    v.quantification.quality.reasons.extend(["segmentation members\ndisagree", "low contrast"])
    f = findings_of(v)
    assert f.prognosis_status == "no_clinical_data"
    assert f.prognosis_probability is None  # not a 0 % nobody computed
    assert f.quality_verdict == "flagged: segmentation members disagree; low contrast"  # one line
    assert f.vote_label == "covid19"  # the image-based parts are still there
    assert any(line.startswith("No probability: submit clinical data") for line in findings_text(f))


def test_a_refused_image_has_no_probability_and_no_vote_without_neighbours() -> None:
    v = view(Status.STATUS_IMAGE_REFUSED, verdict=Verdict.VERDICT_REFUSED, vote=False)
    v.quantification.quality.reasons.append("not a frontal chest radiograph")
    f = findings_of(v)
    assert f.prognosis_status == "image_refused"
    assert f.prognosis_probability is None
    assert f.quality_verdict == "refused: not a frontal chest radiograph"
    assert (f.vote_label, f.vote_share, f.vote_k) == (None, None, 0)
    text = findings_text(f)
    assert (
        "No probability: the image quality gate refused this image (not a frontal chest radiograph)." in text
    )
    assert "No diagnosis vote: no similar prior case with a known diagnosis." in text


def test_wire_floats_just_outside_their_range_are_clipped() -> None:
    v = view(Status.STATUS_DONE, probability=1.0000001)
    v.similar_cases[0].similarity = 1.0000001
    v.diagnosis.scores["covid19"] = 1.0000001
    f = findings_of(v)
    assert (f.prognosis_probability, f.similar[0].similarity, f.vote_share) == (1.0, 1.0, 1.0)
    findings_text(f)  # accepted as is


def test_a_view_without_a_prognosis_verdict_is_not_composed() -> None:
    v = view(Status.STATUS_DONE)
    v.ClearField("prognosis")
    with pytest.raises(NotComposable):
        findings_of(v)
    v.prognosis.study_key = "study-a"  # present, but STATUS_UNSPECIFIED
    with pytest.raises(NotComposable):
        findings_of(v)
