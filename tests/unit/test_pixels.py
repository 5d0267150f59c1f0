"""Stored values -> display values -> model frame, the path every image takes."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmesh.analysis.pixels import Letterbox, PixelModule, letterbox, letterbox_labels, to_display
from cxrmesh.synth.corpus import to_stored


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize(
    ("bits", "slope", "icpt"), [(10, 1.0, 0.0), (12, 1.0, 0.0), (16, 0.5, 0.0), (14, 2.0, -100.0)]
)
def test_linear_window_round_trip(photometric: str, bits: int, slope: float, icpt: float) -> None:
    hi = (2**bits - 1) * slope + icpt
    pm = PixelModule(photometric, bits, round((icpt + hi) / 2, 2), round(0.8 * (hi - icpt), 2), slope, icpt)
    display = np.linspace(0.0, 1.0, 101, dtype=np.float32)[None, :]
    back = to_display(to_stored(display, pm), pm)
    step = 1.0 / (0.8 * (2**bits - 1))
    assert np.abs(back - display).max() <= step + 1e-6


def test_monochrome1_inverts() -> None:
    pm = PixelModule("MONOCHROME1", 12, 2047.5, 4095.0)
    d = to_display(np.array([[0, 4095]], dtype=np.uint16), pm)
    assert d[0, 0] > 0.99 and d[0, 1] < 0.01


def test_sigmoid_window_is_monotone() -> None:
    pm = PixelModule("MONOCHROME2", 12, 2048.0, 3000.0, voi_lut_function="SIGMOID")
    d = to_display(np.arange(0, 4096, 64, dtype=np.uint16)[None, :], pm)
    assert (np.diff(d[0]) > 0).all()


@pytest.mark.parametrize(("rows", "cols"), [(3000, 2500), (2000, 2600), (512, 512), (1000, 10)])
def test_letterbox_geometry(rows: int, cols: int) -> None:
    lb = Letterbox(rows, cols, 512)
    r, c = lb.inner
    assert max(r, c) == 512
    oy, ox = lb.offset
    assert oy + r <= 512 and ox + c <= 512
    pts = np.array([[0.0, 0.0], [cols - 1.0, rows - 1.0], [cols / 3, rows / 2]])
    assert np.allclose(lb.to_source(lb.to_model(pts)), pts)


def test_letterbox_places_image_and_pads_with_zero() -> None:
    img = np.ones((300, 150), dtype=np.float32)
    out = letterbox(img, 64)
    lb = Letterbox(300, 150, 64)
    (r, c), (oy, ox) = lb.inner, lb.offset
    assert np.allclose(out[oy : oy + r, ox : ox + c], 1.0)
    assert out.sum() == pytest.approx(r * c)


def test_letterbox_labels_stay_labels() -> None:
    labels = np.zeros((300, 200), dtype=np.uint8)
    labels[50:150, 20:90] = 1
    labels[50:150, 110:180] = 2
    out = letterbox_labels(labels, 128)
    assert set(np.unique(out)) == {0, 1, 2}
