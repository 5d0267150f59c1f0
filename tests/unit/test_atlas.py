"""Lung-shape atlas: the committed file is sane, and the builder filters and is reproducible."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cxrmesh.synth import atlas as atlas_mod
from cxrmesh.synth.atlas import (
    MASK_ZIP,
    TXV_WHEEL,
    build_atlas,
    ensure_source,
    load_atlas,
    save_atlas,
    signed_area,
)

DEFAULT_ATLAS = Path(atlas_mod.__file__).parent / "data" / "lung_atlas.npz"

# ------------------------------------------------------------------------------- committed atlas


def _raster(poly: np.ndarray, size: int = 256) -> np.ndarray:
    im = Image.new("1", (size, size))
    ImageDraw.Draw(im).polygon([tuple(p) for p in poly * (size - 1)], fill=1)
    return np.asarray(im)


def test_default_atlas_loads_and_is_cached() -> None:
    atlas = load_atlas()
    assert atlas is load_atlas()
    assert len(atlas) >= 300
    assert atlas.shapes.dtype == np.float32
    assert atlas.shapes.shape == (len(atlas), 2, 96, 2)
    assert len(atlas.names) == len(set(atlas.names)) == len(atlas)
    assert 0.6 < atlas.aspect < 1.1
    assert not atlas.shapes.flags.writeable  # the cached copy is shared
    assert DEFAULT_ATLAS.stat().st_size < 1_000_000


def test_default_atlas_geometry() -> None:
    s = load_atlas().shapes
    assert s.min() >= -0.05 and s.max() <= 1.05
    x, y = s[..., 0], s[..., 1]
    # index 0 is the patient's right lung, drawn on the image left
    assert np.all(x[:, 0].mean(axis=-1) < x[:, 1].mean(axis=-1))
    # joint frame: right lateral edge 0, left lateral edge 1, highest apex 0, lowest point 1
    np.testing.assert_allclose(x[:, 0].min(axis=-1), 0.0, atol=0.01)
    np.testing.assert_allclose(x[:, 1].max(axis=-1), 1.0, atol=0.01)
    np.testing.assert_allclose(y.min(axis=(1, 2)), 0.0, atol=0.01)
    np.testing.assert_allclose(y.max(axis=(1, 2)), 1.0, atol=0.01)


def test_default_atlas_apex_first_clockwise() -> None:
    s = load_atlas().shapes
    areas = np.array([[signed_area(pair[k]) for k in range(2)] for pair in s])
    assert np.all(areas > 0)  # clockwise on screen (y down), both lungs alike
    y = s[..., 1]
    assert np.all(y[..., 0] - y.min(axis=-1) < 0.01)  # starts at the apex
    # equal arc-length spacing: all steps of a contour have about the same length
    steps = np.linalg.norm(np.diff(s, axis=2, append=s[:, :, :1]), axis=-1)
    assert np.all(steps.max(axis=-1) < 1.6 * np.median(steps, axis=-1))


def test_default_atlas_lungs_do_not_overlap() -> None:
    s = load_atlas().shapes
    for pair in s[:: max(1, len(s) // 60)]:
        right, left = _raster(pair[0]), _raster(pair[1])
        assert right.any() and left.any()
        assert not np.any(right & left)


# ------------------------------------------------------------------------------ builder, tiny zip


def _ellipse(yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def _pair_mask(h: int = 160, w: int = 200, shift: float = 0.0, single: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    m = _ellipse(yy, xx, 60 + shift, 80, 35, 55)  # patient's right lung, on the image left
    if not single:
        m |= _ellipse(yy, xx, 142 + shift, 86, 33, 52)
    return m.astype(np.uint8) * 255


def _encode(mask: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _mask_zip_bytes() -> bytes:
    overlay = _pair_mask()
    overlay[70:90, 20:34] = 127  # a marker box painted over the right lung's lateral edge
    members = {
        "masks/ok_a.png": _encode(_pair_mask(), "PNG"),
        "masks/ok_b.jpg": _encode(_pair_mask(shift=-4), "JPEG"),
        "masks/ok_overlay.png": _encode(overlay, "PNG"),
        "masks/empty.png": _encode(np.zeros((160, 200), np.uint8), "PNG"),
        "masks/border.png": _encode(_pair_mask(shift=-30), "PNG"),
        "masks/single.png": _encode(_pair_mask(single=True), "PNG"),
        "masks/README.txt": b"not an image",
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mask_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("masks") / MASK_ZIP
    path.write_bytes(_mask_zip_bytes())
    return path


def test_build_filters_masks(mask_zip: Path) -> None:
    report = build_atlas(mask_zip, n_points=64)
    assert report.total == 6
    assert report.accepted == 3
    assert report.atlas.names == ("ok_a.png", "ok_b.jpg", "ok_overlay.png")
    expected = {"border.png": "border", "empty.png": "empty", "single.png": "components"}
    assert dict(report.rejections) == expected
    assert {k: v for k, v in report.rejected.items() if v} == {"empty": 1, "border": 1, "components": 1}
    assert "3 accepted" in report.summary()

    s = report.atlas.shapes
    assert s.shape == (3, 2, 64, 2)
    assert s.min() >= 0.0 and s.max() <= 1.0
    assert np.all(s[:, 0, :, 0].mean(axis=-1) < s[:, 1, :, 0].mean(axis=-1))
    # pair frame of the ellipses: width 35+33 radii + 82 px apart = 150 px, height from y=25 to y=138
    assert report.atlas.aspect == pytest.approx(113 / 150, abs=0.02)
    apex = s[0, 0, 0]
    assert apex == pytest.approx([(60 - 25) / 150, 0.0], abs=0.01)  # right lung apex, above its centre
    assert all(signed_area(s[i, k]) > 0 for i in range(3) for k in range(2))
    # JPEG thresholding and the repaired marker box leave the outline where it was
    assert np.abs(s[1] - s[0]).max() < 0.02
    assert np.abs(s[2] - s[0]).max() < 0.03


def test_build_reads_masks_from_the_wheel(tmp_path: Path, mask_zip: Path) -> None:
    wheel = tmp_path / TXV_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("torchxrayvision/__init__.py", "")
        zf.writestr(f"torchxrayvision/data/{MASK_ZIP}", mask_zip.read_bytes())
    assert build_atlas(wheel, n_points=64).atlas.names == ("ok_a.png", "ok_b.jpg", "ok_overlay.png")


def test_save_is_byte_identical_and_round_trips(tmp_path: Path, mask_zip: Path) -> None:
    first, second = tmp_path / "a" / "atlas.npz", tmp_path / "b" / "atlas.npz"
    atlas = build_atlas(mask_zip, n_points=64).atlas
    save_atlas(atlas, first)
    save_atlas(build_atlas(mask_zip, n_points=64).atlas, second)
    assert first.read_bytes() == second.read_bytes()

    loaded = load_atlas(first)
    assert loaded.names == atlas.names
    assert loaded.aspect == atlas.aspect
    assert loaded.shapes.dtype == np.float32
    np.testing.assert_allclose(loaded.shapes, atlas.shapes, atol=1e-3)
    with np.load(first) as npz:  # plain numpy can read it too
        assert set(npz.files) == {"shapes", "names", "aspect"}


# ----------------------------------------------------------------------------------- ensure_source


def test_ensure_source_uses_cached_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / TXV_WHEEL).write_bytes(b"cached")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not download when the wheel is cached")

    monkeypatch.setattr(atlas_mod.subprocess, "run", no_network)
    assert ensure_source(tmp_path) == tmp_path / TXV_WHEEL


def test_ensure_source_failure_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: no network")

    monkeypatch.setattr(atlas_mod.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match=r"pip download --no-deps torchxrayvision==1\.5\.7"):
        ensure_source(tmp_path / "cache")
