"""Disease truth (RALE per quadrant) and the opacity map that renders it.

RALE (Warren et al., Thorax 2018): per quadrant an extent score 0-4 (none, <25 %, 25-50 %, 50-75 %,
>75 % of the quadrant opacified) and a density score 1-3 (hazy, moderate, dense); the total is the
sum of extent x density, 0-48. Here a quadrant with extent 0 carries density 0 ("not scored").

The rendered opacity follows the truth exactly: in each quadrant the opacified fraction of lung
pixels is drawn inside the extent's band (with a margin from the band edges so resampling to model
resolution cannot move it across) and its strength is set by the density.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrmesh.analysis.regions import REGION_KEYS, Region
from cxrmesh.synth.filters import smooth, smooth_noise

DIAGNOSES = ("normal", "covid19", "other_pneumonia")

# Opacified-fraction bands per extent score, with margins from the RALE band edges.
EXTENT_BANDS: dict[int, tuple[float, float]] = {
    0: (0.0, 0.0),
    1: (0.06, 0.21),
    2: (0.29, 0.46),
    3: (0.54, 0.71),
    4: (0.79, 0.95),
}
# The RALE definition of each extent score, for checking a measured fraction.
EXTENT_LIMITS: dict[int, tuple[float, float]] = {
    0: (0.0, 0.0),
    1: (0.0, 0.25),
    2: (0.25, 0.5),
    3: (0.5, 0.75),
    4: (0.75, 1.0),
}
# Added attenuation (arbitrary units, soft tissue ~ 1 per 5 cm) per density score.
DENSITY_AMPLITUDE = {1: 0.25, 2: 0.5, 3: 0.8}


@dataclass(frozen=True)
class QuadrantScore:
    extent: int
    density: int

    @property
    def score(self) -> int:
        return self.extent * self.density


Rale = dict[str, QuadrantScore]


# At or below this severity a disease's opacities have cleared (RALE 0). The corpus planner does not
# image a patient again once that happens: a diagnosis label on a clear radiograph is not something
# an image can show, and with such studies in the corpus no retrieval model could reach 0.90 P@10.
RESOLVED_SEVERITY = 0.02


def rale_total(rale: Rale) -> int:
    return sum(q.score for q in rale.values())


def extent_from_fraction(fraction: float) -> int:
    """RALE extent score for an opacified fraction of a quadrant."""
    if fraction <= 0.0:
        return 0
    for extent in (1, 2, 3):
        if fraction < EXTENT_LIMITS[extent][1]:
            return extent
    return 4


def sample_rale(rng: np.random.Generator, diagnosis: str, severity: float, focus: dict) -> Rale:
    """RALE truth for one study from the diagnosis, a severity in [0, 1] and the patient's focus.

    COVID-19: bilateral, lower-zone predominant, density rising with severity.
    Other pneumonia: a focal, mostly one-sided consolidation in the focus quadrant, sometimes
    spreading to the neighbouring zone of the same lung, rarely a small contralateral haze.
    """
    zero = QuadrantScore(0, 0)
    rale = {key: zero for key in REGION_KEYS.values()}
    if diagnosis == "normal" or severity <= RESOLVED_SEVERITY:
        return rale
    s = float(np.clip(severity, 0.0, 1.0))
    if diagnosis == "covid19":
        density = int(np.clip(round(1 + 2.2 * s + rng.normal(0, 0.45)), 1, 3))
        for key in rale:
            lower = key.endswith("lower")
            mean = 4.4 * s + 0.3 if lower else 3.4 * s - 0.5
            ext = int(np.clip(round(mean + rng.normal(0, 0.55)), 0, 4))
            if lower and ext == 0:
                ext = 1  # COVID-19 opacities are at least present in the lower zones
            dens = int(np.clip(density + (0 if lower else -int(rng.random() < 0.4)), 1, 3))
            rale[key] = QuadrantScore(ext, dens if ext else 0)
        return rale
    if diagnosis == "other_pneumonia":
        side, zone = focus["side"], focus["zone"]
        other_zone = "upper" if zone == "lower" else "lower"
        other_side = "left" if side == "right" else "right"
        ext = int(np.clip(round(1 + 3.2 * s + rng.normal(0, 0.4)), 1, 4))
        dens = 3 if s > 0.45 else int(rng.integers(2, 4))
        rale[f"{side}_{zone}"] = QuadrantScore(ext, dens)
        if focus["spread"] and s > 0.3:
            rale[f"{side}_{other_zone}"] = QuadrantScore(int(np.clip(round(2.5 * s), 1, 2)), 2)
        if focus["contralateral"]:
            rale[f"{other_side}_{zone}"] = QuadrantScore(1, 1)
        return rale
    raise ValueError(f"unknown diagnosis {diagnosis!r}; expected one of {DIAGNOSES}")


def sample_focus(rng: np.random.Generator) -> dict:
    """Where a patient's bacterial/other pneumonia sits (kept across their studies)."""
    return {
        "side": "right" if rng.random() < 0.6 else "left",
        "zone": "lower" if rng.random() < 0.7 else "upper",
        "spread": bool(rng.random() < 0.4),
        "contralateral": bool(rng.random() < 0.15),
        "seed": (float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.25, 0.75))),
    }


def render_opacity(
    rng: np.random.Generator,
    regions: np.ndarray,
    edge_dist_mm: np.ndarray,
    rale: Rale,
    diagnosis: str,
    px_per_mm: float,
    focus: dict | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Opacity label map (0 none, else density score) and added attenuation for the truth ``rale``.

    In each quadrant exactly round(f * n) lung pixels are opacified, f drawn inside the extent band;
    which pixels is decided by a smooth priority field (peripheral/lower for COVID-19, a compact
    lobar blob for other pneumonia) plus correlated noise, so patches look organic.
    """
    labels = np.zeros(regions.shape, dtype=np.uint8)
    amplitude = np.zeros(regions.shape, dtype=np.float32)
    if all(q.extent == 0 for q in rale.values()):
        return labels, amplitude
    sigma = 7.0 * px_per_mm
    noise = smooth_noise(rng, regions.shape, sigma)
    fine = smooth_noise(rng, regions.shape, 2.0 * px_per_mm)
    rows = np.arange(regions.shape[0], dtype=np.float32)[:, None]
    cols = np.arange(regions.shape[1], dtype=np.float32)[None, :]
    lung_rows = np.nonzero((regions > 0).any(axis=1))[0]
    top, bottom = float(lung_rows.min()), float(lung_rows.max())
    for region, key in REGION_KEYS.items():
        q = rale[key]
        if q.extent == 0:
            continue
        inside = regions == region
        n = int(inside.sum())
        if n == 0:
            continue
        lo, hi = EXTENT_BANDS[q.extent]
        k = round(float(rng.uniform(lo, hi)) * n)
        if k == 0:
            continue
        ys, xs = np.nonzero(inside)
        y0, y1 = ys.min(), ys.max() + 1
        x0, x1 = xs.min(), xs.max() + 1
        yrel = (rows[y0:y1] - y0) / max(1, y1 - y0 - 1)
        xrel = (cols[:, x0:x1] - x0) / max(1, x1 - x0 - 1)
        if diagnosis == "covid19":
            # peripheral and lower-lung predominant; the height term runs over the whole lung so
            # opacities do not step at the zone boundary
            ylung = (rows[y0:y1] - top) / max(1.0, bottom - top)
            prior = -edge_dist_mm[y0:y1, x0:x1] / 18.0 + 0.9 * ylung + 1.2 * noise[y0:y1, x0:x1]
        else:
            sx, sy = focus["seed"] if focus else (0.5, 0.5)
            blob = np.hypot(xrel - sx, (yrel - sy) * 1.3)
            prior = -4.0 * blob + 0.5 * noise[y0:y1, x0:x1]
        sub = inside[y0:y1, x0:x1]
        flat = np.where(sub, prior, -np.inf).ravel()
        chosen = np.argpartition(-flat, k - 1)[:k]
        mask = np.zeros(flat.shape, dtype=bool)
        mask[chosen] = True
        mask = mask.reshape(sub.shape)
        labels[y0:y1, x0:x1][mask] = q.density
        amp = DENSITY_AMPLITUDE[q.density]
        texture = 1.0 + (0.3 if q.density == 1 else 0.15) * fine[y0:y1, x0:x1]
        amplitude[y0:y1, x0:x1] += np.where(mask, amp * texture, 0.0).astype(np.float32)
    # soften edges of the attenuation (not of the label map) so patches fade like real opacities
    amplitude = smooth(amplitude, 2.5 * px_per_mm)
    return labels, amplitude


def conform_opacity(opacity: np.ndarray, regions: np.ndarray, rale: Rale) -> np.ndarray:
    """Make a resampled opacity label map agree with the quadrant truth it was drawn from.

    Resampling to the model frame can move a one-pixel sliver of opacity across the zone line or
    out of the lung; such slivers take the label of the quadrant they land in (density score) or
    are dropped where that quadrant has no opacity, so the truth maps never contradict the scores.
    """
    out = np.zeros_like(opacity)
    for region, key in REGION_KEYS.items():
        q = rale[key]
        if q.extent:
            out[(regions == region) & (opacity > 0)] = q.density
    return out


def opacity_fractions(regions: np.ndarray, opacity: np.ndarray) -> dict[str, float]:
    """Measured opacified fraction per quadrant (for tests and QA)."""
    out: dict[str, float] = {}
    for region, key in REGION_KEYS.items():
        inside = regions == region
        n = int(inside.sum())
        out[key] = float((opacity[inside] > 0).sum() / n) if n else 0.0
    return out


__all__ = [
    "DIAGNOSES",
    "EXTENT_BANDS",
    "QuadrantScore",
    "Rale",
    "Region",
    "conform_opacity",
    "extent_from_fraction",
    "opacity_fractions",
    "rale_total",
    "render_opacity",
    "sample_focus",
    "sample_rale",
]
