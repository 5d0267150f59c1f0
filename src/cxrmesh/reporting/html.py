"""The HTML demo report: ``index.html`` plus one page per study under ``studies/``, from the Jinja2
templates beside this module.

The overview has a summary table (each study linking to its page) and one card per study (display
image with the lung outlines, the four-region split and the landmarks; the attention map as a heatmap
on a second copy; the region table, similar cases, the diagnosis vote, the prognosis and the stage
statuses). A study's page shows its card at full size and everything else the study view knows: the
quality gate, the landmarks with their calibrated confidence, metadata, models, stage times.

Marks a reader must not miss are badges on the card and in the summary: ``landmarks estimated``
(the split uses landmarks estimated from the lung map) and ``quality: flagged`` / ``quality: refused``
with the gate's reasons; a refused study says "not measured" where its regions would be.

Every file stands alone: images are base64 PNG data URIs and the CSS is inlined, so a page can be
mailed or archived on its own. Every part is optional: a failed or pending stage leaves its fields
empty and the card says so. Autoescape is on: study fields reach the page only as text, and a page's
file name is the study's short key reduced to [A-Za-z0-9_-].
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from cxrmesh.analysis.overlay import (
    HEAT_ANCHORS,
    LANDMARK_STYLE,
    LUNG_COLOURS,
    OTHER_LANDMARK,
    REGION_COLOURS,
)
from cxrmesh.analysis.regions import REGION_KEYS, Lung
from cxrmesh.reporting import views as v
from cxrmesh.reporting.overlays import StudyPictures, study_pictures
from cxrmesh.runtime.blobs import BlobStore
from cxrmesh.v1 import events_pb2, studyview_pb2

STUDIES_DIR = "studies"  # the per-study pages, beside index.html


def _rgb(colour: Sequence[int]) -> str:
    return f"rgb{tuple(int(c) for c in colour)}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _hms(stamp: Timestamp) -> str:
    return stamp.ToDatetime().strftime("%H:%M:%S")


def _when(stamp: Timestamp) -> str:
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def _bar_px(score: float) -> int:
    return max(1, round(64 * score))


def _landmark_legend(view: studyview_pb2.StudyView) -> list[tuple[str, tuple[int, int, int], bool, str]]:
    """(label, colour, estimated, calibrated confidence) per landmark: the usual two, then any others."""
    shown = {}
    if view.HasField("quantification") and not v.is_refused(view):
        shown = {lm.name: lm for lm in view.quantification.landmarks}
    estimated = v.estimated_landmarks(view)
    names = [*LANDMARK_STYLE, *(n for n in shown if n not in LANDMARK_STYLE)]
    return [
        (
            *LANDMARK_STYLE.get(name, (name, OTHER_LANDMARK)),
            name in estimated,
            v.landmark_confidence(shown[name]) if name in shown else "",
        )
        for name in names
    ]


FILTERS = {
    "rgb": _rgb,
    "data_uri": _data_uri,
    "hms": _hms,
    "when": _when,
    "bar_px": _bar_px,
    "short_key": v.short_key,
    "study_status": v.study_status,
    "status_class": v.status_class,
    "vote_label": v.vote_label,
    "has_vote": v.has_vote,
    "scores": v.scores,
    "has_regions": v.has_regions,
    "ordered_regions": v.regions,
    "prognosis_done": v.prognosis_done,
    "prognosis_text": v.prognosis_text,
    "metadata_text": v.metadata_text,
    "metadata_rows": v.metadata_rows,
    "model_rows": v.model_rows,
    "failed_stages": v.failed_stages,
    "marks": v.marks,
    "quality_verdict": v.quality_verdict,
    "quality_reasons": v.quality_reasons,
    "is_refused": v.is_refused,
    "landmarks_estimated": v.landmarks_estimated,
    "estimated_landmarks": v.estimated_landmarks,
    "other_warnings": v.other_warnings,
    "landmark_confidence": v.landmark_confidence,
    "confidence_percent": v.confidence_percent,
    "landmark_legend": _landmark_legend,
}
GLOBALS = {
    "key_chars": v.KEY_CHARS,
    "similar_shown": v.SIMILAR_SHOWN,
    "rale_max": v.RALE_MAX,
    "vote_order": v.VOTE_ORDER,
    "region_names": v.REGION_NAMES,
    "diagnosis_labels": v.DIAGNOSIS_LABELS,
    "outcome_labels": v.OUTCOME_LABELS,
    "state_labels": v.STATE_LABELS,
    "landmark_labels": {name: label for name, (label, _) in LANDMARK_STYLE.items()},
    "estimated_note": v.LANDMARKS_ESTIMATED_NOTE,
    "confidence_meaning": v.CONFIDENCE_MEANING,
    "no_clinical_data": events_pb2.PrognosisResult.STATUS_NO_CLINICAL_DATA,
    "image_refused": events_pb2.PrognosisResult.STATUS_IMAGE_REFUSED,
    "region_colours": {key: REGION_COLOURS[region] for region, key in REGION_KEYS.items()},
    "legend_regions": [(v.REGION_NAMES[key], REGION_COLOURS[region]) for region, key in REGION_KEYS.items()],
    "legend_lungs": [("right lung", LUNG_COLOURS[Lung.RIGHT]), ("left lung", LUNG_COLOURS[Lung.LEFT])],
    "heat_ramp": "linear-gradient(90deg, " + ", ".join(_rgb(c) for c in HEAT_ANCHORS) + ")",
}


@cache
def environment() -> Environment:
    """The report's Jinja2 environment: package templates, autoescape on, undefined names are errors."""
    env = Environment(
        loader=PackageLoader("cxrmesh.reporting", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    env.globals.update(GLOBALS)
    return env


def _common(title: str) -> dict:
    env = environment()
    css, _, _ = env.loader.get_source(env, "report.css")  # inlined as is (it is ours, not user data)
    return {"title": title, "css": Markup(css), "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def _render_index(
    views: Sequence[studyview_pb2.StudyView],
    pictures: Sequence[StudyPictures],
    links: Sequence[str],
    title: str,
) -> str:
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            **_common(title),
            views=list(views),
            links=list(links),
            cards=list(zip(views, pictures, strict=True)),
        )
    )


def render_html_report(
    views: Sequence[studyview_pb2.StudyView], blobs: BlobStore, title: str = "cxrmesh demo"
) -> str:
    """The overview document for ``views`` (pictures drawn from the arrays in ``blobs``); its links
    to the study pages resolve once ``write_html_report`` has written them."""
    pages = [f"{STUDIES_DIR}/{name}.html" for name in v.page_names(views)]
    return _render_index(views, [study_pictures(view, blobs) for view in views], pages, title)


def render_study_page(
    view: studyview_pb2.StudyView,
    pictures: StudyPictures,
    title: str = "cxrmesh demo",
    index: str = "../index.html",
) -> str:
    """One study's self-contained page: its card at full size and everything known about it."""
    return (
        environment()
        .get_template("study.html.j2")
        .render(**_common(title), view=view, pictures=pictures, index=index)
    )


def write_html_report(
    views: Sequence[studyview_pb2.StudyView], blobs: BlobStore, out_dir: Path, title: str = "cxrmesh demo"
) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/studies/<short key>.html`` per study; returns the index.

    Pages of studies not in ``views`` left there by an earlier report stay (unlinked).
    """
    out_dir = Path(out_dir)
    studies = out_dir / STUDIES_DIR
    studies.mkdir(parents=True, exist_ok=True)
    pictures = [study_pictures(view, blobs) for view in views]
    names = v.page_names(views)
    for view, pics, name in zip(views, pictures, names, strict=True):
        page = studies / f"{name}.html"
        if page.resolve().parent != studies.resolve():  # page_name allows no separator; checked all the same
            raise ValueError(f"study page name escapes {studies}: {name!r}")
        page.write_text(render_study_page(view, pics, title), encoding="utf-8")
    path = out_dir / "index.html"
    links = [f"{STUDIES_DIR}/{name}.html" for name in names]
    path.write_text(_render_index(views, pictures, links, title), encoding="utf-8")
    return path
