"""Demo reports of StudyViews: a short text report and a self-contained HTML report with overlays.

``text_report`` summarises a few studies for a terminal; ``write_html_report`` writes ``index.html``
with one card per study (display image with the lung outlines, the four-region split and the
landmarks; the attention map as a heatmap on a second copy; the region table, similar cases, the
diagnosis vote, the prognosis and the stage statuses) and a summary table at the top. Images are
embedded as base64 PNG data URIs, so the file can be mailed or archived on its own. Every part is
optional: a failed or pending stage leaves its fields empty and the card says so.

Study keys are keyed pseudonyms; the reports still show only their first 8 characters.

``python -m cxrmesh.reporting.study_report --corpus DIR --out DIR [--screenshot PNG]`` builds demo StudyViews
from a synthetic corpus with the committed ONNX models (no mesh needed) and renders them.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxrmesh.analysis.regions import REGION_KEYS, Lung, Region
from cxrmesh.contracts.tensors import MODEL_INPUT
from cxrmesh.runtime.blobs import BlobError, BlobStore, bytes_array
from cxrmesh.v1 import common_pb2, events_pb2, search_pb2, studyview_pb2

KEY_CHARS = 8  # only this much of a study key is ever shown

REGION_NAMES = {
    "right_upper": "right upper",
    "right_lower": "right lower",
    "left_upper": "left upper",
    "left_lower": "left lower",
}
REGION_ORDER = tuple(REGION_KEYS.values())
# Fill colours of the four regions (RGB) and outline colours of the two lungs.
REGION_COLOURS: dict[int, tuple[int, int, int]] = {
    Region.RIGHT_UPPER: (235, 87, 64),
    Region.RIGHT_LOWER: (250, 176, 40),
    Region.LEFT_UPPER: (66, 133, 244),
    Region.LEFT_LOWER: (38, 198, 170),
}
LUNG_COLOURS: dict[int, tuple[int, int, int]] = {Lung.RIGHT: (255, 80, 80), Lung.LEFT: (90, 170, 255)}
LANDMARK_STYLE: dict[str, tuple[str, tuple[int, int, int]]] = {
    "carina": ("carina", (60, 235, 95)),
    "left_hilum": ("L hilum", (245, 70, 245)),
}
REGION_ALPHA = 0.30
ATTENTION_ALPHA = 0.60
# Anchor colours of the attention colour map (low -> high), a turbo-like ramp.
HEAT_ANCHORS = np.array(
    [(48, 18, 59), (65, 120, 240), (30, 215, 200), (160, 250, 60), (250, 185, 40), (215, 40, 20)],
    dtype=np.float32,
)

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
STATE_LABELS = {
    studyview_pb2.STAGE_STATE_UNSPECIFIED: "unknown",
    studyview_pb2.STAGE_PENDING: "pending",
    studyview_pb2.STAGE_DONE: "done",
    studyview_pb2.STAGE_FAILED: "failed",
}


# ----------------------------------------------------------------------------------------- helpers


def short_key(key: str) -> str:
    """The first ``KEY_CHARS`` characters of a study key (never more)."""
    return key[:KEY_CHARS] if key else "(no key)"


def _failed(view: studyview_pb2.StudyView) -> list[studyview_pb2.Stage]:
    return [s for s in view.stages if s.state == studyview_pb2.STAGE_FAILED]


def study_status(view: studyview_pb2.StudyView) -> str:
    """``failed`` (a stage failed), ``complete`` (all done) or ``in progress``."""
    if _failed(view):
        return "failed"
    return "complete" if view.complete else "in progress"


def _vote_label(view: studyview_pb2.StudyView) -> str:
    if not view.HasField("diagnosis") or not view.diagnosis.scores:
        return "no vote"
    if view.diagnosis.diagnosis == common_pb2.DIAGNOSIS_UNSPECIFIED:
        return "undetermined"
    return DIAGNOSIS_LABELS.get(view.diagnosis.diagnosis, "unknown")


def _scores(reply: search_pb2.DiagnoseReply) -> list[tuple[str, float]]:
    known = [(k, reply.scores[k]) for k in SCORE_ORDER if k in reply.scores]
    extra = sorted((k, v) for k, v in reply.scores.items() if k not in SCORE_ORDER)
    return sorted(known + extra, key=lambda kv: -kv[1])


def _regions(q: events_pb2.StudyQuantified) -> list[events_pb2.RegionMeasurement]:
    by_key = {r.region: r for r in q.regions}
    ordered = [by_key.pop(k) for k in REGION_ORDER if k in by_key]
    return ordered + list(by_key.values())


def _prognosis_text(view: studyview_pb2.StudyView) -> str:
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


def _metadata_text(m: common_pb2.StudyMetadata) -> str:
    parts = [
        m.modality,
        m.view_position,
        m.sex,
        m.age_band,
        m.study_date,
        f"site {m.site[:8]}" if m.site else "",
    ]
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------- text


def text_report(views: Sequence[studyview_pb2.StudyView], max_studies: int = 4) -> str:
    """A short plain-text report of the first ``max_studies`` studies."""
    lines: list[str] = []
    for view in list(views)[:max_studies]:
        head = f"Study {short_key(view.study_key)}  [{study_status(view)}]"
        meta = _metadata_text(view.metadata)
        lines.append(f"{head}  {meta}" if meta else head)
        if view.stages:
            lines.append(
                "  Stages: " + ", ".join(f"{s.name} {STATE_LABELS.get(s.state, '?')}" for s in view.stages)
            )
        q = view.quantification
        if view.HasField("quantification") and q.regions:
            lines.append(f"  {'Region':<12} {'Area %':>7} {'Opac. %':>8}  RALE extent x density = score")
            for r in _regions(q):
                name = REGION_NAMES.get(r.region, r.region)
                lines.append(
                    f"  {name:<12} {100 * r.area_fraction:7.1f} {100 * r.opacity_fraction:8.1f}"
                    f"  {r.rale_extent} x {r.rale_density} = {r.rale_score}"
                )
            lines.append(f"  RALE total (estimated): {q.rale_total}/48")
            for w in q.warnings:
                lines.append(f"  Warning: {w}")
        else:
            lines.append("  Quantification: none")
        if view.similar_cases:
            lines.append(f"  Similar cases (top {min(5, len(view.similar_cases))}):")
            for i, c in enumerate(view.similar_cases[:5], 1):
                lines.append(
                    f"    {i}. {short_key(c.study_key):<8}  {DIAGNOSIS_LABELS.get(c.diagnosis, '?'):<15}"
                    f"  {OUTCOME_LABELS.get(c.outcome, '?'):<16}  similarity {c.similarity:.3f}"
                )
        else:
            lines.append("  Similar cases: none")
        if view.HasField("diagnosis") and view.diagnosis.scores:
            scores = ", ".join(f"{k} {v:.2f}" for k, v in _scores(view.diagnosis))
            lines.append(
                f"  Diagnosis vote: {_vote_label(view)} ({scores}; "
                f"{view.diagnosis.neighbours_used} neighbours)"
            )
        else:
            lines.append("  Diagnosis vote: none")
        lines.append(f"  Prognosis: {_prognosis_text(view)}")
        for s in _failed(view):
            lines.append(f"  FAILED {s.name}: {s.reason or 'no reason given'}")
        lines.append("")
    if len(views) > max_studies:
        lines.append(f"... {len(views) - max_studies} more studies not shown")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------- overlays


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.shape == shape:
        return labels.astype(np.uint8)
    h, w = shape
    if h % labels.shape[0] == 0 and w % labels.shape[1] == 0:
        return np.kron(
            labels.astype(np.uint8), np.ones((h // labels.shape[0], w // labels.shape[1]), np.uint8)
        )
    img = Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(img)


def _edge(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (4-neighbour erosion)."""
    inner = mask.copy()
    for _ in range(width):
        p = np.pad(inner, 1, constant_values=False)
        inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (..., 3) float RGB on the turbo-like ramp."""
    v = np.clip(values, 0, 1) * (len(HEAT_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(HEAT_ANCHORS) - 2)
    t = (v - lo)[..., None]
    return HEAT_ANCHORS[lo] * (1 - t) + HEAT_ANCHORS[lo + 1] * t


def overlay_png(
    display: np.ndarray,
    lungs: np.ndarray | None,
    regions: np.ndarray | None,
    landmarks: Sequence[tuple[str, float, float]],
    attention: np.ndarray | None,
    model_size: int = MODEL_INPUT,
) -> bytes:
    """PNG bytes of ``display`` (H, W) in [0, 1] with whichever layers are given, at the display size.

    ``regions`` (0 none, 1 RU, 2 RL, 3 LU, 4 LL) become translucent fills and ``lungs`` (1 right,
    2 left) outlines; both may be at any size that scales to the display (nearest). ``landmarks``
    are (name, x, y) in ``model_size`` pixels (pixel centres at integers), drawn as ringed
    markers; the line through the left hilum (the upper/lower split) is drawn across the lungs.
    ``attention`` (any small grid) is stretched to the display (bilinear), normalised to its max
    and blended as a heatmap whose opacity grows with the value.
    """
    display = np.asarray(display, dtype=np.float32)
    if display.ndim != 2:
        raise ValueError(f"display image must be 2-D, got shape {display.shape}")
    h, w = display.shape
    grey = np.nan_to_num(np.clip(display, 0, 1)) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)

    if attention is not None:
        att = np.nan_to_num(np.asarray(attention, dtype=np.float32))
        att = att - min(float(att.min()), 0.0)
        att = att / max(float(att.max()), 1e-6)
        big = Image.fromarray(att.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
        a = np.clip(np.asarray(big, dtype=np.float32), 0, 1)
        alpha = (ATTENTION_ALPHA * a**0.8)[..., None]
        rgb = rgb * (1 - alpha) + heat_colours(a) * alpha

    if regions is not None:
        reg = _resize_labels(regions, (h, w))
        for label, colour in REGION_COLOURS.items():
            m = reg == label
            rgb[m] = rgb[m] * (1 - REGION_ALPHA) + np.array(colour, np.float32) * REGION_ALPHA

    lung_map = _resize_labels(lungs, (h, w)) if lungs is not None else None
    if lung_map is not None:
        width = max(1, round(w / 256))
        for label, colour in LUNG_COLOURS.items():
            rgb[_edge(lung_map == label, width)] = colour

    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(img)
    sx, sy = w / model_size, h / model_size
    unit = max(w, h) / 512  # marker sizes scale with the image
    font = _font(max(10, round(22 * unit)))

    extent = (
        lung_map
        if lung_map is not None
        else (_resize_labels(regions, (h, w)) if regions is not None else None)
    )
    for name, _x, y in landmarks:
        if name == "left_hilum" and extent is not None and np.isfinite(y):
            cols = np.nonzero((extent > 0).any(axis=0))[0]
            if cols.size:
                Y = (y + 0.5) * sy
                for x0 in range(int(cols.min()), int(cols.max()), max(2, round(12 * unit))):
                    x1 = min(x0 + round(6 * unit), int(cols.max()))
                    draw.line([(x0, Y), (x1, Y)], fill=(255, 255, 255), width=max(1, round(unit)))

    for name, x, y in landmarks:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        label, colour = LANDMARK_STYLE.get(name, (name, (255, 255, 0)))
        X, Y = (x + 0.5) * sx, (y + 0.5) * sy
        r = 8 * unit
        draw.ellipse(
            [X - r - 1, Y - r - 1, X + r + 1, Y + r + 1], outline=(0, 0, 0), width=max(1, round(unit))
        )
        draw.ellipse([X - r, Y - r, X + r, Y + r], outline=colour, width=max(2, round(2.5 * unit)))
        draw.line([(X - 2 * unit, Y), (X + 2 * unit, Y)], fill=colour, width=max(1, round(unit)))
        draw.line([(X, Y - 2 * unit), (X, Y + 2 * unit)], fill=colour, width=max(1, round(unit)))
        # carina's label goes up-left, the hilum's down-right, so the two never collide
        tx, ty = (X - r - 4 * unit, Y - r - 2 * unit) if name == "carina" else (X + r + 3 * unit, Y + r * 0.3)
        anchor = "rb" if name == "carina" else "lt"
        draw.text(
            (tx, ty), label, fill=colour, font=font, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0)
        )

    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# -------------------------------------------------------------------------------------------- HTML


def _has_ref(ref: common_pb2.BlobRef) -> bool:
    return bool(ref.sha256 or ref.uri)


def _load(blobs: BlobStore, ref: common_pb2.BlobRef, what: str, problems: list[str]) -> np.ndarray | None:
    """The array behind ``ref``; None (and a note in ``problems``) when absent or unreadable."""
    if not _has_ref(ref):
        return None
    try:
        array = bytes_array(blobs.get(ref))
    except (BlobError, OSError, ValueError) as exc:
        problems.append(f"{what} unavailable: {exc}")
        return None
    if array.ndim != 2:
        problems.append(f"{what} unavailable: expected a 2-D array, got shape {array.shape}")
        return None
    return array


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  margin: 20px 28px; color: #1d2430; background: #f3f5f8; }
h1 { font-size: 24px; margin: 0 0 2px; } h2 { font-size: 18px; margin: 0; }
h3 { font-size: 13px; margin: 12px 0 4px; text-transform: uppercase; letter-spacing: .04em; color: #5a6575; }
.sub { color: #5a6575; margin-bottom: 14px; }
table { border-collapse: collapse; } th, td { padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #e7ebf1; font-weight: 600; vertical-align: bottom; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) td { background: #f7f9fb; }
.summary { display: flex; gap: 28px; align-items: flex-start; background: #fff; padding: 14px 18px;
  border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); margin-bottom: 18px; }
.counts td { padding: 2px 10px 2px 0; } .counts td.n { font-weight: 600; font-size: 16px; }
.card { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); padding: 14px 18px;
  margin-bottom: 18px; }
.card.failed { border-left: 5px solid #d32f2f; } .card.complete { border-left: 5px solid #2e7d32; }
.card.progress { border-left: 5px solid #f9a825; }
.head { display: flex; align-items: baseline; gap: 14px; flex-wrap: wrap; }
.meta { color: #5a6575; }
.body { display: flex; gap: 22px; margin-top: 8px; align-items: flex-start; }
.images { display: flex; gap: 10px; flex: none; } figure { margin: 0; }
figure img { width: 280px; height: 280px; display: block; border-radius: 4px; background: #000; }
figcaption { font-size: 12px; color: #5a6575; margin-top: 3px; max-width: 280px; }
.noimg { width: 280px; height: 280px; display: flex; align-items: center; justify-content: center;
  background: #2a2f38; color: #c9d1dc; border-radius: 4px; text-align: center; padding: 10px;
  box-sizing: border-box; }
.info { flex: 1; min-width: 0; display: flex; gap: 24px; align-items: flex-start; }
.side { flex: 1; min-width: 230px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.b-done, .b-complete { background: #e3f3e5; color: #1b5e20; }
.b-failed { background: #fde4e4; color: #b71c1c; }
.b-pending, .b-progress, .b-unknown { background: #fff4d6; color: #8a6100; }
.stages { list-style: none; padding: 0; margin: 0; } .stages li { margin: 2px 0; }
.reason { color: #c62828; font-weight: 600; white-space: normal; }
.stages .reason { margin: 0 0 4px 4px; }
.warn { color: #9a6a00; } .muted { color: #7b8594; }
.sw { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 4px;
  vertical-align: -1px; }
.legend { font-size: 12px; color: #3c4654; margin-top: 4px; max-width: 570px; }
.legend span { margin-right: 10px; white-space: nowrap; }
.bar { display: inline-block; height: 9px; background: #4a78c2; border-radius: 2px; vertical-align: 0; }
.ramp { display: inline-block; width: 90px; height: 9px; border-radius: 2px; vertical-align: -1px;
  background: linear-gradient(90deg, rgb(48,18,59), rgb(65,120,240), rgb(30,215,200), rgb(160,250,60),
  rgb(250,185,40), rgb(215,40,20)); }
tr.total td { font-weight: 600; border-top: 1px solid #c7ced8; background: #fff; }
a { color: #1f5fbf; text-decoration: none; }
"""


def _rgb(colour: tuple[int, int, int]) -> str:
    return f"rgb{tuple(colour)}"


def _legend() -> str:
    items = [
        f'<span><i class="sw" style="background:{_rgb(REGION_COLOURS[r])}"></i>{REGION_NAMES[k]}</span>'
        for r, k in REGION_KEYS.items()
    ]
    items += [
        f'<span><i class="sw" style="border:2px solid {_rgb(LUNG_COLOURS[Lung.RIGHT])};background:none"></i>'
        "right lung</span>",
        f'<span><i class="sw" style="border:2px solid {_rgb(LUNG_COLOURS[Lung.LEFT])};background:none"></i>'
        "left lung</span>",
    ]
    items += [
        f'<span><i class="sw" style="border-radius:6px;border:2px solid {_rgb(c)};background:none"></i>'
        f"{n}</span>"
        for n, c in LANDMARK_STYLE.values()
    ]
    items.append("<span>- - - upper/lower split (left hilum)</span>")
    items.append('<span>attention: low <i class="ramp"></i> high</span>')
    lines = (items[:6], items[6:])
    return '<div class="legend">' + "".join("<div>" + "".join(line) + "</div>" for line in lines) + "</div>"


def _figure(png: bytes | None, caption: str, missing: str) -> str:
    if png is None:
        return (
            f'<figure><div class="noimg">{_esc(missing)}</div>'
            f"<figcaption>{_esc(caption)}</figcaption></figure>"
        )
    return (
        f'<figure><img alt="{_esc(caption)}" src="{_data_uri(png)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _region_table(view: studyview_pb2.StudyView) -> str:
    q = view.quantification
    if not view.HasField("quantification") or not q.regions:
        return '<p class="muted">No quantification.</p>'
    rows = []
    for r in _regions(q):
        colour = REGION_COLOURS.get(REGION_ORDER.index(r.region) + 1) if r.region in REGION_ORDER else None
        sw = f'<i class="sw" style="background:{_rgb(colour)}"></i>' if colour else ""
        rows.append(
            f"<tr><td>{sw}{_esc(REGION_NAMES.get(r.region, r.region))}</td>"
            f'<td class="n">{100 * r.area_fraction:.1f}</td><td class="n">{100 * r.opacity_fraction:.1f}</td>'
            f'<td class="n">{r.rale_extent} &times; {r.rale_density} = <b>{r.rale_score}</b></td></tr>'
        )
    rows.append(
        '<tr class="total"><td colspan="3">RALE total (estimated)</td>'
        f'<td class="n">{q.rale_total} / 48</td></tr>'
    )
    warnings = "".join(f'<div class="warn">&#9888; {_esc(w)}</div>' for w in q.warnings)
    return (
        '<table><thead><tr><th>Region</th><th class="n">Area %</th><th class="n">Opacity %</th>'
        '<th class="n" title="RALE extent (0-4) &times; density (0-3) = score">RALE extent &times;<br>'
        "density = score</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>" + warnings
    )


def _similar_table(view: studyview_pb2.StudyView) -> str:
    if not view.similar_cases:
        return '<p class="muted">No similar cases.</p>'
    rows = "".join(
        f'<tr><td class="n">{i}</td><td><code>{_esc(short_key(c.study_key))}</code></td>'
        f"<td>{_esc(DIAGNOSIS_LABELS.get(c.diagnosis, '?'))}</td>"
        f"<td>{_esc(OUTCOME_LABELS.get(c.outcome, '?')).replace('&lt;=', '&le;')}</td>"
        f'<td class="n">{c.similarity:.3f}</td></tr>'
        for i, c in enumerate(view.similar_cases[:5], 1)
    )
    return (
        '<table><thead><tr><th class="n">#</th><th>Case</th><th>Diagnosis</th><th>Outcome</th>'
        f'<th class="n">Similarity</th></tr></thead><tbody>{rows}</tbody></table>'
    )


def _vote_html(view: studyview_pb2.StudyView) -> str:
    if not view.HasField("diagnosis") or not view.diagnosis.scores:
        return '<p class="muted">No diagnosis vote.</p>'
    d = view.diagnosis
    rows = "".join(
        f'<tr><td>{_esc(k.replace("_", " "))}</td><td class="n">{v:.2f}</td>'
        f'<td><span class="bar" style="width:{max(1, round(64 * v))}px"></span></td></tr>'
        for k, v in _scores(d)
    )
    return (
        f"<div><b>{_esc(_vote_label(view))}</b> "
        f'<span class="muted">(similarity-weighted, {d.neighbours_used} labelled neighbours)</span></div>'
        f"<table><tbody>{rows}</tbody></table>"
    )


def _stages_html(view: studyview_pb2.StudyView) -> str:
    if not view.stages:
        return '<p class="muted">No stages reported.</p>'
    items = []
    for s in view.stages:
        state = STATE_LABELS.get(s.state, "unknown")
        reason = (
            f'<div class="reason">{_esc(s.reason or "no reason given")}</div>' if state == "failed" else ""
        )
        when = ""
        if s.HasField("updated_at"):
            when = f' <span class="muted">{s.updated_at.ToDatetime().strftime("%H:%M:%S")}</span>'
        items.append(
            f'<li><span class="badge b-{state}">{_esc(state)}</span> {_esc(s.name)}{when}{reason}</li>'
        )
    return '<ul class="stages">' + "".join(items) + "</ul>"


def _prognosis_html(view: studyview_pb2.StudyView) -> str:
    text = _prognosis_text(view)
    if view.HasField("prognosis") and view.prognosis.status == events_pb2.PrognosisResult.STATUS_DONE:
        p = view.prognosis
        detail = ""
        if p.neighbours_with_outcome:
            detail = (
                f'<div class="muted">{p.neighbours_intubated} of {p.neighbours_with_outcome} labelled '
                "neighbours intubated</div>"
            )
        return (
            f'<div><b style="font-size:18px">{100 * p.probability_intubation_72h:.1f} %</b> '
            f"probability of intubation within 72 h</div>{detail}"
        )
    return f'<div class="muted">{_esc(text)}</div>'


def _card(view: studyview_pb2.StudyView, blobs: BlobStore, index: int) -> str:
    problems: list[str] = []
    display = _load(blobs, view.display_image, "display image", problems)
    lungs = (
        _load(blobs, view.segmentation.lungs, "lung map", problems) if view.HasField("segmentation") else None
    )
    regions = None
    landmarks: list[tuple[str, float, float]] = []
    if view.HasField("quantification"):
        regions = _load(blobs, view.quantification.region_map, "region map", problems)
        landmarks = [(lm.name, lm.model.x, lm.model.y) for lm in view.quantification.landmarks]
    attention = _load(blobs, view.attention_map, "attention map", problems)

    base = display
    if base is None and (lungs is not None or regions is not None or attention is not None):
        base = np.zeros((MODEL_INPUT * 2, MODEL_INPUT * 2), np.float32)  # masks on black
    over = att = None
    if base is not None:
        over = overlay_png(base, lungs, regions, landmarks, None)
        if attention is not None:
            att = overlay_png(base, None, None, [], attention)
    parts = [p for p, ok in (("lungs", lungs), ("regions", regions)) if ok is not None]
    if landmarks:
        parts.append("landmarks")
    caption = "Overlay: " + (", ".join(parts) if parts else "none available")
    images = _figure(over, caption, "no display image") + _figure(
        att, "Attention map (embedder)", "no attention map"
    )
    status = study_status(view)
    cls = {"failed": "failed", "complete": "complete"}.get(status, "progress")
    problem_html = "".join(f'<div class="reason">{_esc(p)}</div>' for p in problems)
    meta = _metadata_text(view.metadata)
    return f"""
<section class="card {cls}" id="study-{index}">
  <div class="head"><h2>Study <code>{_esc(short_key(view.study_key))}</code></h2>
    <span class="badge b-{cls}">{_esc(status)}</span><span class="meta">{_esc(meta)}</span></div>
  <div class="body">
    <div><div class="images">{images}</div>{_legend()}{problem_html}</div>
    <div class="info">
      <div><h3>Four regions</h3>{_region_table(view)}<h3>Similar cases</h3>{_similar_table(view)}</div>
      <div class="side"><h3>Stages</h3>{_stages_html(view)}<h3>Diagnosis vote</h3>{_vote_html(view)}
        <h3>Prognosis</h3>{_prognosis_html(view)}</div>
    </div>
  </div>
</section>"""


def _summary(views: Sequence[studyview_pb2.StudyView]) -> str:
    status = Counter(study_status(v) for v in views)
    votes = Counter(_vote_label(v) for v in views)
    counts = [("studies", len(views)), ("complete", status["complete"]), ("failed", status["failed"])]
    counts.append(("in progress", status["in progress"]))
    count_rows = "".join(f'<tr><td>{k}</td><td class="n">{n}</td></tr>' for k, n in counts)
    vote_order = ["covid19", "normal", "other pneumonia", "undetermined", "no vote"]
    vote_rows = "".join(
        f'<tr><td>{_esc(k)}</td><td class="n">{votes[k]}</td></tr>' for k in vote_order if votes[k]
    )
    study_rows = []
    for i, v in enumerate(views):
        st = study_status(v)
        cls = {"failed": "failed", "complete": "complete"}.get(st, "progress")
        failed = "; ".join(f"{s.name}: {s.reason or 'no reason'}" for s in _failed(v))
        rale = str(v.quantification.rale_total) if v.quantification.regions else "&ndash;"
        if v.HasField("prognosis") and v.prognosis.status == events_pb2.PrognosisResult.STATUS_DONE:
            prog = f"{100 * v.prognosis.probability_intubation_72h:.0f} %"
        elif (
            v.HasField("prognosis")
            and v.prognosis.status == events_pb2.PrognosisResult.STATUS_NO_CLINICAL_DATA
        ):
            prog = "no clinical data"
        else:
            prog = "&ndash;"
        study_rows.append(
            f'<tr><td><a href="#study-{i}"><code>{_esc(short_key(v.study_key))}</code></a></td>'
            f'<td><span class="badge b-{cls}">{_esc(st)}</span></td><td>{_esc(_vote_label(v))}</td>'
            f'<td class="n">{rale}</td><td class="n">{prog}</td><td class="reason">{_esc(failed)}</td></tr>'
        )
    return f"""
<div class="summary">
  <div><h3>Studies</h3><table class="counts"><tbody>{count_rows}</tbody></table></div>
  <div><h3>Diagnosis votes</h3><table class="counts"><tbody>{vote_rows}</tbody></table></div>
  <div style="flex:1"><h3>Per study</h3><table><thead><tr><th>Study</th><th>Status</th><th>Vote</th>
    <th class="n">RALE total</th><th class="n">P(intub. 72 h)</th><th>Failed stages</th></tr></thead>
    <tbody>{"".join(study_rows)}</tbody></table></div>
</div>"""


def write_html_report(
    views: Sequence[studyview_pb2.StudyView], blobs: BlobStore, out_dir: Path, title: str = "cxrmesh demo"
) -> Path:
    """Write ``out_dir/index.html`` (self-contained) for ``views``; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cards = "".join(_card(v, blobs, i) for i, v in enumerate(views))
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><h1>{_esc(title)}</h1>
<div class="sub">{len(views)} studies &middot; generated {generated} &middot;
study keys are pseudonyms, shown by their first {KEY_CHARS} characters &middot;
RALE scores are estimates, not a radiologist's reading</div>
{_summary(views)}
{cards}
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path


# -------------------------------------------------------------------------------------- screenshot

CHROMIUM_NAMES = (
    "chromium",
    "chromium-browser",
    "chromium-headless-shell",
    "google-chrome",
    "headless_shell",
)


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, width: int = 1400, height: int = 2000) -> None:
    """Render ``html`` with headless Chromium into ``png`` (``width`` x ``height`` CSS pixels)."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(
            "headless Chromium not found (looked for " + ", ".join(CHROMIUM_NAMES) + "): "
            "install it, e.g. `apt-get install -y chromium-headless-shell` or `apt-get install -y chromium`"
        )
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise FileNotFoundError(html)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="cxrmesh-chromium-") as profile:
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            html.as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{binary} did not finish the screenshot in 180 s") from exc
    if proc.returncode != 0 or not png.is_file():
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise RuntimeError(f"{binary} failed to write {png} (exit {proc.returncode}): {tail}")
