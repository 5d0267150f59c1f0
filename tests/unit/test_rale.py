"""The RALE estimator: monotone mappings, the 0 and 48 ends, band edges, and agreement on the
session corpus (truth lung maps and hilum; no models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from cxrmesh.analysis import rale
from cxrmesh.analysis.quantify import region_table
from cxrmesh.analysis.regions import REGION_KEYS, Region, split_regions
from cxrmesh.contracts.corpus import read_training_copy
from cxrmesh.synth.disease import EXTENT_LIMITS, extent_from_fraction

KEYS = tuple(REGION_KEYS.values())
EMPTY_TABLE = {k: {"opacity_fraction": 0.0} for k in KEYS}


def _measurements(extent: float, density: float) -> dict[str, dict[str, float]]:
    return {k: {"extent_measure": extent, "density_measure": density, "scored_pixels": 100} for k in KEYS}


def test_calibration_is_well_formed() -> None:
    cal = rale.CALIBRATION
    assert np.asarray(cal["cell"]).shape == (2, rale.GRID_HEIGHT, rale.GRID_LATERAL)
    assert len(cal["dist"]) == len(rale.DIST_EDGES) and len(cal["body"]) == len(rale.BODY_EDGES)
    assert set(cal["offset"]) == {*rale.ANCHORS, "bias"}
    for key, n in (("extent_cuts", 4), ("density_cuts", 2), ("table_extent_cuts", 4)):
        cuts = np.asarray(cal[key])
        assert cuts.shape == (n,) and (np.diff(cuts) > 0).all(), key
    assert cal["extent_cuts"][0] > 0 and cal["extent_cuts"][-1] < 4
    assert cal["density_cuts"][0] > 1 and cal["density_cuts"][-1] < 3 and cal["table_density"] in (1, 2, 3)
    for key in ("extent_weights", "density_weights"):
        weights = np.asarray(cal[key])
        assert weights.shape == (len(KEYS), rale.N_DESIGN), key
        # the columns that grow with the quadrant's opacity never lower its measure
        assert (weights[:, : rale.N_MONOTONE] >= 0).all(), key


def test_context_quadrants_are_contralateral_other_zone_and_diagonal() -> None:
    partners = [{KEYS[q]: KEYS[p] for q, p in enumerate(rows)} for rows in rale.CONTEXT]
    contralateral, other_zone, diagonal = partners
    assert contralateral["right_upper"] == "left_upper" and contralateral["left_lower"] == "right_lower"
    assert other_zone["right_upper"] == "right_lower" and other_zone["left_lower"] == "left_upper"
    assert diagonal["right_upper"] == "left_lower" and diagonal["left_upper"] == "right_lower"


def test_extent_never_drops_with_a_larger_measure() -> None:
    fractions = np.linspace(0.0, 4.0, 1001)
    extents = [rale.extent_from_measure(f, rale.CALIBRATION["extent_cuts"]) for f in fractions]
    assert (np.diff(extents) >= 0).all()
    assert extents[0] == 0 and extents[-1] == 4
    assert set(extents) == {0, 1, 2, 3, 4}


def test_density_never_drops_with_a_larger_measure() -> None:
    excess = np.linspace(1.0, 3.0, 1001)
    densities = [rale.density_from_measure(e, rale.CALIBRATION["density_cuts"]) for e in excess]
    assert (np.diff(densities) >= 0).all()
    assert densities[0] == 1 and densities[-1] == 3


def test_zero_opacity_scores_zero() -> None:
    est = rale.rale_from_measurements(_measurements(0.0, 1.0))
    assert est.total == 0 and est.score == 0.0
    assert all(r == rale.RegionScore(0, 0, 0) for r in est.regions.values())
    assert set(est.regions) == set(KEYS)


def test_full_dense_opacity_scores_48() -> None:
    est = rale.rale_from_measurements(_measurements(4.0, 3.0))
    assert est.total == 48 and est.score == 48.0
    assert all(r == rale.RegionScore(4, 3, 12) for r in est.regions.values())


def test_calibrated_cut_points_are_the_band_edges() -> None:
    cuts = rale.CALIBRATION["extent_cuts"]
    for k, c in enumerate(cuts, start=1):
        assert rale.extent_from_measure(np.nextafter(c, -1.0), cuts) == k - 1
        assert rale.extent_from_measure(c, cuts) == k
    dcuts = rale.CALIBRATION["density_cuts"]
    for k, c in enumerate(dcuts, start=2):
        assert rale.density_from_measure(np.nextafter(c, -1.0), dcuts) == k - 1
        assert rale.density_from_measure(c, dcuts) == k


def test_rale_definition_cuts_reproduce_the_extent_bands() -> None:
    """With RALE's own band edges the mapping is the generator's ``extent_from_fraction``."""
    cuts = [np.nextafter(0.0, 1.0)] + [EXTENT_LIMITS[k][1] for k in (1, 2, 3)]
    edges = [0.0, 0.25, 0.5, 0.75, 1.0]
    probes = sorted({*np.linspace(0, 1, 401), *edges, *(np.nextafter(e, -1.0) for e in edges[1:])})
    for f in probes:
        assert rale.extent_from_measure(f, cuts) == extent_from_fraction(f), f


def test_density_is_zero_exactly_when_extent_is_zero() -> None:
    for f in (-0.5, 0.0, 0.5, 1.5, 2.5, 4.0, 5.0):
        for e in (0.0, 1.0, 2.0, 3.0, 4.0):
            for r in rale.rale_from_measurements(_measurements(f, e)).regions.values():
                assert (r.extent == 0) == (r.density == 0)
                assert r.score == r.extent * r.density


def test_table_only_fallback() -> None:
    assert rale.estimate_rale(EMPTY_TABLE).total == 0
    full = {k: {"opacity_fraction": 1.0} for k in KEYS}
    est = rale.estimate_rale(full)
    assert all(r.extent == 4 and r.density == rale.CALIBRATION["table_density"] for r in est.regions.values())
    with pytest.raises(ValueError, match="lacks"):
        rale.estimate_rale({"right_upper": {}})
    with pytest.raises(ValueError, match="together"):
        rale.estimate_rale(EMPTY_TABLE, image=np.zeros((256, 256), np.float32))


def test_frames_must_match() -> None:
    with pytest.raises(ValueError, match="same square shape"):
        rale.to_model_frame(np.zeros((256, 256)), np.zeros((128, 128), np.uint8), (1.0, 1.0))
    with pytest.raises(ValueError, match="multiple"):
        rale.to_model_frame(np.zeros((300, 300)), np.zeros((300, 300), np.uint8), (1.0, 1.0))


# ----------------------------------------------------------------------------- session corpus


def _study(corpus: Path, row: dict) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    image = read_training_copy(corpus / row["paths"]["image"])
    lungs = np.asarray(Image.open(corpus / row["paths"]["lungs"]))
    hilum = row["landmarks"]["left_hilum"]["model"]
    return image, lungs, (float(hilum[0]), float(hilum[1]))


def test_added_opacity_never_lowers_the_quadrant_score(corpus: Path, manifest: list[dict]) -> None:
    """Opacity painted into the right lower zone: more area never lowers its extent, more density
    never lowers its density (512 frame, truth maps)."""
    image, lungs, hilum = _study(corpus, manifest[0])
    regions = split_regions(lungs, hilum)
    ys, xs = np.nonzero(regions == Region.RIGHT_LOWER)
    order = np.argsort(-ys, kind="stable")  # from the base upwards, like a lower-zone opacity

    def scored(share: float, amplitude: float) -> rale.RegionScore:
        paint = np.zeros(image.shape, dtype=np.float32)
        k = order[: round(share * order.size)]
        paint[ys[k], xs[k]] = amplitude
        est = rale.estimate_rale(EMPTY_TABLE, np.clip(image + paint, 0.0, 1.0), lungs, hilum)
        return est.regions["right_lower"]

    extents = [scored(s, 0.12).extent for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert extents == sorted(extents) and extents[-1] == 4, extents
    densities = [scored(1.0, a).density for a in (0.03, 0.06, 0.1, 0.2, 0.3)]
    assert densities == sorted(densities) and densities[-1] == 3, densities


def test_estimate_agrees_with_truth_on_session_corpus(corpus: Path, manifest: list[dict]) -> None:
    """Truth lung maps and hilum in the 512 frame: the quadrant scores rank with the truth.

    The corpus is small (18 studies, mostly low RALE), so the check pools its 72 quadrants; the
    study-level agreement is measured on the 600/2000-study corpora by benchmarks/rale_agreement.py.
    """
    est_scores, true_scores = [], []
    for row in manifest:
        image, lungs, hilum = _study(corpus, row)
        est = rale.estimate_rale(region_table(image, lungs, hilum), image, lungs, hilum)
        assert 0 <= est.total <= 48 and est.total == sum(r.score for r in est.regions.values())
        for key in KEYS:
            est_scores.append(est.regions[key].score)
            true_scores.append(row["rale"][key]["extent"] * row["rale"][key]["density"])
    assert len(set(true_scores)) > 2, "session corpus has too little disease to check agreement"
    rho = spearmanr(est_scores, true_scores)[0]
    assert rho > 0.2, f"quadrant Spearman {rho:.3f}"
