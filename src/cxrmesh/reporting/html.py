"""The HTML demo report: ``index.html`` rendered from the Jinja2 templates beside this module.

One card per study (display image with the lung outlines, the four-region split and the landmarks;
the attention map as a heatmap on a second copy; the region table, similar cases, the diagnosis vote,
the prognosis and the stage statuses) under a summary table. Images are embedded as base64 PNG data
URIs and the CSS is inlined, so the file can be mailed or archived on its own. Every part is optional:
a failed or pending stage leaves its fields empty and the card says so. Autoescape is on: study
fields reach the page only as text.
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

from cxrmesh.analysis.overlay import HEAT_ANCHORS, LANDMARK_STYLE, LUNG_COLOURS, REGION_COLOURS
from cxrmesh.analysis.regions import REGION_KEYS, Lung
from cxrmesh.reporting import views as v
from cxrmesh.reporting.overlays import study_pictures
from cxrmesh.runtime.blobs import BlobStore
from cxrmesh.v1 import events_pb2, studyview_pb2


def _rgb(colour: Sequence[int]) -> str:
    return f"rgb{tuple(int(c) for c in colour)}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _hms(stamp: Timestamp) -> str:
    return stamp.ToDatetime().strftime("%H:%M:%S")


def _bar_px(score: float) -> int:
    return max(1, round(64 * score))


FILTERS = {
    "rgb": _rgb,
    "data_uri": _data_uri,
    "hms": _hms,
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
    "failed_stages": v.failed_stages,
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
    "no_clinical_data": events_pb2.PrognosisResult.STATUS_NO_CLINICAL_DATA,
    "region_colours": {key: REGION_COLOURS[region] for region, key in REGION_KEYS.items()},
    "legend_regions": [(v.REGION_NAMES[key], REGION_COLOURS[region]) for region, key in REGION_KEYS.items()],
    "legend_lungs": [("right lung", LUNG_COLOURS[Lung.RIGHT]), ("left lung", LUNG_COLOURS[Lung.LEFT])],
    "legend_landmarks": list(LANDMARK_STYLE.values()),
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


def render_html_report(
    views: Sequence[studyview_pb2.StudyView], blobs: BlobStore, title: str = "cxrmesh demo"
) -> str:
    """The self-contained HTML document for ``views`` (pictures drawn from the arrays in ``blobs``)."""
    env = environment()
    css, _, _ = env.loader.get_source(env, "report.css")  # inlined as is (it is ours, not user data)
    return env.get_template("report.html.j2").render(
        title=title,
        css=Markup(css),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        views=list(views),
        cards=[(view, study_pictures(view, blobs)) for view in views],
    )


def write_html_report(
    views: Sequence[studyview_pb2.StudyView], blobs: BlobStore, out_dir: Path, title: str = "cxrmesh demo"
) -> Path:
    """Write ``out_dir/index.html`` (self-contained) for ``views``; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(render_html_report(views, blobs, title), encoding="utf-8")
    return path
