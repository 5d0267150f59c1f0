"""Generate a synthetic corpus: plan patients cheaply in order, render studies in parallel.

This module writes the corpus; reading it is the corpus contract (``cxrmesh.contracts.corpus``).

Planning (demographics, disease course, RALE truth, clinical record, outcome, site, projection,
UIDs) happens in the parent process, patient by patient, from ``SeedSequence([seed, patient])``;
rendering each study uses its own ``SeedSequence([seed, patient, study, 1])``. So the corpus does
not depend on the number of workers, and a corpus of N studies is a prefix of one of 2N.

Layout of ``out/``::

    corpus.json                  what was generated, with which arguments, counts per split
    manifest.jsonl               one row per study, keyed by SOP Instance UID (see docs/synthetic-data.md)
    images/<uid>.png             training copy: 16-bit, MODEL_SIZE^2, display values (1 = white)
    truth/<uid>_lungs.png        0 background, 1 right lung, 2 left lung (model frame)
    truth/<uid>_regions.png      0 background, 1 RU, 2 RL, 3 LU, 4 LL (cxrmesh.analysis.regions)
    truth/<uid>_opacity.png      0 clear, else RALE density (1-3) of the opacity at that pixel
    dicom/<site>/<patient>/<study>.dcm   full-resolution CR/DX with fake PHI (unless --no-dicom)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from cxrmesh.analysis.pixels import Letterbox, PixelModule, letterbox, letterbox_labels, to_display
from cxrmesh.analysis.regions import split_regions
from cxrmesh.contracts.corpus import MANIFEST_FILE
from cxrmesh.contracts.preprocessing import MODEL_SIZE, TRAINING_COPY_MAX
from cxrmesh.synth import clinical
from cxrmesh.synth.anatomy import PatientAnatomy, StudyPose, lung_geometry, sample_anatomy, sample_pose
from cxrmesh.synth.atlas import load_atlas
from cxrmesh.synth.disease import (
    RESOLVED_SEVERITY,
    Rale,
    conform_opacity,
    opacity_fractions,
    rale_total,
    sample_focus,
    sample_rale,
)
from cxrmesh.synth.render import WORK_LONG_SIDE, Detector, sample_detector
from cxrmesh.synth.sites import SITE_BY_NAME, SITES, Site

GENERATOR_VERSION = "2"  # 2: resolved patients are not imaged again
SPLITS = (("train", 0.70), ("val", 0.85), ("test", 1.0))
EPOCH = datetime(2020, 3, 2, 7, 0, 0)  # first admission day of the synthetic cohort
SITE_WEIGHTS = (0.36, 0.34, 0.30)


@dataclass(frozen=True)
class StudyPlan:
    """Everything decided about one study before any pixel is drawn."""

    patient_index: int
    study_index: int
    hours: float  # since the patient's first study
    severity: float
    rale: Rale
    view: str
    clinical: clinical.ClinicalRecord
    days_since_onset: float
    outcome: int
    event_hours_after: float | None
    detector: Detector
    pose: StudyPose
    transfer_syntax: str


@dataclass(frozen=True)
class PatientPlan:
    index: int
    site: str
    diagnosis: str
    demographics: clinical.Demographics
    anatomy: PatientAnatomy
    focus: dict
    split: str
    admission: datetime
    studies: tuple[StudyPlan, ...] = field(default=())


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _n_studies(rng: np.random.Generator, diagnosis: str) -> int:
    if diagnosis == "normal":
        return 1 if rng.random() < 0.9 else 2
    return int(rng.choice([1, 2, 3, 4], p=[0.45, 0.25, 0.18, 0.12]))


def plan_patient(seed: int, index: int) -> PatientPlan:
    """Plan one patient: who they are, their disease course, their studies and outcome."""
    rng = _rng(seed, index)
    site = SITES[int(rng.choice(len(SITES), p=SITE_WEIGHTS))]
    diagnosis = str(rng.choice(clinical.DIAGNOSES, p=site.diagnosis_mix))
    demo = clinical.sample_demographics(rng, diagnosis)
    atlas = load_atlas()
    anatomy = sample_anatomy(rng, atlas, demo.sex)
    focus = sample_focus(rng)
    u = float(_rng(seed, index, 99).random())
    split = next(name for name, cut in SPLITS if u < cut)
    admission = EPOCH + timedelta(days=int(rng.integers(0, 540)), minutes=int(rng.integers(0, 14 * 60)))

    n = _n_studies(rng, diagnosis)
    onset = 0.0 if diagnosis == "normal" else float(rng.uniform(2, 10))
    if diagnosis == "normal":
        s0, slope = 0.0, 0.0
    else:
        s0 = float(rng.beta(2.0, 2.2) if diagnosis == "covid19" else rng.beta(2.0, 2.6))
        slope = float(rng.uniform(0.04, 0.14)) * (1 if rng.random() < 0.55 else -1)  # per day
    hours = [0.0]
    for _ in range(n - 1):
        hours.append(hours[-1] + float(rng.uniform(18, 72)))
    drafts = []
    for k, h in enumerate(hours):
        sev = float(np.clip(s0 + slope * h / 24.0, 0.0, 1.0))
        if diagnosis != "normal" and sev <= RESOLVED_SEVERITY:
            if k:
                break  # opacities cleared: a resolved patient is not imaged again
            sev = RESOLVED_SEVERITY + 0.01  # an admission film of a sick patient shows the disease
        rale = sample_rale(rng, diagnosis, sev, focus)
        total = rale_total(rale)
        rec = clinical.sample_clinical(rng, demo, diagnosis, total, onset + h / 24.0)
        p = clinical.intubation_probability_72h(demo, rec, total, diagnosis)
        p_ap = float(np.clip(site.ap_fraction + 0.5 * sev, 0.0, 0.95))
        view = "AP" if rng.random() < p_ap else "PA"
        drafts.append((k, h, sev, rale, rec, p, view))
    draw = clinical.assign_outcomes(rng, hours[: len(drafts)], [d[5] for d in drafts])
    studies = []
    for (k, h, sev, rale, rec, _p, view), label in zip(
        drafts[: draw.n_studies_kept], draw.labels, strict=True
    ):
        srng = _rng(seed, index, k, 2)
        pose = sample_pose(srng, view)
        det = sample_detector(srng, site, lung_geometry(atlas, anatomy, pose), pose)
        ts = JPEG2000Lossless if srng.random() < site.compressed_fraction else ExplicitVRLittleEndian
        after = None if draw.event_time_h is None else round(draw.event_time_h - h, 2)
        studies.append(
            StudyPlan(
                index,
                k,
                round(h, 2),
                sev,
                rale,
                view,
                rec,
                onset + h / 24.0,
                int(label),
                after,
                det,
                pose,
                str(ts),
            )
        )
    return PatientPlan(index, site.name, diagnosis, demo, anatomy, focus, split, admission, tuple(studies))


def plan_corpus(seed: int, n_studies: int) -> list[PatientPlan]:
    """Patients in order until ``n_studies`` studies; the last patient is cut to fit exactly."""
    if n_studies < 1:
        raise ValueError(f"--n must be at least 1, got {n_studies}")
    plans: list[PatientPlan] = []
    total = 0
    index = 0
    while total < n_studies:
        plan = plan_patient(seed, index)
        take = min(len(plan.studies), n_studies - total)
        if take:
            plans.append(dataclasses.replace(plan, studies=plan.studies[:take]))
            total += take
        index += 1
    return plans


@dataclass(frozen=True)
class Task:
    seed: int
    patient: PatientPlan
    study: StudyPlan
    out: Path
    write_dicom: bool


def uids(seed: int, patient: int, study: int) -> dict[str, str]:
    from cxrmesh.synth.dicom import deterministic_uid

    return {
        kind: deterministic_uid("cxrmesh-synth", seed, patient, study, kind)
        for kind in ("study", "series", "sop")
    }


def pixel_module(rng: np.random.Generator, site: Site) -> PixelModule:
    """Window and rescale as the site's processing writes them (values rounded to fit DS)."""
    slope, icpt = site.rescale
    maxval = 2**site.bits_stored - 1
    lo, hi = icpt, maxval * slope + icpt
    centre = lo + (hi - lo) * float(rng.uniform(0.47, 0.53))
    width = (hi - lo) * 0.8 * float(rng.uniform(0.95, 1.1))
    return PixelModule(
        photometric=site.photometric,
        bits_stored=site.bits_stored,
        window_center=round(centre, 2),
        window_width=round(width, 2),
        rescale_slope=slope,
        rescale_intercept=icpt,
        voi_lut_function=site.voi_function,
    )


def to_stored(display: np.ndarray, pm: PixelModule) -> np.ndarray:
    """Display values [0, 1] -> stored values, inverting DICOM's LINEAR window (and MONOCHROME1).

    PS3.3 C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5) over the output range, so
    x = (v - 0.5) * (w - 1) + c - 0.5. A SIGMOID site is stored with the same values and shows
    them through its sigmoid, as the real device's would.
    """
    value = 1.0 - display if pm.photometric == "MONOCHROME1" else display
    out_units = (value - 0.5) * (pm.window_width - 1.0) + pm.window_center - 0.5
    stored = (out_units - pm.rescale_intercept) / pm.rescale_slope
    return np.clip(np.rint(stored), 0, 2**pm.bits_stored - 1).astype(np.uint16)


def render_task(task: Task) -> dict[str, Any]:
    """Render one study and write its files; returns its manifest row."""
    from cxrmesh.synth.render import render_study

    patient, study = task.patient, task.study
    site = SITE_BY_NAME[patient.site]
    atlas = load_atlas()
    rng = _rng(task.seed, patient.index, study.study_index, 1)
    geo = lung_geometry(atlas, patient.anatomy, study.pose)
    det = study.detector
    rendered = render_study(
        rng, geo, patient.anatomy, study.pose, det, site, study.rale, patient.diagnosis, patient.focus
    )
    pm = pixel_module(rng, site)
    ids = uids(task.seed, patient.index, study.study_index)
    uid = ids["sop"]

    # training copy: the working-grid detector image through the shared preprocessing contract
    stored_work = to_stored(rendered.display, pm)
    display = to_display(stored_work, pm)
    model = letterbox(display, MODEL_SIZE)
    lungs = letterbox_labels(rendered.lungs, MODEL_SIZE)
    opacity = letterbox_labels(rendered.opacity, MODEL_SIZE)
    wrows, wcols = rendered.lungs.shape
    lb_work = Letterbox(wrows, wcols, MODEL_SIZE)
    carina_m = lb_work.to_model(np.array(rendered.carina))
    hilum_m = lb_work.to_model(np.array(rendered.left_hilum))
    regions = split_regions(lungs, (float(hilum_m[0]), float(hilum_m[1])))
    opacity = conform_opacity(opacity, regions, study.rale)
    out = task.out
    _save_png(out / "images" / f"{uid}.png", np.rint(model * TRAINING_COPY_MAX).astype(np.uint16))
    _save_png(out / "truth" / f"{uid}_lungs.png", lungs)
    _save_png(out / "truth" / f"{uid}_regions.png", regions)
    _save_png(out / "truth" / f"{uid}_opacity.png", opacity)

    def full(xy: tuple[float, float]) -> list[float]:
        return [
            round((xy[0] + 0.5) * det.cols / wcols - 0.5, 2),
            round((xy[1] + 0.5) * det.rows / wrows - 0.5, 2),
        ]

    dicom_rel = None
    if task.write_dicom:
        dicom_rel = f"dicom/{patient.site}/{patient.index:06d}/{study.study_index}.dcm"
        _write_dicom(task, rendered.display, rng, pm, ids, out / dicom_rel)

    lb_full = Letterbox(det.rows, det.cols, MODEL_SIZE)
    return {
        "sop_instance_uid": uid,
        "study_instance_uid": ids["study"],
        "series_instance_uid": ids["series"],
        "patient_key": f"P{patient.index:06d}",
        "study_index": study.study_index,
        "split": patient.split,
        "site": site.name,
        "modality": site.modality,
        "view": study.view,
        "photometric": site.photometric,
        "bits_stored": site.bits_stored,
        "rows": det.rows,
        "cols": det.cols,
        "pixel_spacing_mm": det.spacing_mm,
        "transfer_syntax": study.transfer_syntax if task.write_dicom else None,
        "study_datetime": (patient.admission + timedelta(hours=study.hours)).isoformat(),
        "hours_since_first_study": study.hours,
        "diagnosis": patient.diagnosis,
        "severity": round(study.severity, 4),
        "rale": {k: {"extent": q.extent, "density": q.density} for k, q in study.rale.items()},
        "rale_total": rale_total(study.rale),
        "opacity_fraction": {k: round(v, 4) for k, v in opacity_fractions(regions, opacity).items()},
        "landmarks": {
            "carina": {"pixel": full(rendered.carina), "model": [round(float(v), 2) for v in carina_m]},
            "left_hilum": {
                "pixel": full(rendered.left_hilum),
                "model": [round(float(v), 2) for v in hilum_m],
            },
        },
        "letterbox": {"scale": round(lb_full.scale, 8), "offset_rc": list(lb_full.offset)},
        "demographics": patient.demographics.to_dict(),
        "clinical": study.clinical.to_dict(),
        "outcome": {"intubation_72h": study.outcome, "event_hours_after_study": study.event_hours_after},
        "paths": {
            "image": f"images/{uid}.png",
            "lungs": f"truth/{uid}_lungs.png",
            "regions": f"truth/{uid}_regions.png",
            "opacity": f"truth/{uid}_opacity.png",
            "dicom": dicom_rel,
        },
    }


def _write_dicom(
    task: Task, display_work: np.ndarray, rng: np.random.Generator, pm: PixelModule, ids: dict, path: Path
) -> None:
    """Full-resolution detector image: the working grid upsampled plus full-resolution noise."""
    from cxrmesh.synth.dicom import RadiographMeta, write_radiograph
    from cxrmesh.synth.phi import make_patient_phi, make_study_phi

    patient, study = task.patient, task.study
    site = SITE_BY_NAME[patient.site]
    det = study.detector
    big = Image.fromarray(np.ascontiguousarray(display_work, dtype=np.float32)).resize(
        (det.cols, det.rows), Image.Resampling.BICUBIC
    )
    full = np.asarray(big, dtype=np.float32)
    grain = rng.standard_normal(full.shape, dtype=np.float32)
    full = np.clip(full + 0.006 * site.noise * grain, 0.0, 1.0)
    stored = to_stored(full, pm)
    when = patient.admission + timedelta(hours=study.hours)
    phi_seed = int.from_bytes(hashlib.sha256(f"{task.seed}:{patient.index}".encode()).digest()[:8], "big")
    meta = RadiographMeta(
        sop_instance_uid=ids["sop"],
        study_instance_uid=ids["study"],
        series_instance_uid=ids["series"],
        study_datetime=when,
        series_number=1,
        instance_number=1,
        study_description=f"XR CHEST {'1 VIEW PORTABLE' if study.view == 'AP' else 'PA'}",
        view_position=study.view,
        pixel=pm,
        pixel_spacing_mm=(det.spacing_mm, det.spacing_mm),
        kvp=float(round(rng.uniform(85, 95) if study.view == "AP" else rng.uniform(110, 125))),
        exposure_mas=float(round(rng.uniform(1.6, 4.0), 1)),
        sid_mm=1000.0 if study.view == "AP" else 1800.0,
        patient_age_years=patient.demographics.age,
        patient=make_patient_phi(
            phi_seed, patient.demographics.sex, patient.demographics.age, when.date(), site.name
        ),
        study=make_study_phi(phi_seed + study.study_index + 1, site.name),
        site=site,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_radiograph(path, stored, meta, study.transfer_syntax)


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"PNG truth and images are uint8 or uint16, got {arr.dtype}")
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG", compress_level=1)


def generate(
    out: Path,
    n: int,
    seed: int,
    write_dicom: bool = True,
    workers: int | None = None,
    progress: Callable[[Iterator[dict]], Iterator[dict]] | None = None,
) -> dict[str, Any]:
    """Generate the corpus into ``out`` and return the summary also written to corpus.json."""
    if seed < 0:
        raise ValueError(f"--seed must be non-negative, got {seed}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output directory {out} is not empty; choose a new --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(seed, n)
    tasks = [Task(seed, p, s, out, write_dicom) for p in plans for s in p.studies]
    workers = workers or min(len(tasks), os.cpu_count() or 1)
    rows: list[dict] = []
    if workers <= 1:
        results: Iterator[dict] = map(render_task, tasks)
        for row in progress(results) if progress else results:
            rows.append(row)
    else:
        ctx = mp.get_context("forkserver")
        with ctx.Pool(workers) as pool:
            results = pool.imap(render_task, tasks, chunksize=2)
            for row in progress(results) if progress else results:
                rows.append(row)
    with open(out / MANIFEST_FILE, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    summary = {
        "generator": "cxrmesh-synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_studies": len(rows),
        "n_patients": len(plans),
        "dicom": write_dicom,
        "model_size": MODEL_SIZE,
        "work_long_side": WORK_LONG_SIDE,
        "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
        "diagnoses": dict(sorted(Counter(r["diagnosis"] for r in rows).items())),
        "sites": dict(sorted(Counter(r["site"] for r in rows).items())),
        "intubation_72h": sum(r["outcome"]["intubation_72h"] for r in rows),
        "atlas_shapes": len(load_atlas()),
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary
