"""Synthetic demographics, bedside/lab values and the 72-hour intubation outcome.

The prognosis model must be able to show that the image adds to the clinical record, so the
generative chain is explicit (see docs/synthetic-clinical.md):

    diagnosis -> demographics (age, sex, latent frailty -> comorbidities)
    RALE total (what the image shows) + frailty + age + noise -> latent physiological severity
    severity + diagnosis + comorbidities + measurement noise -> vitals and labs
    RALE total + vitals + labs + demographics + diagnosis -> logistic 72-h intubation risk

The RALE total enters twice: through the noisy severity that the vitals/labs only partly reveal,
and directly in the risk model, so a model that sees the image has information that the
clinical variables do not fully carry. All randomness comes from a passed Generator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Diagnosis = Literal["normal", "covid19", "other_pneumonia"]
DIAGNOSES: tuple[str, ...] = ("normal", "covid19", "other_pneumonia")

RALE_MAX = 48
OUTCOME_WINDOW_H = 72.0

COMORBIDITIES: tuple[str, ...] = (
    "hypertension",
    "diabetes",
    "obesity",
    "copd",
    "chronic_kidney_disease",
    "heart_failure",
    "immunosuppression",
    "current_smoker",
)

# Age at presentation: (mean, sd) of a normal truncated to 18-95. Hospital COVID-19 and
# pneumonia cohorts are older than the general imaging population.
_AGE_DIST: dict[str, tuple[float, float]] = {
    "normal": (48.0, 18.0),
    "covid19": (60.0, 16.0),
    "other_pneumonia": (66.0, 17.0),
}
_P_MALE: dict[str, float] = {"normal": 0.47, "covid19": 0.56, "other_pneumonia": 0.53}
# Pneumonia patients are frailer than their age alone would say (aspiration, nursing homes).
_FRAILTY_SHIFT: dict[str, float] = {"normal": 0.0, "covid19": 0.1, "other_pneumonia": 0.3}

# Comorbidity log-odds: (logit at age 60 / frailty 0 / female / normal diagnosis, per decade of age,
# per unit frailty, covid19 shift, other_pneumonia shift, male shift). Anchored to adult
# prevalences around age 60 (hypertension ~45 %, diabetes ~18 %, obesity ~33 %, ...).
_COMORBIDITY_LOGIT: dict[str, tuple[float, float, float, float, float, float]] = {
    "hypertension": (-0.20, 0.45, 0.30, 0.20, 0.20, 0.10),
    "diabetes": (-1.52, 0.20, 0.30, 0.45, 0.30, 0.15),
    "obesity": (-0.71, -0.15, 0.20, 0.50, 0.10, 0.00),
    "copd": (-2.59, 0.35, 0.40, 0.20, 0.90, 0.20),
    "chronic_kidney_disease": (-2.31, 0.50, 0.40, 0.30, 0.40, 0.10),
    "heart_failure": (-3.18, 0.60, 0.50, 0.20, 0.60, 0.20),
    "immunosuppression": (-3.48, 0.00, 0.30, 0.30, 0.90, 0.00),
    "current_smoker": (-1.90, -0.35, 0.10, -0.50, 0.50, 0.25),
}


@dataclass(frozen=True)
class Demographics:
    """Patient-level facts; ``frailty`` is latent (drives comorbidities and severity, never exported)."""

    age: int
    sex: Literal["M", "F"]
    comorbidities: tuple[str, ...]
    frailty: float

    @property
    def n_comorbidities(self) -> int:
        return len(self.comorbidities)

    def has(self, name: str) -> bool:
        return name in self.comorbidities

    def to_dict(self) -> dict[str, Any]:
        """Exportable view: latent fields stay inside the simulator."""
        return {"age": self.age, "sex": self.sex, "comorbidities": list(self.comorbidities)}


@dataclass(frozen=True)
class ClinicalRecord:
    """Vitals and labs at the time of one study, stored at the precision a lab would report."""

    spo2_pct: float
    resp_rate_per_min: float
    heart_rate_bpm: float
    temperature_c: float
    crp_mg_l: float
    lymphocytes_1e9_l: float
    d_dimer_mg_l_feu: float
    ldh_u_l: float
    days_since_onset: float

    def to_dict(self) -> dict[str, float | int]:
        """Reported values: integers for SpO2/RR/HR/LDH, 1 dp for temperature/CRP, 2 dp for counts."""
        return {
            "spo2_pct": round(self.spo2_pct),
            "resp_rate_per_min": round(self.resp_rate_per_min),
            "heart_rate_bpm": round(self.heart_rate_bpm),
            "temperature_c": round(self.temperature_c, 1),
            "crp_mg_l": round(self.crp_mg_l, 1),
            "lymphocytes_1e9_l": round(self.lymphocytes_1e9_l, 2),
            "d_dimer_mg_l_feu": round(self.d_dimer_mg_l_feu, 2),
            "ldh_u_l": round(self.ldh_u_l),
            "days_since_onset": round(self.days_since_onset, 1),
        }


def _check_diagnosis(diagnosis: str) -> None:
    if diagnosis not in DIAGNOSES:
        raise ValueError(f"unknown diagnosis {diagnosis!r}; expected one of {DIAGNOSES}")


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def sample_demographics(rng: np.random.Generator, diagnosis: str) -> Demographics:
    """Draw age/sex/frailty, then comorbidities from age- and frailty-dependent log-odds."""
    _check_diagnosis(diagnosis)
    mean, sd = _AGE_DIST[diagnosis]
    age = float(rng.normal(mean, sd))
    for _ in range(20):  # rejection keeps the shape of the truncated normal; clip is the fallback
        if 18.0 <= age < 96.0:
            break
        age = float(rng.normal(mean, sd))
    age_i = int(np.clip(math.floor(age), 18, 95))
    sex: Literal["M", "F"] = "M" if rng.random() < _P_MALE[diagnosis] else "F"
    frailty = 0.6 * (age_i - 60) / 15.0 + _FRAILTY_SHIFT[diagnosis] + float(rng.normal(0.0, 0.8))
    decades = (age_i - 60) / 10.0
    male = 1.0 if sex == "M" else 0.0
    draws = rng.random(len(COMORBIDITIES))
    chosen = []
    for u, name in zip(draws, COMORBIDITIES, strict=True):
        base, per_decade, per_frail, covid, pneu, male_shift = _COMORBIDITY_LOGIT[name]
        logit = base + per_decade * decades + per_frail * frailty + male_shift * male
        logit += covid if diagnosis == "covid19" else pneu if diagnosis == "other_pneumonia" else 0.0
        if u < _sigmoid(logit):
            chosen.append(name)
    return Demographics(age=age_i, sex=sex, comorbidities=tuple(chosen), frailty=round(frailty, 4))


def severity_from_rale(rale_total: float, demo: Demographics, diagnosis: str, noise: float) -> float:
    """Latent physiological severity (~0 healthy, ~3 critical): mostly the image, partly the host.

    ``noise`` is a standard-normal draw; it is the part of severity the image does not show (and,
    via measurement noise, the vitals/labs show only in part).
    """
    if diagnosis == "normal":
        return max(0.0, 0.12 * noise)
    s = 0.6 * (float(rale_total) / 12.0) + 0.08 * (demo.age - 60) / 10.0 + 0.15 * demo.frailty
    return max(0.0, s + 0.6 * noise)


def sample_clinical(
    rng: np.random.Generator,
    demo: Demographics,
    diagnosis: str,
    rale_total: float,
    days_since_onset: float,
) -> ClinicalRecord:
    """Vitals/labs for one study from diagnosis, latent severity, host factors and measurement noise."""
    _check_diagnosis(diagnosis)
    if not 0 <= rale_total <= RALE_MAX:
        raise ValueError(f"rale_total must be in [0, {RALE_MAX}], got {rale_total}")
    z = rng.standard_normal(9)
    sev = severity_from_rale(rale_total, demo, diagnosis, float(z[0]))
    covid = diagnosis == "covid19"
    normal = diagnosis == "normal"
    copd, obese = demo.has("copd"), demo.has("obesity")
    hf, ckd = demo.has("heart_failure"), demo.has("chronic_kidney_disease")
    immuno, smoker = demo.has("immunosuppression"), demo.has("current_smoker")
    days = max(0.0, float(days_since_onset))
    age = demo.age

    # Temperature first: fever drives heart and respiratory rate. COVID fever wanes after ~day 7;
    # bacterial pneumonia runs hotter; the very old mount a blunted fever.
    if normal:
        temp = 36.8 + 0.3 * z[1]
    elif covid:
        temp = 37.5 + 0.25 * sev - 0.05 * max(0.0, days - 7.0) + 0.55 * z[1]
    else:
        temp = 38.1 + 0.30 * sev + 0.65 * z[1]
    if age >= 75 and not normal:
        temp -= 0.3
    temp = float(np.clip(temp, 35.0, 41.5))
    fever = max(0.0, temp - 37.0)

    spo2_base = 97.8 if normal else 97.0 if covid else 96.5
    spo2 = (
        spo2_base
        - 3.2 * sev
        - 0.6 * sev * sev
        - 2.0 * copd
        - 0.8 * obese
        - 1.0 * hf
        - 0.04 * max(0.0, age - 50.0)
        + 1.3 * z[2]
    )
    spo2 = float(np.clip(round(spo2), 70, 100))

    rr = 15.5 + 3.5 * sev + 1.5 * copd + 1.2 * fever + 2.2 * z[3]
    rr = float(np.clip(round(rr), 8, 50))

    hr = 74.0 + 7.0 * sev + 9.0 * fever + 4.0 * hf + 10.0 * z[4]
    hr = float(np.clip(round(hr), 40, 170))

    # Labs are log-normal around a diagnosis-specific median that rises (falls, for lymphocytes)
    # with severity. COVID: lymphopenia deepening over the first ~10 days and higher D-dimer;
    # bacterial pneumonia: higher CRP.
    crp_med = 2.5 if normal else 35.0 if covid else 80.0
    crp_sd = 0.9 if normal else 0.6
    crp = math.exp(math.log(crp_med) + 0.5 * sev + 0.15 * (smoker + obese) + crp_sd * z[5])
    crp = float(np.clip(round(crp, 1), 0.3, 450.0))

    lym_med = 1.9 if normal else 1.05 if covid else 1.25
    lym_log = (
        math.log(lym_med)
        - 0.22 * sev
        - 0.003 * (age - 60)
        - 0.35 * immuno
        - 0.1 * demo.frailty
        - (0.02 * min(days, 10.0) if covid else 0.0)
        + 0.3 * z[6]
    )
    lym = float(np.clip(round(math.exp(lym_log), 2), 0.1, 5.0))

    dd_med = 0.35 if normal else 0.9 if covid else 0.7
    dd_log = math.log(dd_med) + 0.45 * sev + 0.012 * (age - 60) + 0.25 * ckd + 0.2 * hf + 0.55 * z[7]
    dd = float(np.clip(round(math.exp(dd_log), 2), 0.19, 20.0))  # assay limits of detection/report

    ldh_med = 185.0 if normal else 270.0 if covid else 240.0
    ldh = math.exp(math.log(ldh_med) + 0.22 * sev + 0.1 * ckd + 0.18 * z[8])
    ldh = float(np.clip(round(ldh), 100, 2500))

    return ClinicalRecord(
        spo2_pct=spo2,
        resp_rate_per_min=rr,
        heart_rate_bpm=hr,
        temperature_c=round(temp, 1),
        crp_mg_l=crp,
        lymphocytes_1e9_l=lym,
        d_dimer_mg_l_feu=dd,
        ldh_u_l=ldh,
        days_since_onset=round(days, 1),
    )


# ---------------------------------------------------------------------------------------------
# Risk model. Each feature is standardised with a fixed (centre, scale) so coefficients are
# comparable "per typical spread"; lab values enter on the log scale.
RISK_FEATURE_SCALING: dict[str, tuple[float, float]] = {
    "rale_total": (12.0, 10.0),
    "spo2_deficit": (2.0, 4.0),  # percentage points below 96 %, floored at 0
    "resp_rate": (20.0, 5.0),
    "age": (60.0, 15.0),
    "log_crp": (math.log(50.0), 1.2),
    "log_ldh": (math.log(250.0), 0.35),
    "log_lymphocytes": (math.log(1.2), 0.45),
    "log_d_dimer": (math.log(0.8), 0.8),
    "comorbidity_count": (1.5, 1.2),
    "covid19": (0.0, 1.0),
    "other_pneumonia": (0.0, 1.0),
}
RISK_COEFFICIENTS: dict[str, float] = {
    "rale_total": 2.30,
    "spo2_deficit": 0.40,
    "resp_rate": 0.25,
    "age": 0.35,
    "log_crp": 0.15,
    "log_ldh": 0.15,
    "log_lymphocytes": -0.25,
    "log_d_dimer": 0.20,
    "comorbidity_count": 0.25,
    "covid19": 0.30,
    "other_pneumonia": -0.10,
}
RISK_INTERCEPT: float = -4.30


def risk_features(
    demo: Demographics, clinical: ClinicalRecord, rale_total: float, diagnosis: str
) -> dict[str, float]:
    """Standardised risk-model inputs, exposed so tests and docs see exactly what the model sees."""
    _check_diagnosis(diagnosis)
    raw = {
        "rale_total": float(rale_total),
        "spo2_deficit": max(0.0, 96.0 - clinical.spo2_pct),
        "resp_rate": clinical.resp_rate_per_min,
        "age": float(demo.age),
        "log_crp": math.log(clinical.crp_mg_l),
        "log_ldh": math.log(clinical.ldh_u_l),
        "log_lymphocytes": math.log(clinical.lymphocytes_1e9_l),
        "log_d_dimer": math.log(clinical.d_dimer_mg_l_feu),
        "comorbidity_count": float(demo.n_comorbidities),
        "covid19": 1.0 if diagnosis == "covid19" else 0.0,
        "other_pneumonia": 1.0 if diagnosis == "other_pneumonia" else 0.0,
    }
    return {k: (v - RISK_FEATURE_SCALING[k][0]) / RISK_FEATURE_SCALING[k][1] for k, v in raw.items()}


def intubation_probability_72h(
    demo: Demographics, clinical: ClinicalRecord, rale_total: float, diagnosis: str
) -> float:
    """Probability that the patient is intubated within 72 h of this study."""
    feats = risk_features(demo, clinical, rale_total, diagnosis)
    eta = RISK_INTERCEPT + sum(RISK_COEFFICIENTS[k] * v for k, v in feats.items())
    return _sigmoid(eta)


@dataclass(frozen=True)
class OutcomeDraw:
    """One patient's outcome: event time (h, same clock as the studies) and labels of kept studies."""

    event_time_h: float | None
    labels: tuple[int, ...]
    n_studies_kept: int


def assign_outcomes(
    rng: np.random.Generator, study_times_h: Sequence[float], probabilities: Sequence[float]
) -> OutcomeDraw:
    """Walk the studies in time order; the first study whose draw fires schedules the intubation.

    Once an event is scheduled no further draws are made (the patient is already on that
    trajectory), and studies at or after the event are never acquired (intubated patients leave the
    cohort), so the corpus only holds studies that precede the event.
    """
    times = [float(t) for t in study_times_h]
    probs = [float(p) for p in probabilities]
    if len(times) != len(probs):
        raise ValueError("study_times_h and probabilities must have the same length")
    if any(b < a for a, b in itertools.pairwise(times)):
        raise ValueError("study_times_h must be non-decreasing")
    if any(not 0.0 <= p <= 1.0 for p in probs):
        raise ValueError("probabilities must lie in [0, 1]")
    event: float | None = None
    kept = 0
    for t, p in zip(times, probs, strict=True):
        if event is not None and event <= t:
            break
        kept += 1
        if event is None and rng.random() < p:
            event = t + (OUTCOME_WINDOW_H - float(rng.uniform(0.0, OUTCOME_WINDOW_H)))  # (0, 72]
    labels = tuple(int(event is not None and 0.0 < event - t <= OUTCOME_WINDOW_H) for t in times[:kept])
    return OutcomeDraw(event_time_h=event, labels=labels, n_studies_kept=kept)


def reference_rale_total(rng: np.random.Generator, diagnosis: str) -> int:
    """RALE total of the calibration reference mix (the population the risk model is tuned on).

    Normal 0; disease 2-40, right-skewed: COVID-19 mean ~15 (bilateral), other pneumonia
    mean ~11 (often lobar/unilateral).
    """
    _check_diagnosis(diagnosis)
    if diagnosis == "normal":
        return 0
    a, b = (1.6, 3.0) if diagnosis == "covid19" else (1.3, 4.0)
    return round(2.0 + 38.0 * float(rng.beta(a, b)))


def risk_model_card() -> str:
    """Markdown description of the risk model, generated from the constants so docs cannot drift."""
    rows = []
    for name, coef in RISK_COEFFICIENTS.items():
        centre, scale = RISK_FEATURE_SCALING[name]
        centre_s = f"ln {math.exp(centre):g}" if name.startswith("log_") else f"{centre:g}"
        rows.append(f"| `{name}` | {_FEATURE_DOC[name]} | {centre_s} | {scale:g} | {coef:+.2f} |")
    table = "\n".join(rows)
    return f"""### 72-hour intubation risk model

`p = sigmoid({RISK_INTERCEPT:+.2f} + sum_k beta_k * (x_k - centre_k) / scale_k)`

| feature | definition | centre | scale | beta |
|---|---|---|---|---|
{table}

Intercept: {RISK_INTERCEPT:+.2f} (normal diagnosis, every standardised feature at 0).

**Where the image signal enters.** `rale_total` is the RALE score the renderer draws into the
radiograph. It enters the risk directly (the largest coefficient) and indirectly through a latent
physiological severity that the vitals and labs measure only noisily; the latent severity also has
a component the image does not show. A model given the clinical variables alone therefore cannot
recover the RALE contribution, and a model that also sees the image can do better.
"""


_FEATURE_DOC: dict[str, str] = {
    "rale_total": "RALE total, 0-48 (image)",
    "spo2_deficit": "max(0, 96 - SpO2 %)",
    "resp_rate": "respiratory rate, /min",
    "age": "age, years",
    "log_crp": "ln CRP, mg/L",
    "log_ldh": "ln LDH, U/L",
    "log_lymphocytes": "ln lymphocytes, 10^9/L",
    "log_d_dimer": "ln D-dimer, mg/L FEU",
    "comorbidity_count": "number of listed comorbidities, 0-8",
    "covid19": "1 if COVID-19",
    "other_pneumonia": "1 if other pneumonia",
}
