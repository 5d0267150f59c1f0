"""The demo report: overlays, the HTML report, the text report and the Chromium screenshot."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.drawn_chest import drawn_display, drawn_lungs

from cxrmesh.analysis.overlay import LANDMARK_STYLE, LUNG_COLOURS, REGION_COLOURS
from cxrmesh.analysis.regions import REGION_KEYS, split_regions
from cxrmesh.local import screenshot as chromium
from cxrmesh.local.screenshot import screenshot
from cxrmesh.reporting.html import write_html_report
from cxrmesh.reporting.overlays import overlay_png
from cxrmesh.reporting.text import text_report
from cxrmesh.runtime.blobs import NPY, LocalBlobStore, array_bytes
from cxrmesh.v1 import common_pb2, events_pb2, studyview_pb2

ROOT = Path(__file__).resolve().parents[2]
HILUM = (150.0, 120.0)
CARINA = (128.0, 100.0)
FAILED_REASON = "Triton cxr_landmarks: DEADLINE_EXCEEDED after 3 attempts"


def _attention() -> np.ndarray:
    att = np.zeros((16, 16), np.float32)
    att[10:13, 10:13] = 1.0  # image rows/cols 320-416 at 512
    return att


def _rgb(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB")).astype(int)


def _coloured(px: np.ndarray) -> bool:
    return int(px.max()) - int(px.min()) > 20


def _view(
    blobs: LocalBlobStore, key: str, *, failed: bool = False, rale: tuple[int, int] = (2, 1)
) -> studyview_pb2.StudyView:
    view = studyview_pb2.StudyView(study_key=key, complete=True)
    view.metadata.CopyFrom(
        common_pb2.StudyMetadata(modality="CR", view_position="PA", sex="F", age_band="50-59")
    )
    view.display_image.CopyFrom(blobs.put(array_bytes(drawn_display()), NPY))
    view.attention_map.CopyFrom(blobs.put(array_bytes(_attention()), NPY))
    lungs = drawn_lungs()
    view.segmentation.lungs.CopyFrom(blobs.put(array_bytes(lungs), NPY))
    for name in ("ingested", "embedded", "segmented", "quantified", "prognosis"):
        view.stages.add(name=name, state=studyview_pb2.STAGE_DONE)
    if failed:
        view.stages[3].state = studyview_pb2.STAGE_FAILED
        view.stages[3].reason = FAILED_REASON
        view.stages[4].state = studyview_pb2.STAGE_FAILED
        view.stages[4].reason = "needs the quantified stage"
    else:
        q = view.quantification
        q.region_map.CopyFrom(blobs.put(array_bytes(split_regions(lungs, HILUM)), NPY))
        q.landmarks.add(name="carina", model=events_pb2.Point(x=CARINA[0], y=CARINA[1]))
        q.landmarks.add(name="left_hilum", model=events_pb2.Point(x=HILUM[0], y=HILUM[1]))
        extent, density = rale
        for i, region in enumerate(REGION_KEYS.values()):
            q.regions.add(
                region=region,
                area_fraction=0.1 * (i + 1),
                opacity_fraction=0.05 * (i + 1),
                rale_extent=extent,
                rale_density=density,
                rale_score=extent * density,
            )
        q.rale_total = 4 * extent * density
        view.prognosis.CopyFrom(
            events_pb2.PrognosisResult(
                status=events_pb2.PrognosisResult.STATUS_DONE,
                probability_intubation_72h=0.234,
                neighbours_with_outcome=5,
                neighbours_intubated=2,
            )
        )
    for j in range(6):
        view.similar_cases.add(
            study_key=f"{j:x}" * 32,
            similarity=0.9 - 0.1 * j,
            diagnosis=common_pb2.DIAGNOSIS_COVID19 if j % 2 == 0 else common_pb2.DIAGNOSIS_NORMAL,
            outcome=common_pb2.OUTCOME_INTUBATED_72H if j == 0 else common_pb2.OUTCOME_NOT_INTUBATED,
        )
    view.diagnosis.diagnosis = common_pb2.DIAGNOSIS_COVID19
    view.diagnosis.scores.update({"covid19": 0.7, "normal": 0.3, "other_pneumonia": 0.0})
    view.diagnosis.neighbours_used = 6
    return view


KEYS = ("a1b2c3d4e5f6a7b8c9d0", "f00dfacecafebeef1234", "0123456789abcdef0123")


@pytest.fixture()
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture()
def views(blobs: LocalBlobStore) -> list[studyview_pb2.StudyView]:
    return [_view(blobs, KEYS[0]), _view(blobs, KEYS[1], failed=True), _view(blobs, KEYS[2], rale=(3, 2))]


# ------------------------------------------------------------------------------------------ overlay


def test_overlay_has_display_size_and_colours_masks_not_background() -> None:
    display, lungs = drawn_display(), drawn_lungs()
    regions = split_regions(lungs, HILUM)
    png = overlay_png(display, lungs, regions, [("carina", *CARINA), ("left_hilum", *HILUM)], None)
    rgb = _rgb(png)
    assert rgb.shape == (512, 512, 3)
    # inside each region (away from the outline and the split line) the fill tints the grey
    for label, (row, col) in {1: (200, 170), 2: (330, 170), 3: (200, 342), 4: (330, 342)}.items():
        assert regions[row // 2, col // 2] == label
        px = rgb[row, col]
        assert _coloured(px), (label, px)
        expected = np.array(REGION_COLOURS[label])
        grey = display[row, col] * 255
        assert np.allclose(px, grey * 0.7 + expected * 0.3, atol=2)
    # outside the lungs (body, corner) the image stays grey
    for row, col in ((480, 256), (5, 5), (260, 256)):
        px = rgb[row, col]
        assert not _coloured(px), (row, col, px)
        assert abs(px[0] - display[row, col] * 255) <= 1


def test_overlay_draws_lung_outlines_and_landmarks_where_they_are() -> None:
    lungs = drawn_lungs()
    rgb = _rgb(overlay_png(drawn_display(), lungs, None, [("carina", *CARINA), ("left_hilum", *HILUM)], None))
    # the right lung's leftmost column (256 frame) -> its edge at 512 is outlined in the right-lung colour
    cols = np.nonzero((lungs == 1).any(axis=0))[0]
    row = 130 * 2
    edge_col = int(np.nonzero(lungs[130] == 1)[0].min()) * 2
    assert cols.min() * 2 <= edge_col
    assert tuple(rgb[row, edge_col]) == LUNG_COLOURS[1]
    # landmark rings: some pixels of each marker's colour within its radius around (x + 0.5) * 2
    for name, (x, y) in (("carina", CARINA), ("left_hilum", HILUM)):
        colour = np.array(LANDMARK_STYLE[name][1])
        X, Y = round((x + 0.5) * 2), round((y + 0.5) * 2)
        patch = rgb[Y - 10 : Y + 11, X - 10 : X + 11]
        assert (np.abs(patch - colour).sum(axis=2) == 0).sum() > 20, name


def test_overlay_attention_heatmap_only_where_attention_is() -> None:
    display = drawn_display()
    rgb = _rgb(overlay_png(display, None, None, [], _attention()))
    assert rgb.shape == (512, 512, 3)
    assert _coloured(rgb[368, 368])  # centre of the hot block
    assert not _coloured(rgb[60, 60])  # zero attention leaves the image as it was
    assert abs(rgb[60, 60, 0] - display[60, 60] * 255) <= 1


def test_overlay_without_layers_is_the_grey_image_and_rejects_bad_shapes() -> None:
    display = drawn_display()
    rgb = _rgb(overlay_png(display, None, None, [], None))
    assert np.abs(rgb[..., 0] - np.round(display * 255)).max() <= 1
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    with pytest.raises(ValueError, match="2-D"):
        overlay_png(np.zeros((4, 4, 3)), None, None, [], None)


def test_overlay_scales_labels_to_other_display_sizes() -> None:
    lungs = drawn_lungs()
    rgb = _rgb(
        overlay_png(np.full((256, 256), 0.5, np.float32), lungs, split_regions(lungs, HILUM), [], None)
    )
    assert rgb.shape == (256, 256, 3)
    assert _coloured(rgb[100, 85]) and not _coloured(rgb[250, 128])


# --------------------------------------------------------------------------------------------- HTML


def test_html_report_has_cards_summary_images_and_failed_reason(
    views: list[studyview_pb2.StudyView], blobs: LocalBlobStore, tmp_path: Path
) -> None:
    path = write_html_report(views, blobs, tmp_path / "report", title="test report")
    assert path == tmp_path / "report" / "index.html"
    doc = path.read_text(encoding="utf-8")
    assert doc.count('<section class="card') == 3
    assert '<section class="card failed"' in doc
    assert FAILED_REASON in doc
    for key in KEYS:
        assert key[:8] in doc and key not in doc  # only the first 8 characters of a key
    assert "f" * 32 not in doc  # similar cases' keys too
    # self-contained: every image is a base64 PNG data URI, no file or http references
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert len(uris) == 2 * 2 + 2  # two per study (the failed one still has lungs and attention)
    for uri in uris:
        assert Image.open(io.BytesIO(base64.b64decode(uri))).size == (512, 512)
    assert "http://" not in doc and "https://" not in doc and 'src="file:' not in doc
    # summary and the parts of a card
    assert "Diagnosis votes" in doc and "covid19" in doc
    assert "RALE total (estimated)" in doc and "24 / 48" in doc
    assert "23.4 %" in doc and "No quantification." in doc


def test_html_report_survives_missing_parts(blobs: LocalBlobStore, tmp_path: Path) -> None:
    bare = studyview_pb2.StudyView(study_key="deadbeefdeadbeef")
    bare.stages.add(name="ingested", state=studyview_pb2.STAGE_FAILED, reason="not a DICOM file")
    pending = studyview_pb2.StudyView(study_key="feedfacefeedface")
    pending.stages.add(name="ingested", state=studyview_pb2.STAGE_PENDING)
    lost = _view(blobs, "0badc0de0badc0de")
    lost.display_image.sha256 = "0" * 64  # a reference whose blob is gone
    doc = write_html_report([bare, pending, lost], blobs, tmp_path / "r").read_text(encoding="utf-8")
    assert doc.count('<section class="card') == 3
    assert "not a DICOM file" in doc and "no display image" in doc and "no attention map" in doc
    assert "display image unavailable" in doc  # the lost blob is named, masks still drawn on black
    assert "in progress" in doc and "No similar cases." in doc and "No diagnosis vote." in doc


def test_html_report_escapes_study_fields(blobs: LocalBlobStore, tmp_path: Path) -> None:
    view = studyview_pb2.StudyView(study_key="<b>key</b>")
    view.stages.add(name="ingested", state=studyview_pb2.STAGE_FAILED, reason='<script>alert("x")</script>')
    view.metadata.modality = "CR & <i>DX</i>"
    doc = write_html_report([view], blobs, tmp_path / "r", title="<title>").read_text(encoding="utf-8")
    assert "<script>" not in doc and "&lt;script&gt;" in doc
    assert "<b>key" not in doc and "&lt;b&gt;key" in doc
    assert "<i>DX</i>" not in doc and "CR &amp; &lt;i&gt;DX" in doc
    assert "<title>&lt;title&gt;</title>" in doc


# --------------------------------------------------------------------------------------------- text


def test_text_report_has_table_total_cases_vote_prognosis_and_failures(
    views: list[studyview_pb2.StudyView],
) -> None:
    text = text_report(views, max_studies=2)
    assert "Study a1b2c3d4" in text and "Study f00dface" in text and "01234567" not in text
    assert all(key not in text for key in KEYS)
    for name in ("right upper", "right lower", "left upper", "left lower"):
        assert re.search(rf"{name}\s+\d+\.\d\s+\d+\.\d\s+2 x 1 = 2", text), name
    assert "RALE total (estimated): 8/48" in text
    assert "Similar cases (top 5):" in text and "    5. 44444444" in text and "55555555" not in text
    assert "similarity 0.900" in text
    assert "Diagnosis vote: covid19 (covid19 0.70, normal 0.30, other_pneumonia 0.00; 6 neighbours)" in text
    assert "P(intubation within 72 h) = 23.4 %" in text
    assert f"FAILED quantified: {FAILED_REASON}" in text
    assert "1 more studies not shown" in text


def test_text_report_explains_missing_prognosis() -> None:
    view = studyview_pb2.StudyView(study_key="cafebabecafebabe")
    view.prognosis.status = events_pb2.PrognosisResult.STATUS_NO_CLINICAL_DATA
    view.prognosis.missing_clinical.extend(["spo2_pct", "crp_mg_l"])
    text = text_report([view, studyview_pb2.StudyView(study_key="abc")])
    assert "no clinical data" in text and "spo2_pct, crp_mg_l" in text
    assert "Prognosis: none yet (pending)" in text and "Quantification: none" in text


# --------------------------------------------------------------------------------------- screenshot


def test_screenshot_says_clearly_when_chromium_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(chromium.shutil, "which", lambda name: None)
    html = tmp_path / "index.html"
    html.write_text("<html></html>")
    with pytest.raises(RuntimeError, match="apt-get install"):
        screenshot(html, tmp_path / "shot.png")


@pytest.mark.skipif(chromium.find_chromium() is None, reason="headless Chromium is not installed")
def test_screenshot_renders_the_report(
    views: list[studyview_pb2.StudyView], blobs: LocalBlobStore, tmp_path: Path
) -> None:
    html = write_html_report(views, blobs, tmp_path / "report")
    png = tmp_path / "shot.png"
    screenshot(html, png, width=900, height=700)
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (700, 900, 3)
    assert img.std() > 10  # rendered content, not a blank page
