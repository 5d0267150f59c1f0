"""Lung-shape atlas: real right/left lung outlines for the synthetic radiograph generator.

Hand-drawn ellipses make every synthetic lung look alike, so the generator samples outlines traced
from 517 real lung masks (V7 Labs COVID-19 X-ray annotations, CC BY 4.0) that ship inside the
torchxrayvision wheel. ``build_atlas`` turns those masks into fixed-length contours in a joint,
pair-normalised frame; the result is committed as ``data/lung_atlas.npz`` so neither the wheel nor
scikit-image is needed at run time.

Conventions (image coordinates, x to the right, y down, standard radiographic display):

* ``shapes[i, 0]`` is the patient's RIGHT lung (the one on the image left), ``shapes[i, 1]`` the LEFT.
* Each contour has ``n_points`` points equally spaced by arc length, starts at the apex (topmost
  point) and runs clockwise on screen, i.e. its shoelace area computed with y pointing down is
  positive.
* x runs from the right lung's lateral edge (0) to the left lung's lateral edge (1); y from the
  highest apex (0) to the lowest point of either lung (1).
"""

from __future__ import annotations

import functools
import io
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

TXV_VERSION = "1.5.7"
TXV_WHEEL = f"torchxrayvision-{TXV_VERSION}-py3-none-any.whl"
MASK_ZIP = "semantic_masks_v7labs_lungs.zip"
DEFAULT_N_POINTS = 96

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Masks hold 255 (lung), 0 and 127 (overlaid annotations); JPEG ones only approximately.
_LUNG_LEVEL = 192
_OVERLAY_LEVEL = 64
_MAX_SIDE = 1024  # working resolution: plenty for 96 contour points and keeps the build fast
# Notches cut by overlays are closed with a disk of this share of the pair width, or for a solid
# overlay (blob, box) a disk of _BLOB_REPAIR_SCALE times its size, at most _MAX_REPAIR_RADIUS.
_REPAIR_RADIUS = 0.04
_BLOB_REPAIR_SCALE = 1.0
_MAX_REPAIR_RADIUS = 0.15
_MAX_OCCLUSION = 0.15  # reject when an overlay touching a lung exceeds this share of its area
# Annotators stop a pixel short of the image edge, so a lung this close to it was cut off.
_BORDER_MARGIN = 2
_SPECK_FRACTION = 0.01  # components below this share of the foreground are annotation specks
_LUNG_FRACTION = 0.10  # a lung is at least this share of the remaining lung area
_ASPECT_RANGE = (0.55, 1.4)  # joint bounding box height / width
_AREA_RATIO_RANGE = (0.6, 1.7)  # right lung area / left lung area
# A lung whose top _APEX_BAND of the pair height spans more than _MAX_APEX_FLAT of its width has a
# straight, cropped top instead of a rounded apex.
_APEX_BAND = 0.01
_MAX_APEX_FLAT = 0.45
_MIN_GAP_FRACTION = 0.01  # lungs closer than this share of the pair width merge when drawn small
# Fixed zip member timestamp so that rebuilding from the same masks gives identical bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# float16 halves the committed file (240 kB instead of 470 kB as float32); its step of at most
# 5e-4 is ~0.1 px on a 256 px lung field. load_atlas hands out float32.
_STORE_DTYPE = np.float16

REJECT_REASONS = (
    "unreadable",
    "empty",
    "components",
    "occluded",
    "border",
    "flat_apex",
    "aspect",
    "area_ratio",
    "layout",
    "gap",
)


@dataclass(frozen=True, eq=False)
class LungAtlas:
    """Normalised right/left lung outline pairs plus the typical pair aspect ratio."""

    shapes: np.ndarray  # float32 (N, 2, n_points, 2): [pair, right/left, point, (x, y)]
    names: tuple[str, ...]  # source mask file name per pair, for provenance
    aspect: float  # median height / width of the source lung pairs, in pixels

    def __len__(self) -> int:
        return int(self.shapes.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.shapes.shape[2])


@dataclass
class AtlasBuildReport:
    """What ``build_atlas`` kept and why it dropped the rest (the counts go into ATLAS_SOURCES.md)."""

    atlas: LungAtlas
    total: int
    rejected: dict[str, int] = field(default_factory=dict)
    rejections: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)

    @property
    def accepted(self) -> int:
        return len(self.atlas)

    def summary(self) -> str:
        parts = ", ".join(f"{reason} {count}" for reason, count in self.rejected.items() if count)
        rejected = self.total - self.accepted
        return f"{self.total} masks: {self.accepted} accepted, {rejected} rejected ({parts})"


# ----------------------------------------------------------------------------------- reading masks


def _iter_masks(source: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (file name, encoded bytes) of every mask image, from the wheel or the mask zip itself."""
    with zipfile.ZipFile(source) as outer:
        nested = [n for n in outer.namelist() if PurePosixPath(n).name == MASK_ZIP]
        if nested:
            with zipfile.ZipFile(io.BytesIO(outer.read(nested[0]))) as inner:
                yield from _iter_images(inner)
        else:
            yield from _iter_images(outer)


def _iter_images(zf: zipfile.ZipFile) -> Iterator[tuple[str, bytes]]:
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        name = PurePosixPath(info.filename).name
        if info.is_dir() or PurePosixPath(name).suffix.lower() not in _IMAGE_SUFFIXES:
            continue
        yield name, zf.read(info)


def _decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Return (lung, overlay) boolean maps at a working resolution of at most ``_MAX_SIDE`` pixels.

    The masks are three-level: 255 lung, 0 background and, in about 50 of them, 127 for other
    annotations (arrows, boxes, text, devices, lesion outlines) painted over the lung label.
    """
    with Image.open(io.BytesIO(data)) as im:
        grey = np.asarray(im.convert("L"))
    lung = grey >= _LUNG_LEVEL
    overlay = (grey >= _OVERLAY_LEVEL) & ~lung
    factor = -(-max(grey.shape) // _MAX_SIDE)
    if factor > 1:  # 96 contour points need nothing like 5000 px; downsample each class by block mean
        lung, overlay = (_reduce(m, factor) for m in (lung, overlay))
    return lung, overlay


def _reduce(mask: np.ndarray, factor: int) -> np.ndarray:
    with Image.fromarray(mask.astype(np.uint8) * 255) as im:
        return np.asarray(im.reduce(factor)) >= 128


# --------------------------------------------------------------------------------- shape analysis


def _closed(lung: np.ndarray, radius: float, box: tuple[slice, slice]) -> np.ndarray:
    """Morphological closing of ``lung`` by a disk, evaluated inside ``box`` only (EDT based)."""
    reach = int(np.ceil(2 * radius)) + 2  # closing at p depends on the lung within 2r of p
    r0, r1 = max(box[0].start - reach, 0), min(box[0].stop + reach, lung.shape[0])
    c0, c1 = max(box[1].start - reach, 0), min(box[1].stop + reach, lung.shape[1])
    pad = int(np.ceil(radius)) + 1
    window = np.pad(lung[r0:r1, c0:c1], pad)
    dilated = ndimage.distance_transform_edt(~window) <= radius
    closed = ndimage.distance_transform_edt(dilated)[pad:-pad, pad:-pad] > radius
    out = np.zeros_like(lung)
    out[r0:r1, c0:c1] = closed
    return out


def _repair(lung: np.ndarray, overlay: np.ndarray, width: float) -> tuple[np.ndarray, float]:
    """Give back the part of one lung hidden under overlaid annotations.

    An arrow, box or blob painted over the lung edge cuts a notch into the lung label. A
    morphological closing fills such notches, but only overlay pixels may be added, so the
    anatomical concavities (heart border, diaphragm dome), which are plain background, stay as
    drawn. Thin overlays get a small disk; each solid overlay gets a disk scaled to its own size
    (a blob's notch is as wide as the blob). Runs per lung so the gap between lungs is never bridged.
    Also returns the area of the largest overlay touching the lung, relative to the lung's area.
    """
    if not overlay.any():
        return lung, 0.0
    full = (slice(0, lung.shape[0]), slice(0, lung.shape[1]))
    base = max(2.0, _REPAIR_RADIUS * width)
    repaired = lung | (_closed(lung, base, full) & overlay)
    solid, _ = ndimage.label(ndimage.binary_opening(overlay, iterations=2))
    largest = 0.0
    for index, box in enumerate(ndimage.find_objects(solid), start=1):
        extent = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
        radius = min(_BLOB_REPAIR_SCALE * extent, _MAX_REPAIR_RADIUS * width)
        if radius <= base:
            continue
        blob = ndimage.binary_dilation(solid == index, iterations=3) & overlay
        if not (ndimage.binary_dilation(blob, iterations=2) & lung).any():
            continue  # not touching this lung
        largest = max(largest, blob.sum() / lung.sum())
        repaired |= _closed(lung, radius, ndimage.find_objects(blob.astype(np.int8))[0]) & blob
    return repaired, float(largest)


def _lung_components(mask: np.ndarray, overlay: np.ndarray) -> tuple[list[np.ndarray], str | None]:
    """Split a mask into two repaired, hole-free lung masks, or say why that is impossible."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return [], "empty"
    sizes = np.bincount(labels.ravel())[1:]
    sizes = np.where(sizes >= _SPECK_FRACTION * sizes.sum(), sizes, 0)
    lung_sized = np.flatnonzero(sizes >= _LUNG_FRACTION * sizes.sum())
    if lung_sized.size != 2:
        return [], "components"
    lungs = [labels == i + 1 for i in lung_sized]
    cols = np.flatnonzero((lungs[0] | lungs[1]).any(axis=0))
    width = float(cols[-1] - cols[0] + 1)
    repairs = [_repair(lung, overlay, width) for lung in lungs]
    if max(hidden for _, hidden in repairs) > _MAX_OCCLUSION:
        return [], "occluded"  # too much of the outline lies under an overlay to trust a repair
    return [ndimage.binary_fill_holes(lung) for lung, _ in repairs], None


def _outer_contour(lung: np.ndarray) -> np.ndarray:
    """Outer boundary of one lung as (x, y) pixel coordinates, from marching squares at level 0.5."""
    from skimage import measure  # dev-only dependency: needed to build, not to load

    rows, cols = np.nonzero(lung)
    r0, c0 = rows.min(), cols.min()
    crop = np.pad(lung[r0 : rows.max() + 1, c0 : cols.max() + 1], 1).astype(np.float32)
    contours = measure.find_contours(crop, 0.5)
    rc = max(contours, key=len)
    if np.allclose(rc[0], rc[-1]):
        rc = rc[:-1]
    return np.column_stack([rc[:, 1] + c0 - 1, rc[:, 0] + r0 - 1])


def signed_area(xy: np.ndarray) -> float:
    """Shoelace area with y pointing down: positive for a contour that runs clockwise on screen."""
    x, y = xy[..., 0], xy[..., 1]
    return float(0.5 * np.sum(x * np.roll(y, -1, axis=-1) - np.roll(x, -1, axis=-1) * y))


def _resample(xy: np.ndarray, n_points: int) -> np.ndarray:
    """Clockwise, apex-first, equal-arc-length resampling of a closed contour."""
    if signed_area(xy) < 0:
        xy = xy[::-1]
    # Start the walk at the lowest point so that the flat run of topmost vertices is not split.
    xy = np.roll(xy, -int(np.argmax(xy[:, 1])), axis=0)
    closed = np.vstack([xy, xy[:1]])
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    top = np.flatnonzero(closed[:-1, 1] <= closed[:-1, 1].min() + 1e-9)
    apex = 0.5 * (s[top[0]] + s[top[-1]])  # middle of the flat top run, by arc length
    t = (apex + s[-1] * np.arange(n_points) / n_points) % s[-1]
    return np.column_stack([np.interp(t, s, closed[:, 0]), np.interp(t, s, closed[:, 1])])


def _analyse(
    mask: np.ndarray, overlay: np.ndarray, n_points: int
) -> tuple[np.ndarray | None, float, str | None]:
    """Return the normalised (2, n_points, 2) pair and its pixel aspect, or a rejection reason."""
    lungs, reason = _lung_components(mask, overlay)
    if reason:
        return None, 0.0, reason
    m = _BORDER_MARGIN
    if any(lung[:m].any() or lung[-m:].any() or lung[:, :m].any() or lung[:, -m:].any() for lung in lungs):
        return None, 0.0, "border"  # cut off by the image edge: the outline is not anatomical
    contours = [_outer_contour(lung) for lung in lungs]
    centroid_x = [c[:, 0].mean() for c in contours]
    order = np.argsort(centroid_x)  # image left = patient's right lung
    right, left = (contours[i] for i in order)
    lungs = [lungs[i] for i in order]

    x0, x1 = right[:, 0].min(), left[:, 0].max()
    y0 = min(right[:, 1].min(), left[:, 1].min())
    y1 = max(right[:, 1].max(), left[:, 1].max())
    width, height = x1 - x0, y1 - y0
    if width <= 0 or not _ASPECT_RANGE[0] <= height / width <= _ASPECT_RANGE[1]:
        return None, 0.0, "aspect"
    for c in (right, left):
        top = c[c[:, 1] <= c[:, 1].min() + _APEX_BAND * height, 0]
        if top.max() - top.min() > _MAX_APEX_FLAT * (c[:, 0].max() - c[:, 0].min()):
            return None, 0.0, "flat_apex"  # apex cut off by the original image crop
    ratio = lungs[0].sum() / lungs[1].sum()
    if not _AREA_RATIO_RANGE[0] <= ratio <= _AREA_RATIO_RANGE[1]:
        return None, 0.0, "area_ratio"
    # Side by side, not stacked: each centroid must lie beyond the other lung's medial edge.
    if right[:, 0].mean() >= left[:, 0].min() or left[:, 0].mean() <= right[:, 0].max():
        return None, 0.0, "layout"
    gap = cKDTree(right).query(left, k=1)[0].min()
    if gap < _MIN_GAP_FRACTION * width:
        return None, 0.0, "gap"

    scale = np.array([width, height])
    origin = np.array([x0, y0])
    pair = np.stack([(_resample(c, n_points) - origin) / scale for c in (right, left)])
    return pair.astype(np.float32), float(height / width), None


# ----------------------------------------------------------------------------------------- public


def build_atlas(source: Path, n_points: int = DEFAULT_N_POINTS) -> AtlasBuildReport:
    """Build the atlas from the torchxrayvision wheel or its ``semantic_masks_v7labs_lungs.zip``."""
    pairs: list[np.ndarray] = []
    names: list[str] = []
    aspects: list[float] = []
    rejected: Counter[str] = Counter({reason: 0 for reason in REJECT_REASONS})
    rejections: list[tuple[str, str]] = []
    total = 0
    for name, data in _iter_masks(Path(source)):
        total += 1
        try:
            mask, overlay = _decode(data)
        except (OSError, ValueError):
            pair, aspect, reason = None, 0.0, "unreadable"
        else:
            pair, aspect, reason = _analyse(mask, overlay, n_points)
        if pair is None:
            rejected[reason or "unknown"] += 1
            rejections.append((name, reason or "unknown"))
            continue
        pairs.append(pair)
        names.append(name)
        aspects.append(aspect)
    shapes = np.stack(pairs) if pairs else np.zeros((0, 2, n_points, 2), np.float32)
    atlas = LungAtlas(
        shapes=shapes, names=tuple(names), aspect=float(np.median(aspects)) if aspects else float("nan")
    )
    return AtlasBuildReport(atlas=atlas, total=total, rejected=dict(rejected), rejections=rejections)


def save_atlas(atlas: LungAtlas, path: Path) -> None:
    """Write an ``np.load``-compatible .npz whose bytes depend only on the atlas contents."""
    arrays = {
        "shapes": np.ascontiguousarray(atlas.shapes, dtype=_STORE_DTYPE),
        "names": np.array(atlas.names, dtype=str),
        "aspect": np.array(atlas.aspect, dtype=np.float64),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, value, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def _read_atlas(data: bytes) -> LungAtlas:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        shapes = npz["shapes"].astype(np.float32)
        names = tuple(str(n) for n in npz["names"])
        aspect = float(npz["aspect"])
    shapes.flags.writeable = False  # shared by the cache: callers must copy before editing
    return LungAtlas(shapes=shapes, names=names, aspect=aspect)


@functools.lru_cache(maxsize=1)
def _load_default() -> LungAtlas:
    return _read_atlas(resources.files("cxrmesh.synth").joinpath("data", "lung_atlas.npz").read_bytes())


def load_atlas(path: Path | None = None) -> LungAtlas:
    """Load an atlas file; with no path, the committed default (read once, then cached)."""
    if path is None:
        return _load_default()
    return _read_atlas(Path(path).read_bytes())


def ensure_source(cache_dir: Path) -> Path:
    """Return the torchxrayvision wheel in ``cache_dir``, downloading it (no dependencies) if absent."""
    cache_dir = Path(cache_dir)
    wheel = cache_dir / TXV_WHEEL
    if wheel.is_file():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"torchxrayvision=={TXV_VERSION}"]
    cmd += ["-d", str(cache_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RuntimeError(f"could not run {' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0 or not wheel.is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {detail[0]}")
    return wheel


def atlas_main(out: Path, source: Path | None, cache_dir: Path) -> AtlasBuildReport:
    """CLI entry point: build from ``source`` (or the cached/downloaded wheel) and write ``out``."""
    wheel = Path(source) if source is not None else ensure_source(cache_dir)
    report = build_atlas(wheel)
    if not len(report.atlas):
        raise RuntimeError(f"no usable lung masks in {wheel}: {report.summary()}")
    save_atlas(report.atlas, out)
    return report
