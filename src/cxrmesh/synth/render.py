"""Render a synthetic chest radiograph from patient anatomy, pose, disease and site.

Composition happens in an attenuation-like (log) domain: every structure adds (bone, heart,
opacities) or removes (air in lungs, trachea, stomach) attenuation along the ray; the detector
image is exp(-A) and the vendor processing works on its log, A. That is why overlapping structures
add up the way they do on a real film (ribs visible through the heart, vessels through haze).

Everything is drawn on a working grid (long side ``WORK_LONG_SIDE``); the full-resolution detector
image is that grid upsampled with fresh full-resolution noise, and the model-resolution training
copy is the working grid taken through the shared preprocessing contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxrmesh.analysis.regions import Lung, split_regions
from cxrmesh.synth.anatomy import Geometry, PatientAnatomy, StudyPose
from cxrmesh.synth.disease import Rale, render_opacity
from cxrmesh.synth.filters import edge_distance, smooth, smooth_noise
from cxrmesh.synth.sites import Site

WORK_LONG_SIDE = 1024


@dataclass(frozen=True)
class Detector:
    """The acquired image's geometry."""

    rows: int
    cols: int
    spacing_mm: float
    apex_mm: float  # distance of the lung apices below the top edge

    @property
    def height_mm(self) -> float:
        return self.rows * self.spacing_mm

    @property
    def width_mm(self) -> float:
        return self.cols * self.spacing_mm

    def work_shape(self) -> tuple[int, int]:
        s = WORK_LONG_SIDE / max(self.rows, self.cols)
        return max(1, round(self.rows * s)), max(1, round(self.cols * s))


def sample_detector(rng: np.random.Generator, site: Site, geo: Geometry, pose: StudyPose) -> Detector:
    """Collimate to the chest as a radiographer does, then fit the site's pixel grid (2000-3000 px).

    The field spans the lungs plus a margin each side and below the costophrenic angles; where the
    site's minimum matrix is larger than the collimated field, the field simply extends.
    """
    spacing = round(float(rng.uniform(*site.pixel_spacing_mm)), 4)
    width_mm = geo.width + 2 * float(rng.uniform(30, 60))
    height_mm = pose.apex_from_top_mm + geo.height + float(rng.uniform(30, 65))
    rows = int(np.clip(round(height_mm / spacing), 2000, 3000))
    cols = int(np.clip(round(width_mm / spacing), 2000, 3000))
    apex = pose.apex_from_top_mm + max(0.0, rows * spacing - height_mm) / 2
    return Detector(rows, cols, spacing, round(apex, 2))


@dataclass
class Rendered:
    """One study at working resolution plus everything known about it."""

    display: np.ndarray  # float32 [0, 1], 1 = white; before acquisition noise at full resolution
    lungs: np.ndarray  # uint8 Lung labels
    regions: np.ndarray  # uint8 Region labels
    opacity: np.ndarray  # uint8: 0 none, else RALE density of the opacity
    carina: tuple[float, float]  # working-grid pixel coordinates (x, y), pixel centres at integers
    left_hilum: tuple[float, float]
    px_per_mm: float


class _Frame:
    """Patient frame (mm) -> working-grid pixel coordinates."""

    def __init__(self, det: Detector, pose: StudyPose, shape: tuple[int, int]):
        self.shape = shape
        self.ppm = shape[0] / det.height_mm
        t = np.deg2rad(pose.rotation_deg)
        self.rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        self.origin = np.array([det.width_mm / 2 + pose.shift_mm[0], det.apex_mm + pose.shift_mm[1]])

    def pil(self, pts_mm: np.ndarray) -> list[tuple[float, float]]:
        """Points for PIL drawing (PIL puts pixel centres at half-integers)."""
        p = (np.asarray(pts_mm, dtype=np.float64) @ self.rot.T + self.origin) * self.ppm
        return [(float(x), float(y)) for x, y in p.reshape(-1, 2)]

    def pixel(self, pt_mm: np.ndarray) -> tuple[float, float]:
        """A point in pixel-centre coordinates (pixel centres at integers)."""
        x, y = (np.asarray(pt_mm, dtype=np.float64) @ self.rot.T + self.origin) * self.ppm - 0.5
        return float(x), float(y)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient-frame coordinates (mm) of every pixel centre."""
        rows, cols = self.shape
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        px = (xx + 0.5) / self.ppm - self.origin[0]
        py = (yy + 0.5) / self.ppm - self.origin[1]
        inv = self.rot.T
        return (inv[0, 0] * px + inv[0, 1] * py).astype(np.float32), (inv[1, 0] * px + inv[1, 1] * py).astype(
            np.float32
        )


def _canvas(shape: tuple[int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("F", (shape[1], shape[0]), 0.0)
    return img, ImageDraw.Draw(img)


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


def _bezier(p0, p1, p2, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def render_study(
    rng: np.random.Generator,
    geo: Geometry,
    anat: PatientAnatomy,
    pose: StudyPose,
    det: Detector,
    site: Site,
    rale: Rale,
    diagnosis: str,
    focus: dict | None,
) -> Rendered:
    """Compose anatomy, disease and vendor processing into a display image on the working grid."""
    shape = det.work_shape()
    fr = _Frame(det, pose, shape)
    ppm = fr.ppm
    X, Y = fr.grid()
    W, H = geo.width, geo.height
    ap = pose.view == "AP"

    # --- lungs: label map and air thickness -------------------------------------------------
    lung_r = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(lung_r).polygon(fr.pil(geo.right_lung), fill=1)
    lung_l = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(lung_l).polygon(fr.pil(geo.left_lung), fill=1)
    r = np.asarray(lung_r, dtype=bool)
    left = np.asarray(lung_l, dtype=bool)
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs[r & ~left] = Lung.RIGHT
    lungs[left & ~r] = Lung.LEFT
    inside = lungs > 0
    edge_mm = edge_distance(inside) / ppm
    air = (1.0 - np.exp(-edge_mm / 22.0)) * inside
    air = smooth(air, 1.2 * ppm)  # pleural surfaces are not razor sharp

    carina = fr.pixel(geo.carina)
    left_hilum = fr.pixel(geo.left_hilum)
    regions = split_regions(lungs, left_hilum)

    # --- body: elliptical torso with neck and shoulders --------------------------------------
    # neck -> sloping shoulders (trapezius) -> chest wall -> waist, as torso half-widths
    ys = np.array([-300.0, -0.3 * H, -0.12 * H, 0.04 * H, 0.25 * H, 0.7 * H, 1.1 * H, 2.0 * H])
    half = W / 2
    m = anat.torso_margin
    hw = np.array(
        [
            0.2 * W,
            0.22 * W,
            0.4 * W,
            half * (m + 0.14),
            half * m,
            half * (m - 0.03),
            half * (m - 0.06),
            half,
        ]
    )
    B = np.interp(Y, ys, hw).astype(np.float32)
    body = np.sqrt(np.clip(1.0 - (X / B) ** 2, 0.0, 1.0))

    # --- mediastinum, heart, aortic knob -----------------------------------------------------
    mid = geo.midline_x
    heart_a = anat.heart_ctr * (1.12 if ap else 1.0) * W / 2
    heart_b = heart_a * anat.heart_aspect
    hx = mid + anat.heart_offset * heart_a
    hy = anat.heart_level * H
    dh = ((X - hx) / heart_a) ** 2 + ((Y - hy) / heart_b) ** 2
    heart = np.sqrt(np.clip(1 - dh, 0, 1))
    mw = anat.mediastinum_mm * (1.1 if ap else 1.0)
    med_x = np.clip(1 - ((X - mid - 4) / (mw / 2)) ** 2, 0, 1)
    med_y = 1.0 / (1.0 + np.exp((Y - hy) / 8.0))
    mediastinum = np.sqrt(med_x) * med_y
    kx, ky = mid + mw / 2 - 0.2 * anat.knob_mm, geo.carina[1] - 0.09 * H
    knob = np.sqrt(np.clip(1 - ((X - kx) ** 2 + (Y - ky) ** 2) / anat.knob_mm**2, 0, 1))

    # --- airways -------------------------------------------------------------------------------
    airway_img, d_air = _canvas(shape)
    tw = 17.0 * ppm
    top = np.array([mid - 2.0, -120.0])
    d_air.line(fr.pil(np.array([top, geo.carina])), fill=1.0, width=max(1, round(tw)))
    rb_end = geo.carina + np.array([-0.09 * W, 0.06 * H])
    d_air.line(fr.pil(np.array([geo.carina, rb_end])), fill=0.9, width=max(1, round(13 * ppm)))
    d_air.line(fr.pil(np.array([geo.carina, geo.left_hilum])), fill=0.85, width=max(1, round(11 * ppm)))
    airway = smooth(_arr(airway_img), 1.5 * ppm)

    # --- bones: spine, ribs, clavicles, scapulae ------------------------------------------------
    bone_img, d_bone = _canvas(shape)
    edge_img, d_edge = _canvas(shape)
    sw = anat.spine_mm
    vh = 0.085 * H
    for i in range(-4, 16):
        y0 = i * vh
        body_pts = np.array(
            [
                [mid - sw / 2, y0 + 2],
                [mid + sw / 2, y0 + 2],
                [mid + sw / 2, y0 + vh - 3],
                [mid - sw / 2, y0 + vh - 3],
            ]
        )
        d_bone.polygon(fr.pil(body_pts), fill=0.12)
        for sgn in (-1, 1):  # pedicles
            c = np.array([mid + sgn * sw * 0.36, y0 + vh * 0.4])
            e = np.array([[c[0] - 3.5, c[1] - 5], [c[0] + 3.5, c[1] + 5]])
            d_edge.ellipse(fr.pil(e), outline=0.1, width=max(1, round(1.6 * ppm)))
    rib_w = anat.rib_width_mm
    spacing = anat.rib_spacing_frac * H
    ap_tilt = 0.5 if ap else 1.0
    for k in range(12):
        yk = -0.06 * H + k * spacing
        for sgn in (-1.0, 1.0):
            lat = half * (0.72 + 0.3 * min(1.0, 0.25 + k / 6.0))  # upper ribs are shorter
            lat_y = yk + (0.02 + 0.011 * k) * H * ap_tilt
            post = np.vstack(
                [
                    _bezier(
                        (mid + sgn * sw * 0.5, yk + 0.03 * H),
                        (mid + sgn * lat * 0.5, yk - 0.075 * H * ap_tilt),
                        (mid + sgn * lat, lat_y),
                    ),
                    _bezier(
                        (mid + sgn * lat, lat_y),
                        (mid + sgn * lat * 1.04, lat_y + 0.05 * H),
                        (mid + sgn * lat * 1.0, lat_y + 0.1 * H),
                        n=10,
                    ),
                ]
            )
            width_px = max(1, round(rib_w * ppm))
            d_bone.line(fr.pil(post), fill=0.3, width=width_px, joint="curve")
            for off in (-rib_w / 2, rib_w / 2):  # cortical margins of the posterior rib
                d_edge.line(fr.pil(post + np.array([0, off])), fill=0.12, width=max(1, round(1.2 * ppm)))
            if k < 8:  # anterior ribs fade into invisible costal cartilage medially
                ant = _bezier(
                    (mid + sgn * lat * 1.0, lat_y + 0.1 * H),
                    (mid + sgn * lat * 0.8, lat_y + 0.17 * H),
                    (mid + sgn * lat * 0.45, lat_y + 0.22 * H),
                )
                d_bone.line(fr.pil(ant), fill=0.14, width=max(1, round(rib_w * 1.2 * ppm)), joint="curve")
    clav_y = (-0.06 if ap else 0.02) * H
    for sgn in (-1.0, 1.0):
        clav = _bezier(
            (mid + sgn * 22, clav_y + 0.05 * H),
            (mid + sgn * half * 0.55, clav_y - (0.0 if ap else 0.04) * H),
            (mid + sgn * half * 1.08, clav_y - (0.02 if ap else 0.09) * H),
        )
        d_bone.line(fr.pil(clav), fill=0.5, width=max(1, round(14 * ppm)), joint="curve")
        # scapula: medial border projects over the lung on AP films
        sx = half * (0.72 if ap else 0.98)
        scap = np.array(
            [
                [mid + sgn * half * 1.05, clav_y + 0.02 * H],
                [mid + sgn * sx, clav_y + 0.12 * H],
                [mid + sgn * (sx + 10), clav_y + 0.42 * H],
                [mid + sgn * half * 1.12, clav_y + 0.3 * H],
            ]
        )
        d_bone.polygon(fr.pil(scap), fill=0.18)
    bone = smooth(_arr(bone_img), 1.0 * ppm) + smooth(_arr(edge_img), 0.6 * ppm)
    # vendor equalisation flattens dense regions: bone shows most where it overlies air
    near_lung = smooth(inside.astype(np.float32), 12.0 * ppm)
    bone *= 0.35 + 0.65 * np.clip(1.6 * near_lung, 0.0, 1.0)

    # --- pulmonary vessels: branching trees from the hila ----------------------------------------
    vessel_img, d_vessel = _canvas(shape)
    for hilum, sgn in ((geo.right_hilum, -1.0), (geo.left_hilum, 1.0)):
        _vessel_tree(rng, d_vessel, fr, np.asarray(hilum, dtype=np.float64), sgn, W, H, ppm)
    vessels = smooth(_arr(vessel_img), 0.8 * ppm)
    hila = np.zeros(shape, dtype=np.float32)
    for hilum in (geo.right_hilum, geo.left_hilum):
        d2 = (X - hilum[0]) ** 2 + (Y - hilum[1]) ** 2
        hila += np.exp(-d2 / (2 * 11.0**2)).astype(np.float32)

    # --- soft tissue: breasts, gastric bubble -----------------------------------------------------
    extra = np.zeros(shape, dtype=np.float32)
    if anat.breast > 0:
        for sgn in (-1.0, 1.0):
            bx, by = mid + sgn * half * 0.55, 0.78 * H
            rb = 0.24 * W * anat.breast
            d = ((X - bx) / rb) ** 2 + ((Y - by) / (rb * 0.8)) ** 2
            top_fade = 1.0 / (1.0 + np.exp(-(Y - (by - 0.45 * rb)) / 12.0))
            extra += 0.5 * anat.breast * np.sqrt(np.clip(1 - d, 0, 1)) * top_fade
    stomach = np.zeros(shape, dtype=np.float32)
    if anat.gastric_bubble > 0.3:
        l_bottom = float(geo.left_lung[:, 1].max())
        gx, gy = mid + half * 0.45, l_bottom + 18
        d = ((X - gx) / 28.0) ** 2 + ((Y - gy) / 15.0) ** 2
        stomach = anat.gastric_bubble * np.sqrt(np.clip(1 - d, 0, 1))

    # --- disease ----------------------------------------------------------------------------------
    opacity, op_amp = render_opacity(rng, regions, edge_mm, rale, diagnosis, ppm, focus)
    dense = smooth((opacity == 3).astype(np.float32), 2 * ppm)

    # --- lung parenchyma texture --------------------------------------------------------------------
    tex = smooth_noise(rng, shape, 1.6 * ppm)

    # heart and mediastinum displace air rather than add tissue on top of the body
    A = (
        4.0 * body
        - 2.3 * air * (1.0 - 0.6 * heart) * (1.0 - 0.7 * mediastinum)
        + 0.25 * heart
        + 0.15 * mediastinum
        + 0.3 * knob
        - 0.3 * airway
        + 0.9 * bone
        + 0.3 * vessels * (1.0 - 0.7 * dense) * inside
        + 0.2 * hila
        + extra
        - 0.9 * stomach
        + op_amp * (0.5 + 0.5 * air)
        + 0.05 * tex * air
    )
    display = _vendor_processing(rng, A.astype(np.float32), site, ppm)
    _burn_marker(display, site, pose, ppm)
    return Rendered(display, lungs, regions, opacity, carina, left_hilum, ppm)


def _vessel_tree(
    rng, draw, fr: _Frame, start: np.ndarray, sgn: float, W: float, H: float, ppm: float
) -> None:
    """Recursive branching from a hilum; most vessels run laterally and downwards."""
    stack = []
    for ang in np.deg2rad(rng.uniform(-70, 80, 5)):
        stack.append((start, ang, 0.12 * W, 5.0, 0))
    while stack:
        p, ang, length, width, depth = stack.pop()
        direction = np.array([sgn * np.cos(ang), np.sin(ang)])
        q = p + direction * length
        draw.line(fr.pil(np.array([p, q])), fill=0.6 + 0.1 * width, width=max(1, round(width * ppm)))
        if depth < 3:
            for _ in range(2):
                stack.append((q, ang + rng.normal(0, 0.45), length * 0.62, width * 0.62, depth + 1))


def _vendor_processing(rng: np.random.Generator, A: np.ndarray, site: Site, ppm: float) -> np.ndarray:
    """log-domain image -> display values: normalisation, contrast curve, edge enhancement, noise."""
    body = A > 0.4
    lo = float(np.percentile(A[body], 1)) if body.any() else 0.0
    hi = float(np.percentile(A[body], 99.5)) if body.any() else 1.0
    base = np.clip((A - 0.1 * lo) / (hi - 0.1 * lo + 1e-6), 0.0, 1.2)
    # quantum noise is larger where fewer photons arrive (dense regions)
    sigma = 0.012 * site.noise * np.exp(1.2 * base)
    noisy = base + sigma * rng.standard_normal(A.shape, dtype=np.float32)
    blurred = smooth(noisy, 6.0 * ppm)
    enhanced = noisy + site.edge_enhance * 0.5 * (noisy - blurred)
    exposure = float(rng.normal(1.0, 0.05))
    # headroom: dense regions (abdomen, mediastinum) stay below white instead of clipping
    out = np.clip(0.88 * np.clip(enhanced * exposure, 0.0, 1.15) ** (0.72 * site.gamma), 0.0, 1.0)
    return out.astype(np.float32)


def _burn_marker(display: np.ndarray, site: Site, pose: StudyPose, ppm: float) -> None:
    """Burned-in lead side marker (and a view label on AP films), as radiographers place them."""
    size = max(8, round(22 * ppm))
    font = ImageFont.load_default(size=size)
    rows, cols = display.shape
    img = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(img)
    x, y = cols - 3 * size, round(1.6 * size)
    draw.text((x, y), "L", fill=255, font=font)
    if site.marker == "box":
        draw.rectangle(
            [x - 0.3 * size, y - 0.1 * size, x + 0.95 * size, y + 1.25 * size], outline=255, width=2
        )
    elif site.marker == "circle":
        draw.ellipse([x - 0.35 * size, y - 0.15 * size, x + 1.0 * size, y + 1.3 * size], outline=255, width=2)
    if pose.view == "AP":
        draw.text(
            (round(1.2 * size), y), "AP PORTABLE", fill=255, font=ImageFont.load_default(size=size * 0.7)
        )
    mark = np.asarray(img, dtype=np.float32) / 255.0
    np.maximum(display, 0.97 * mark, out=display)
