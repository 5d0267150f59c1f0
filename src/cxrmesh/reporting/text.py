"""The plain-text report: a few studies summarised for a terminal (``cxrmesh demo`` prints it), with the
same marks as the HTML report (landmarks estimated, quality flagged or refused)."""

from __future__ import annotations

from collections.abc import Sequence

from cxrmesh.reporting import views as v
from cxrmesh.v1 import studyview_pb2


def _study_lines(view: studyview_pb2.StudyView) -> list[str]:
    head = f"Study {v.short_key(view.study_key)}  [{v.study_status(view)}]"
    meta = v.metadata_text(view.metadata)
    lines = [f"{head}  {meta}" if meta else head]
    # a refused study's reasons stand where its regions would be
    lines += [f"  Mark: {v.mark_line(m)}" for m in v.marks(view) if m.kind != "refused"]
    if view.stages:
        lines.append(
            "  Stages: " + ", ".join(f"{s.name} {v.STATE_LABELS.get(s.state, '?')}" for s in view.stages)
        )
    q = view.quantification
    if v.is_refused(view):
        reasons = "; ".join(v.quality_reasons(view)) or "no reason given"
        lines.append(f"  Quantification: not measured (quality: refused): {reasons}")
    elif v.has_regions(view):
        lines.append(f"  {'Region':<12} {'Area %':>7} {'Opac. %':>8}  RALE extent x density = score")
        for r in v.regions(q):
            name = v.REGION_NAMES.get(r.region, r.region)
            lines.append(
                f"  {name:<12} {100 * r.area_fraction:7.1f} {100 * r.opacity_fraction:8.1f}"
                f"  {r.rale_extent} x {r.rale_density} = {r.rale_score}"
            )
        lines.append(f"  RALE total (estimated): {q.rale_total}/{v.RALE_MAX}")
    else:
        lines.append("  Quantification: none")
    lines.extend(f"  Warning: {w}" for w in v.other_warnings(view))
    if view.similar_cases:
        lines.append(f"  Similar cases (top {min(v.SIMILAR_SHOWN, len(view.similar_cases))}):")
        for i, c in enumerate(view.similar_cases[: v.SIMILAR_SHOWN], 1):
            lines.append(
                f"    {i}. {v.short_key(c.study_key):<8}  {v.DIAGNOSIS_LABELS.get(c.diagnosis, '?'):<15}"
                f"  {v.OUTCOME_LABELS.get(c.outcome, '?'):<16}  similarity {c.similarity:.3f}"
            )
    else:
        lines.append("  Similar cases: none")
    if v.has_vote(view):
        scores = ", ".join(f"{k} {s:.2f}" for k, s in v.scores(view.diagnosis))
        lines.append(
            f"  Diagnosis vote: {v.vote_label(view)} ({scores}; {view.diagnosis.neighbours_used} neighbours)"
        )
    else:
        lines.append("  Diagnosis vote: none")
    lines.append(f"  Prognosis: {v.prognosis_text(view)}")
    lines.extend(f"  FAILED {s.name}: {s.reason or 'no reason given'}" for s in v.failed_stages(view))
    return lines


def text_report(views: Sequence[studyview_pb2.StudyView], max_studies: int = 4) -> str:
    """A short plain-text report of the first ``max_studies`` studies."""
    lines: list[str] = []
    for view in list(views)[:max_studies]:
        lines += [*_study_lines(view), ""]
    if len(views) > max_studies:
        lines.append(f"... {len(views) - max_studies} more studies not shown")
    return "\n".join(lines).rstrip() + "\n"
