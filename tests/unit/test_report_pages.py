"""The report's study pages and marks: one page per study beside index.html, the estimated-landmark and
quality-gate marks in the summary, the cards and the pages, a refused study "not measured"."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.drawn_chest import drawn_display, drawn_lungs

from cxrmesh.analysis.overlay import LANDMARK_STYLE
from cxrmesh.analysis.regions import REGION_KEYS, split_regions
from cxrmesh.cli.query import _study_lines
from cxrmesh.client import StudySummary
from cxrmesh.reporting import views as v
from cxrmesh.reporting.html import write_html_report
from cxrmesh.reporting.overlays import overlay_png
from cxrmesh.reporting.text import text_report
from cxrmesh.runtime.blobs import NPY, LocalBlobStore, array_bytes
from cxrmesh.v1 import common_pb2, events_pb2, studyview_pb2

Gate = events_pb2.QualityGate
HILUM = (150.0, 120.0)
CARINA = (128.0, 100.0)
FLAG_REASON = "the lungs differ in size more than usual: check the image"
REFUSE_REASONS = ("no two lungs side by side: not a frontal chest radiograph", "image contrast too low")
KEYS = {
    "pass": "a1b2c3d4e5f6a7b8c9d0",
    "estimated": "b2c3d4e5f6a7b8c9d0e1",
    "refused": "c3d4e5f6a7b8c9d0e1f2",
    "flagged": "d4e5f6a7b8c9d0e1f2a3",
}
NAME_RULE = re.compile(r"[A-Za-z0-9_-]+\.html")


def _study(
    blobs: LocalBlobStore,
    key: str,
    verdict: int = Gate.VERDICT_PASS,
    reasons: tuple[str, ...] = (),
    estimated: bool = False,
) -> studyview_pb2.StudyView:
    """A complete study as the services publish it: refused ones have landmarks but nothing measured."""
    view = studyview_pb2.StudyView(study_key=key, complete=True)
    view.metadata.CopyFrom(
        common_pb2.StudyMetadata(modality="CR", view_position="PA", rows=2048, columns=2048)
    )
    view.display_image.CopyFrom(blobs.put(array_bytes(drawn_display()), NPY))
    lungs = drawn_lungs()
    view.segmentation.lungs.CopyFrom(blobs.put(array_bytes(lungs), NPY))
    for name in ("ingested", "embedded", "segmented", "quantified", "prognosis"):
        view.stages.add(name=name, state=studyview_pb2.STAGE_DONE)
    q = view.quantification
    q.quality.CopyFrom(Gate(verdict=verdict, reasons=reasons, chest_score=0.2 if reasons else 0.95))
    q.warnings.extend(reasons)
    for name, (x, y), confidence in (("carina", CARINA, 0.82), ("left_hilum", HILUM, 0.41)):
        q.landmarks.add(
            name=name,
            model=events_pb2.Point(x=x, y=y),
            confidence=confidence,
            estimated=estimated,
            detector_score=0.3,
        )
    if verdict == Gate.VERDICT_REFUSED:
        view.prognosis.status = events_pb2.PrognosisResult.STATUS_IMAGE_REFUSED
        return view
    q.landmarks_estimated = estimated
    q.region_map.CopyFrom(blobs.put(array_bytes(split_regions(lungs, HILUM)), NPY))
    for region in REGION_KEYS.values():
        q.regions.add(region=region, area_fraction=0.25, opacity_fraction=0.1, rale_extent=2, rale_density=1)
    q.rale_total = 8
    if estimated:
        q.warnings.append("landmarks estimated from the lung outline (zones estimated)")
    view.prognosis.CopyFrom(
        events_pb2.PrognosisResult(
            status=events_pb2.PrognosisResult.STATUS_DONE, probability_intubation_72h=0.3
        )
    )
    return view


@pytest.fixture()
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture()
def studies(blobs: LocalBlobStore) -> dict[str, studyview_pb2.StudyView]:
    return {
        "pass": _study(blobs, KEYS["pass"]),
        "estimated": _study(blobs, KEYS["estimated"], estimated=True),
        "refused": _study(blobs, KEYS["refused"], Gate.VERDICT_REFUSED, REFUSE_REASONS),
        "flagged": _study(blobs, KEYS["flagged"], Gate.VERDICT_FLAGGED, (FLAG_REASON,)),
    }


@pytest.fixture()
def report(studies: dict, blobs: LocalBlobStore, tmp_path: Path) -> Path:
    return write_html_report(list(studies.values()), blobs, tmp_path / "report")


def _page(report: Path, which: str) -> str:
    return (report.parent / "studies" / f"{KEYS[which][:8]}.html").read_text(encoding="utf-8")


def _card(doc: str, which: str) -> str:
    """The card of one study in the overview."""
    start = doc.index(f"<h2>Study <code>{KEYS[which][:8]}</code></h2>")
    end = doc.find('<section class="card', start)
    return doc[start : end if end > 0 else len(doc)]


def _row(doc: str, which: str) -> str:
    """The summary table's row of one study."""
    start = doc.index(f'<a href="studies/{KEYS[which][:8]}.html">')
    return doc[start : doc.index("</tr>", start)]


def test_one_self_contained_page_per_study_linked_from_the_index(report: Path) -> None:
    assert report.name == "index.html"
    pages = sorted(p.name for p in (report.parent / "studies").iterdir())
    assert pages == sorted(f"{key[:8]}.html" for key in KEYS.values())
    index = report.read_text(encoding="utf-8")
    for which, key in KEYS.items():
        assert index.count(f'href="studies/{key[:8]}.html"') == 2  # summary row and the card's link
        page = _page(report, which)
        assert page.startswith("<!DOCTYPE html>") and '<a href="../index.html">' in page
        assert f"<h1>Study <code>{key[:8]}</code></h1>" in page and key not in page
        assert page.count('<section class="card complete full"') == 1
        assert "http://" not in page and "https://" not in page and "<link" not in page
        assert "<style>" in page and ".badge" in page  # the CSS is inlined
        for uri in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
            assert Image.open(io.BytesIO(base64.b64decode(uri))).size == (512, 512)
        assert "chest score" in page and "Image and models" in page and "2048 x 2048 pixels" in page


def test_marks_show_in_the_summary_the_cards_and_the_pages(report: Path) -> None:
    index = report.read_text(encoding="utf-8")
    # passing study: no marks anywhere, calibrated confidence in the legend
    for doc in (_card(index, "pass"), _row(index, "pass"), _page(report, "pass")):
        assert "landmarks estimated" not in doc and '"est">(estimated)' not in doc
        assert "quality: flagged" not in doc and "quality: refused" not in doc
    assert "quality:" not in _card(index, "pass") and "quality: pass" in _page(
        report, "pass"
    )  # the gate's panel
    assert "82 % chance within 10 mm" in _card(index, "pass")
    # estimated landmarks: badge with the sentence as tooltip, the sentence shown, the legend says so
    for doc in (_card(index, "estimated"), _page(report, "estimated")):
        assert (
            '<span class="badge m-estimated" title="' + v.LANDMARKS_ESTIMATED_NOTE.replace("'", "&#39;")
            in doc
        )
        assert "the upper/lower split uses landmarks estimated from the lung outline" in doc
        assert 'L hilum <b class="est">(estimated)</b> <em>41 % chance within 10 mm</em>' in doc
        assert "landmarks (estimated: dashed ring)" in doc
    assert "landmarks estimated" in _row(index, "estimated")
    assert _page(report, "estimated").count('<span class="badge m-estimated">estimated</span>') == 2
    # flagged: badge and its reason in the summary row, the card and the page
    for doc in (_row(index, "flagged"), _card(index, "flagged"), _page(report, "flagged")):
        assert "quality: flagged" in doc and FLAG_REASON in doc
    assert (
        _card(index, "flagged").count(FLAG_REASON) == 2
    )  # the badge's tooltip and the note, not as a warning
    assert "<th>Region</th>" in _page(report, "flagged")  # flagged studies are still measured
    # the summary counts the marks
    for label in ("landmarks estimated", "quality flagged", "quality refused"):
        assert re.search(rf"<td>{label}</td><td class=\"n\">1</td>", index), label


def test_a_refused_study_says_not_measured_and_has_no_region_table(report: Path) -> None:
    index = report.read_text(encoding="utf-8")
    page, card, row = _page(report, "refused"), _card(index, "refused"), _row(index, "refused")
    reasons = "; ".join(REFUSE_REASONS)
    for doc in (page, card):
        assert f"Not measured: {reasons}" in doc
        assert "<th>Region</th>" not in doc and "RALE total (estimated)" not in doc
        assert "No quantification." not in doc and '"est">(estimated)' not in doc
        assert "none: the image was refused by the quality gate" in doc
        assert "(image refused: not measured)" in doc  # overlay caption: no landmarks, no split
    assert "quality: refused" in row and reasons in row and "not measured" in row and "image refused" in row
    assert "Not used: the image was refused" in page
    assert "<li>image contrast too low</li>" in page  # the gate's panel lists each reason


def test_older_events_without_a_verdict_show_no_quality_mark(blobs: LocalBlobStore, tmp_path: Path) -> None:
    old = _study(blobs, KEYS["pass"], verdict=Gate.VERDICT_UNSPECIFIED)
    old.quantification.ClearField("quality")
    for lm in old.quantification.landmarks:
        lm.confidence = lm.detector_score = 0  # before calibration: nothing to show
    index = write_html_report([old], blobs, tmp_path / "r")
    doc = index.read_text(encoding="utf-8")
    assert "quality:" not in doc and "landmarks estimated" not in doc and "chance within" not in doc
    page = (tmp_path / "r" / "studies" / f"{KEYS['pass'][:8]}.html").read_text(encoding="utf-8")
    assert "No verdict recorded" in page and "<th>Region</th>" in page


@pytest.mark.parametrize(
    "keys",
    [
        ("../../etc/passwd", "..", "", "a/b\\c:d", "/absolute", "..\\..\\x", "%2e%2e%2fzz"),
        ("same1234aaaa", "same1234bbbb", "same1234cccc"),  # one short key: three distinct pages
    ],
)
def test_odd_study_keys_cannot_escape_the_studies_folder(
    keys: tuple[str, ...], blobs: LocalBlobStore, tmp_path: Path
) -> None:
    out = tmp_path / "deep" / "out"
    views = [studyview_pb2.StudyView(study_key=k) for k in keys]
    index = write_html_report(views, blobs, out)
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and "blobs" not in p.parts)
    pages = [p for p in written if p != index]
    assert len(pages) == len(keys) and all(p.parent == out / "studies" for p in pages)
    assert all(NAME_RULE.fullmatch(p.name) for p in pages), [p.name for p in pages]
    links = re.findall(r'<td><a href="([^"]+)">', index.read_text(encoding="utf-8"))
    assert sorted(links) == sorted(f"studies/{p.name}" for p in pages)


def test_html_in_reasons_and_warnings_is_escaped(blobs: LocalBlobStore, tmp_path: Path) -> None:
    evil = '<img src=x onerror="alert(1)"> & <u>'
    flagged = _study(blobs, KEYS["flagged"], Gate.VERDICT_FLAGGED, (evil,))
    flagged.quantification.warnings.append("<script>warn()</script>")
    refused = _study(blobs, KEYS["refused"], Gate.VERDICT_REFUSED, (evil,))
    index = write_html_report([flagged, refused], blobs, tmp_path / "r")
    docs = [index.read_text(encoding="utf-8")]
    docs += [p.read_text(encoding="utf-8") for p in (tmp_path / "r" / "studies").iterdir()]
    for doc in docs:
        assert "<img src=x" not in doc and "<u>" not in doc and "<script>" not in doc
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; &amp; &lt;u&gt;" in doc
    assert "&lt;script&gt;warn()&lt;/script&gt;" in docs[0]


def test_an_estimated_landmark_gets_a_dashed_ring_in_its_colour() -> None:
    display, lungs = drawn_display(), drawn_lungs()
    marks = [("carina", *CARINA), ("left_hilum", *HILUM)]
    plain = np.asarray(Image.open(io.BytesIO(overlay_png(display, lungs, None, marks, None))).convert("RGB"))
    ringed = np.asarray(
        Image.open(
            io.BytesIO(overlay_png(display, lungs, None, marks, None, estimated={"left_hilum"}))
        ).convert("RGB")
    )
    changed = np.abs(plain.astype(int) - ringed.astype(int)).sum(axis=2) > 0
    yy, xx = np.mgrid[0:512, 0:512]
    for name, (x, y) in (("carina", CARINA), ("left_hilum", HILUM)):
        dx, dy = xx - (x + 0.5) * 2, yy - (y + 0.5) * 2
        near = (np.hypot(dx, dy) > 10) & (np.hypot(dx, dy) < 18)
        if name == "carina":
            assert not (near & changed).any()
            continue
        on = near & changed
        assert (ringed[on] == LANDMARK_STYLE[name][1]).all(axis=1).mean() > 0.9
        # dashed: about half of the circle's 36 ten-degree sectors, none in the label's quarter (down-right)
        sectors = np.unique((np.degrees(np.arctan2(dy[on], dx[on])) % 360 // 10).astype(int))
        assert 10 <= len(sectors) <= 24 and not any(s in range(1, 8) for s in sectors), sectors
    far = np.hypot(xx - (HILUM[0] + 0.5) * 2, yy - (HILUM[1] + 0.5) * 2) > 18
    assert not changed[far].any()


def test_text_report_and_cli_lines_carry_the_marks(studies: dict) -> None:
    text = text_report(list(studies.values()))
    assert "Mark: landmarks estimated: the detector's landmarks were implausible" in text
    assert f"Mark: quality: flagged: {FLAG_REASON}" in text and f"Warning: {FLAG_REASON}" not in text
    assert f"Quantification: not measured (quality: refused): {'; '.join(REFUSE_REASONS)}" in text
    assert "Prognosis: none: the image was refused by the quality gate" in text
    flagged = studies["flagged"]
    lines = _study_lines(StudySummary.from_proto(flagged), v.mark_lines(flagged), v.quality_reasons(flagged))
    assert f"quality: flagged: {FLAG_REASON}" in lines and f"warning: {FLAG_REASON}" not in lines
    passing = studies["pass"]
    assert not [
        ln for ln in _study_lines(StudySummary.from_proto(passing), v.mark_lines(passing)) if "quality" in ln
    ]
