"""Tests for the synthetic clinical record and the 72-h intubation outcome model."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np
import pytest

from cxrmesh.synth import clinical as C

POPULATION_SEED = 20240611
POPULATION_PATIENTS = 1800  # ~4,000 kept studies
DIAGNOSIS_MIX = (0.37, 0.38, 0.25)  # normal, covid19, other_pneumonia (roughly the sites' average)


class Population(NamedTuple):
    patient: np.ndarray
    diagnosis: np.ndarray
    clinical: np.ndarray  # unstandardised clinical design columns
    rale: np.ndarray
    prob: np.ndarray
    label: np.ndarray


def _simulate(seed: int, n_patients: int) -> Population:
    """Patients with 1-4 studies 1-4 days apart; disease RALE drifts between studies."""
    rng = np.random.default_rng(seed)
    patient, diagnosis, clinical, rale_col, prob, label = [], [], [], [], [], []
    for pid in range(n_patients):
        dx = C.DIAGNOSES[int(rng.choice(3, p=DIAGNOSIS_MIX))]
        demo = C.sample_demographics(rng, dx)
        onset = 0.0 if dx == "normal" else float(rng.uniform(2.0, 10.0))
        rale = C.reference_rale_total(rng, dx)
        t = 0.0
        studies = []
        for i in range(int(rng.integers(1, 5))):
            if i:
                t += float(rng.uniform(24.0, 96.0))
                if dx != "normal":
                    drift = 1.0 if dx == "covid19" else -0.5
                    rale = int(np.clip(round(rale + rng.normal(drift, 4.0)), 1, C.RALE_MAX))
            days = 0.0 if dx == "normal" else onset + t / 24.0
            rec = C.sample_clinical(rng, demo, dx, rale, days)
            studies.append((t, rec, rale, C.intubation_probability_72h(demo, rec, rale, dx)))
        out = C.assign_outcomes(rng, [s[0] for s in studies], [s[3] for s in studies])
        for (_, rec, r, p), y in zip(studies[: out.n_studies_kept], out.labels, strict=True):
            patient.append(pid)
            diagnosis.append(dx)
            clinical.append(
                [
                    rec.spo2_pct,
                    rec.resp_rate_per_min,
                    rec.heart_rate_bpm,
                    rec.temperature_c,
                    math.log(rec.crp_mg_l),
                    math.log(rec.lymphocytes_1e9_l),
                    math.log(rec.d_dimer_mg_l_feu),
                    math.log(rec.ldh_u_l),
                    demo.age,
                    float(demo.sex == "M"),
                    demo.n_comorbidities,
                    float(dx == "covid19"),
                    float(dx == "other_pneumonia"),
                ]
            )
            rale_col.append(r)
            prob.append(p)
            label.append(y)
    return Population(
        np.array(patient),
        np.array(diagnosis),
        np.array(clinical, dtype=float),
        np.array(rale_col, dtype=float),
        np.array(prob),
        np.array(label, dtype=float),
    )


@pytest.fixture(scope="module")
def population() -> Population:
    return _simulate(POPULATION_SEED, POPULATION_PATIENTS)


def _fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, iters: int = 30) -> np.ndarray:
    """Newton/IRLS; a tiny ridge keeps the Hessian invertible when a column is near-separable."""
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        hess = x.T @ (x * (p * (1.0 - p))[:, None]) + ridge * np.eye(x.shape[1])
        step = np.linalg.solve(hess, x.T @ (y - p) - ridge * w)
        w += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    n1 = y.sum()
    n0 = len(y) - n1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _design(cols: np.ndarray, train: np.ndarray) -> np.ndarray:
    mu = cols[train].mean(axis=0)
    sd = cols[train].std(axis=0) + 1e-9
    return np.column_stack([np.ones(len(cols)), (cols - mu) / sd])


# --------------------------------------------------------------------------------------------- #


def test_determinism_by_seed() -> None:
    def draw(seed: int) -> tuple:
        rng = np.random.default_rng(seed)
        demo = C.sample_demographics(rng, "covid19")
        rec = C.sample_clinical(rng, demo, "covid19", 18, 6.5)
        out = C.assign_outcomes(rng, [0.0, 48.0, 96.0], [0.3, 0.3, 0.3])
        return demo, rec, out

    assert draw(7) == draw(7)
    assert [draw(s)[1] for s in range(5)] != [draw(s + 100)[1] for s in range(5)]


def test_ranges_and_units_over_2000_draws() -> None:
    rng = np.random.default_rng(1)
    allowed = set(C.COMORBIDITIES)
    for i in range(2000):
        dx = C.DIAGNOSES[i % 3]
        demo = C.sample_demographics(rng, dx)
        assert 18 <= demo.age <= 95 and isinstance(demo.age, int)
        assert demo.sex in ("M", "F")
        assert set(demo.comorbidities) <= allowed
        assert len(set(demo.comorbidities)) == len(demo.comorbidities)
        d = demo.to_dict()
        assert set(d) == {"age", "sex", "comorbidities"}  # latent frailty is never exported
        rale = 0 if dx == "normal" else int(rng.integers(0, C.RALE_MAX + 1))
        rec = C.sample_clinical(rng, demo, dx, rale, float(rng.uniform(0, 20)))
        assert 70 <= rec.spo2_pct <= 100
        assert 8 <= rec.resp_rate_per_min <= 50
        assert 40 <= rec.heart_rate_bpm <= 170
        assert 35.0 <= rec.temperature_c <= 41.5
        assert 0.3 <= rec.crp_mg_l <= 450
        assert 0.1 <= rec.lymphocytes_1e9_l <= 5.0
        assert 0.19 <= rec.d_dimer_mg_l_feu <= 20.0
        assert 100 <= rec.ldh_u_l <= 2500
        assert rec.days_since_onset >= 0
        out = rec.to_dict()
        assert set(out) == {f.name for f in dataclasses.fields(C.ClinicalRecord)}
        for key in ("spo2_pct", "resp_rate_per_min", "heart_rate_bpm", "ldh_u_l"):
            assert isinstance(out[key], int)
        assert out["lymphocytes_1e9_l"] == round(out["lymphocytes_1e9_l"], 2)
        p = C.intubation_probability_72h(demo, rec, rale, dx)
        assert 0.0 < p < 1.0


def test_clinical_values_follow_diagnosis_and_severity() -> None:
    rng = np.random.default_rng(2)
    stats: dict[str, dict[str, list[float]]] = {dx: {} for dx in C.DIAGNOSES}
    rale_vs_spo2: list[tuple[float, float]] = []
    for i in range(3000):
        dx = C.DIAGNOSES[i % 3]
        demo = C.sample_demographics(rng, dx)
        rale = C.reference_rale_total(rng, dx)
        rec = C.sample_clinical(rng, demo, dx, rale, 7.0)
        for k, v in rec.to_dict().items():
            stats[dx].setdefault(k, []).append(v)
        if dx != "normal":
            rale_vs_spo2.append((rale, rec.spo2_pct))
    med = {dx: {k: float(np.median(v)) for k, v in s.items()} for dx, s in stats.items()}
    assert med["normal"]["spo2_pct"] >= 96 and med["normal"]["crp_mg_l"] < 5
    assert med["covid19"]["lymphocytes_1e9_l"] < med["other_pneumonia"]["lymphocytes_1e9_l"] < 1.5
    assert med["covid19"]["d_dimer_mg_l_feu"] > med["other_pneumonia"]["d_dimer_mg_l_feu"] > 0.5
    assert med["other_pneumonia"]["crp_mg_l"] > med["covid19"]["crp_mg_l"] > 10
    assert med["other_pneumonia"]["temperature_c"] > med["covid19"]["temperature_c"]
    r = np.corrcoef(np.array(rale_vs_spo2).T)[0, 1]
    assert -0.6 < r < -0.2  # related to the image, but noisily (as P/F ratio is to RALE)


def test_older_patients_and_disease_carry_more_comorbidity() -> None:
    rng = np.random.default_rng(3)
    counts = {
        dx: np.mean([C.sample_demographics(rng, dx).n_comorbidities for _ in range(1500)])
        for dx in C.DIAGNOSES
    }
    assert counts["normal"] < counts["covid19"] < counts["other_pneumonia"]
    demos = [C.sample_demographics(rng, "normal") for _ in range(3000)]
    young = [d.has("hypertension") for d in demos if d.age < 40]
    old = [d.has("hypertension") for d in demos if d.age >= 70]
    assert np.mean(old) > np.mean(young) + 0.2


def test_risk_is_monotone_in_rale_and_spo2_deficit() -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        dx = ("covid19", "other_pneumonia")[int(rng.integers(2))]
        demo = C.sample_demographics(rng, dx)
        rec = C.sample_clinical(rng, demo, dx, 12, 5.0)
        by_rale = [C.intubation_probability_72h(demo, rec, r, dx) for r in range(0, 49, 4)]
        assert np.all(np.diff(by_rale) > 0)
        by_spo2 = [
            C.intubation_probability_72h(demo, dataclasses.replace(rec, spo2_pct=s), 12, dx)
            for s in range(96, 69, -2)
        ]
        assert np.all(np.diff(by_spo2) > 0)


def test_outcome_rates_per_diagnosis_within_target_bands(population: Population) -> None:
    rate = {dx: population.label[population.diagnosis == dx].mean() for dx in C.DIAGNOSES}
    assert 0.15 <= rate["covid19"] <= 0.25
    assert 0.08 <= rate["other_pneumonia"] <= 0.12
    assert rate["normal"] <= 0.01
    mean_p = {dx: population.prob[population.diagnosis == dx].mean() for dx in C.DIAGNOSES}
    assert mean_p["covid19"] > mean_p["other_pneumonia"] > 10 * mean_p["normal"]


def test_image_adds_to_clinical_auc(population: Population) -> None:
    """The acceptance criterion for the generative model: RALE carries outcome signal beyond the record."""
    train = population.patient % 2 == 0  # split by patient so studies of one patient stay together
    test = ~train
    y = population.label
    x_clin = _design(population.clinical, train)
    x_full = _design(np.column_stack([population.clinical, population.rale]), train)
    auc_clin = _auc(x_clin[test] @ _fit_logistic(x_clin[train], y[train]), y[test])
    auc_full = _auc(x_full[test] @ _fit_logistic(x_full[train], y[train]), y[test])
    assert auc_full >= 0.75
    assert auc_full - auc_clin >= 0.03, (auc_clin, auc_full)


def test_assign_outcomes_no_event_keeps_everything() -> None:
    out = C.assign_outcomes(np.random.default_rng(0), [0.0, 30.0, 100.0], [0.0, 0.0, 0.0])
    assert out == C.OutcomeDraw(event_time_h=None, labels=(0, 0, 0), n_studies_kept=3)
    empty = C.assign_outcomes(np.random.default_rng(0), [], [])
    assert empty.n_studies_kept == 0 and empty.labels == ()


def test_assign_outcomes_certain_event_truncates_and_labels() -> None:
    times = [0.0, 24.0, 48.0, 200.0, 300.0]
    for seed in range(200):
        out = C.assign_outcomes(np.random.default_rng(seed), times, [1.0, 0.0, 0.0, 0.0, 0.0])
        assert out.event_time_h is not None
        assert 0.0 < out.event_time_h <= 72.0
        kept = [t for t in times if t < out.event_time_h]
        assert out.n_studies_kept == len(kept) == len(out.labels)
        assert out.labels == tuple(int(0 < out.event_time_h - t <= 72) for t in kept)
        assert out.labels[0] == 1


def test_assign_outcomes_semantics_over_random_draws() -> None:
    rng = np.random.default_rng(9)
    for _ in range(500):
        n = int(rng.integers(1, 6))
        times = np.cumsum(rng.uniform(0, 80, n)).tolist()
        probs = rng.uniform(0, 0.6, n).tolist()
        out = C.assign_outcomes(rng, times, probs)
        assert len(out.labels) == out.n_studies_kept <= n
        if out.event_time_h is None:
            assert out.n_studies_kept == n and not any(out.labels)
            continue
        # every kept study precedes the event, every dropped one does not
        assert all(t < out.event_time_h for t in times[: out.n_studies_kept])
        assert all(t >= out.event_time_h for t in times[out.n_studies_kept :])
        assert out.labels == tuple(int(0 < out.event_time_h - t <= 72) for t in times[: out.n_studies_kept])
        assert out.labels[-1] == 1  # the study that fired, or a later one, is within 72 h of the event


def test_assign_outcomes_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        C.assign_outcomes(rng, [0.0, 10.0], [0.1])
    with pytest.raises(ValueError):
        C.assign_outcomes(rng, [10.0, 0.0], [0.1, 0.1])
    with pytest.raises(ValueError):
        C.assign_outcomes(rng, [0.0], [1.5])
    demo = C.sample_demographics(rng, "normal")
    with pytest.raises(ValueError):
        C.sample_clinical(rng, demo, "influenza", 0, 0.0)
    with pytest.raises(ValueError):
        C.sample_clinical(rng, demo, "covid19", 49, 0.0)


def test_risk_model_card_lists_every_coefficient() -> None:
    card = C.risk_model_card()
    for name, coef in C.RISK_COEFFICIENTS.items():
        assert f"`{name}`" in card and f"{coef:+.2f}" in card
    assert f"{C.RISK_INTERCEPT:+.2f}" in card
    assert set(C.RISK_COEFFICIENTS) == set(C.RISK_FEATURE_SCALING)
