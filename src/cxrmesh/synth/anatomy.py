"""Patient anatomy and per-study pose, sampled as plain numbers in millimetres.

Geometry lives in a patient frame: origin on the body midline at the level of the highest lung
apex, x to the image right (patient's left), y downwards, millimetres. Rendering maps it to pixels.
Sampling is separated from rendering so a patient keeps the same lungs, heart and ribs across
studies while pose, inspiration and projection change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrmesh.synth.atlas import LungAtlas


@dataclass(frozen=True)
class PatientAnatomy:
    """What stays the same for a patient across studies."""

    sex: str
    shape_index: int
    blend_index: int
    blend: float
    lung_width_mm: float
    aspect_scale: float
    elastic: np.ndarray  # (K, 5): amplitude x, amplitude y, freq x, freq y, phase
    heart_ctr: float  # cardiothoracic ratio on a PA film
    heart_offset: float  # heart centre right of midline, as a fraction of the heart half-width
    heart_aspect: float
    heart_level: float  # heart centre as a fraction of lung height
    mediastinum_mm: float
    knob_mm: float
    carina_frac: float
    hilum_drop_frac: float
    hilum_angle_deg: float
    rib_spacing_frac: float
    rib_width_mm: float
    torso_margin: float
    breast: float  # 0 for none, else size factor
    spine_mm: float
    gastric_bubble: float
    texture_seed: int


@dataclass(frozen=True)
class StudyPose:
    """What changes between studies: projection, positioning and breath-hold."""

    view: str  # "PA" or "AP"
    rotation_deg: float
    shift_mm: tuple[float, float]
    inspiration: float
    apex_from_top_mm: float


def sample_anatomy(rng: np.random.Generator, atlas: LungAtlas, sex: str) -> PatientAnatomy:
    """Draw one patient's anatomy; sizes follow adult ranges, smaller on average for women."""
    n = len(atlas)
    female = sex == "F"
    k = 6
    elastic = np.column_stack(
        [
            rng.normal(0, 0.012, k),
            rng.normal(0, 0.012, k),
            rng.uniform(0.4, 1.6, k) * rng.choice([-1, 1], k),
            rng.uniform(0.4, 1.6, k) * rng.choice([-1, 1], k),
            rng.uniform(0, 2 * np.pi, k),
        ]
    )
    return PatientAnatomy(
        sex=sex,
        shape_index=int(rng.integers(n)),
        blend_index=int(rng.integers(n)),
        blend=float(rng.uniform(0.0, 0.25)),
        lung_width_mm=float(rng.normal(255 if female else 280, 14)),
        aspect_scale=float(rng.normal(1.0, 0.06)),
        elastic=elastic,
        heart_ctr=float(np.clip(rng.normal(0.45, 0.04), 0.36, 0.58)),
        heart_offset=float(rng.uniform(0.25, 0.45)),
        heart_aspect=float(rng.uniform(0.62, 0.78)),
        heart_level=float(rng.uniform(0.64, 0.72)),
        mediastinum_mm=float(rng.uniform(48, 64)),
        knob_mm=float(rng.uniform(14, 22)),
        carina_frac=float(rng.uniform(0.27, 0.34)),
        hilum_drop_frac=float(rng.uniform(0.07, 0.12)),
        hilum_angle_deg=float(rng.uniform(38, 52)),
        rib_spacing_frac=float(rng.uniform(0.092, 0.104)),
        rib_width_mm=float(rng.uniform(7, 9.5)),
        torso_margin=float(rng.uniform(1.07, 1.18)),
        breast=float(rng.uniform(0.6, 1.2)) if female else 0.0,
        spine_mm=float(rng.uniform(38, 48)),
        gastric_bubble=float(rng.uniform(0.0, 1.0)),
        texture_seed=int(rng.integers(2**31)),
    )


def sample_pose(rng: np.random.Generator, view: str) -> StudyPose:
    """Positioning varies more, and inspiration is poorer, on portable AP films."""
    ap = view == "AP"
    return StudyPose(
        view=view,
        rotation_deg=float(rng.normal(0, 2.5 if ap else 1.5)),
        shift_mm=(float(rng.normal(0, 12 if ap else 7)), float(rng.normal(0, 10 if ap else 6))),
        inspiration=float(rng.uniform(0.84, 0.96) if ap else rng.uniform(0.93, 1.04)),
        apex_from_top_mm=float(rng.uniform(22, 50)),
    )


@dataclass(frozen=True)
class Geometry:
    """Patient-frame geometry of one study (millimetres)."""

    right_lung: np.ndarray  # (P, 2)
    left_lung: np.ndarray  # (P, 2)
    width: float
    height: float
    carina: np.ndarray  # (2,)
    left_hilum: np.ndarray
    right_hilum: np.ndarray
    midline_x: float


def lung_geometry(atlas: LungAtlas, anat: PatientAnatomy, pose: StudyPose) -> Geometry:
    """Atlas shape -> blended, elastically deformed, scaled lungs plus landmarks that follow them."""
    a = atlas.shapes[anat.shape_index].astype(np.float64)
    b = atlas.shapes[anat.blend_index].astype(np.float64)
    shapes = (1 - anat.blend) * a + anat.blend * b  # (2, P, 2) in the unit joint frame
    u, v = shapes[..., 0], shapes[..., 1]
    du = np.zeros_like(u)
    dv = np.zeros_like(v)
    for ax, ay, fx, fy, ph in anat.elastic:
        wave = np.sin(2 * np.pi * (fx * u + fy * v) + ph)
        du += ax * wave
        dv += ay * wave
    u = u + du
    v = v + dv
    width = anat.lung_width_mm
    height = width * atlas.aspect * anat.aspect_scale * pose.inspiration
    pts = np.stack([(u - 0.5) * width, (v - v.min()) * height], axis=-1)
    right, left = pts[0], pts[1]
    # midline: halfway between the lungs' medial edges at carina level
    carina_y = anat.carina_frac * height
    r_med = _x_extent(right, carina_y)[1]
    l_med = _x_extent(left, carina_y)[0]
    mid = 0.5 * (r_med + l_med)
    carina = np.array([mid, carina_y])
    ang = np.deg2rad(anat.hilum_angle_deg)
    drop = anat.hilum_drop_frac * height
    hilum_y = carina_y + drop
    hx = mid + drop * np.tan(ang)
    # the hilum sits just inside the left lung's medial border
    l_lo, l_hi = _x_extent(left, hilum_y)
    hx = float(np.clip(hx, l_lo + 6.0, l_lo + 0.3 * (l_hi - l_lo)))
    left_hilum = np.array([hx, hilum_y])
    rh_y = hilum_y + 0.04 * height
    r_lo, r_hi = _x_extent(right, rh_y)
    right_hilum = np.array([r_hi - 0.18 * (r_hi - r_lo), rh_y])
    return Geometry(right, left, width, height, carina, left_hilum, right_hilum, float(mid))


def _x_extent(poly: np.ndarray, y: float) -> tuple[float, float]:
    """Leftmost and rightmost crossing of a closed polygon with the horizontal line at ``y``."""
    p0 = poly
    p1 = np.roll(poly, -1, axis=0)
    y0, y1 = p0[:, 1], p1[:, 1]
    cross = (y0 - y) * (y1 - y) <= 0
    cross &= y0 != y1
    if not cross.any():
        # line misses the polygon: fall back to the nearest vertices in y
        idx = np.argsort(np.abs(poly[:, 1] - y))[:2]
        xs = poly[idx, 0]
        return float(xs.min()), float(xs.max())
    t = (y - y0[cross]) / (y1[cross] - y0[cross])
    xs = p0[cross, 0] + t * (p1[cross, 0] - p0[cross, 0])
    return float(xs.min()), float(xs.max())
