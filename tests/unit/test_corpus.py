"""The generated corpus: truth consistency, DICOM read-back, PHI, splits, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxrmesh.analysis.pixels import letterbox, to_display
from cxrmesh.analysis.regions import REGION_KEYS, Lung, Region, landmark_problems, split_regions
from cxrmesh.contracts.corpus import read_manifest
from cxrmesh.contracts.preprocessing import MODEL_SIZE, TRAINING_COPY_MAX
from cxrmesh.synth.corpus import generate, plan_corpus
from cxrmesh.synth.disease import extent_from_fraction, rale_total

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def _png(corpus: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(corpus / rel))


def test_layout_and_counts(corpus: Path, manifest: list[dict]) -> None:
    assert len(manifest) == 18
    assert len({r["sop_instance_uid"] for r in manifest}) == 18
    for row in manifest:
        for rel in row["paths"].values():
            assert (corpus / rel).is_file(), rel
        img = _png(corpus, row["paths"]["image"])
        assert img.shape == (MODEL_SIZE, MODEL_SIZE) and img.dtype == np.uint16
        assert 2000 <= max(row["rows"], row["cols"]) <= 3000 and min(row["rows"], row["cols"]) >= 2000
        assert 0.139 <= row["pixel_spacing_mm"] <= 0.2
        assert 10 <= row["bits_stored"] <= 16


def test_masks_are_two_disjoint_lungs_of_plausible_size(corpus: Path, manifest: list[dict]) -> None:
    for row in manifest:
        lungs = _png(corpus, row["paths"]["lungs"])
        assert set(np.unique(lungs)) == {Lung.BACKGROUND, Lung.RIGHT, Lung.LEFT}
        right, left = lungs == Lung.RIGHT, lungs == Lung.LEFT
        assert not (right & left).any()
        cols = np.arange(MODEL_SIZE)
        # patient's right lung is on the image left
        assert cols[right.any(axis=0)].mean() < cols[left.any(axis=0)].mean()
        frac = (right | left).mean()
        assert 0.08 < frac < 0.6, frac
        assert 0.5 < right.sum() / left.sum() < 2.0


def test_landmarks_lie_between_the_lungs(corpus: Path, manifest: list[dict]) -> None:
    for row in manifest:
        lungs = _png(corpus, row["paths"]["lungs"])
        carina = row["landmarks"]["carina"]["model"]
        hilum = row["landmarks"]["left_hilum"]["model"]
        assert landmark_problems(lungs, carina, hilum) == [], row["sop_instance_uid"]
        # the carina sits in the mediastinum, not inside a lung field
        assert lungs[round(carina[1]), round(carina[0])] == Lung.BACKGROUND


def test_region_map_follows_the_landmarks(corpus: Path, manifest: list[dict]) -> None:
    for row in manifest:
        lungs = _png(corpus, row["paths"]["lungs"])
        regions = _png(corpus, row["paths"]["regions"])
        expected = split_regions(lungs, row["landmarks"]["left_hilum"]["model"])
        assert (regions == expected).all()
        for region in REGION_KEYS:
            assert (regions == region).sum() > 0, f"empty region {region.name}"


def test_rale_truth_matches_rendered_opacity(corpus: Path, manifest: list[dict]) -> None:
    checked = 0
    for row in manifest:
        regions = _png(corpus, row["paths"]["regions"])
        opacity = _png(corpus, row["paths"]["opacity"])
        assert (opacity[regions == Region.BACKGROUND] == 0).all()
        for region, key in REGION_KEYS.items():
            truth = row["rale"][key]
            inside = regions == region
            measured = float((opacity[inside] > 0).mean())
            assert extent_from_fraction(measured) == truth["extent"], (key, measured, truth)
            assert row["opacity_fraction"][key] == pytest.approx(measured, abs=1e-4)
            levels = set(np.unique(opacity[inside])) - {0}
            assert levels == ({truth["density"]} if truth["extent"] else set()), (key, levels, truth)
            checked += truth["extent"] > 0
        total = sum(q["extent"] * q["density"] for q in row["rale"].values())
        assert row["rale_total"] == total and 0 <= total <= 48
        if row["diagnosis"] == "normal":
            assert total == 0
    assert checked > 5, "the fixture corpus should contain opacified quadrants"


def test_opacities_are_drawn_into_the_image(corpus: Path, manifest: list[dict]) -> None:
    """Opacified lung is brighter than clear lung of the same lung, for moderate/dense opacity."""
    diffs = []
    for row in manifest:
        img = _png(corpus, row["paths"]["image"]).astype(np.float64) / TRAINING_COPY_MAX
        lungs = _png(corpus, row["paths"]["lungs"])
        opacity = _png(corpus, row["paths"]["opacity"])
        for lung in (Lung.RIGHT, Lung.LEFT):
            op = (lungs == lung) & (opacity >= 2)
            clear = (lungs == lung) & (opacity == 0)
            if op.sum() > 200 and clear.sum() > 200:
                diffs.append(img[op].mean() - img[clear].mean())
    assert len(diffs) >= 3
    assert np.mean(diffs) > 0.05 and np.mean(np.array(diffs) > 0) >= 0.8, diffs


def test_dicom_reads_back_and_maps_to_the_training_copy(corpus: Path, manifest: list[dict]) -> None:
    syntaxes = set()
    for row in manifest:
        ds = pydicom.dcmread(corpus / row["paths"]["dicom"])
        assert ds.SOPClassUID == (CR if row["modality"] == "CR" else DX)
        assert ds.SOPInstanceUID == row["sop_instance_uid"]
        assert ds.StudyInstanceUID == row["study_instance_uid"]
        assert ds.file_meta.TransferSyntaxUID == row["transfer_syntax"]
        assert ds.PhotometricInterpretation == row["photometric"]
        assert int(ds.BitsStored) == row["bits_stored"]
        assert (int(ds.Rows), int(ds.Columns)) == (row["rows"], row["cols"])
        assert [float(v) for v in ds.PixelSpacing] == [row["pixel_spacing_mm"]] * 2
        assert ds.ViewPosition == row["view"]
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        arr = ds.pixel_array
        assert arr.max() < 2 ** row["bits_stored"]
        # the service path: stored -> modality/VOI LUT -> MONOCHROME1 inversion -> letterbox
        via_dicom = letterbox(to_display(arr, ds))
        copy = _png(corpus, row["paths"]["image"]).astype(np.float32) / TRAINING_COPY_MAX
        assert np.abs(via_dicom - copy).mean() < 0.02
        assert np.corrcoef(via_dicom.ravel(), copy.ravel())[0, 1] > 0.99
    assert {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"} <= syntaxes, syntaxes


def test_raw_dicom_carries_fake_phi(corpus: Path, manifest: list[dict]) -> None:
    names = set()
    for row in manifest:
        ds = pydicom.dcmread(corpus / row["paths"]["dicom"], stop_before_pixels=True)
        assert "^" in str(ds.PatientName) and len(str(ds.PatientName)) > 4
        assert ds.PatientID and ds.PatientBirthDate and ds.AccessionNumber and ds.InstitutionName
        assert ds.PatientSex == row["demographics"]["sex"]
        names.add(str(ds.PatientName))
    patients = {r["patient_key"] for r in manifest}
    assert len(names) == len(patients)  # one name per patient, the same across their studies


def test_splits_are_patient_level(manifest: list[dict]) -> None:
    split_of: dict[str, str] = {}
    for row in manifest:
        assert split_of.setdefault(row["patient_key"], row["split"]) == row["split"]
    # and over a larger plan every split is used
    plans = plan_corpus(5, 400)
    assert {p.split for p in plans} == {"train", "val", "test"}


def test_every_disease_study_shows_its_disease() -> None:
    """A diagnosis label on a clear radiograph is invisible to any image model; the planner stops
    imaging a patient once the opacities have cleared (and the admission film always shows them)."""
    plans = plan_corpus(1, 1500)
    disease = [(p, s) for p in plans if p.diagnosis != "normal" for s in p.studies]
    assert len(disease) > 900
    assert all(rale_total(s.rale) > 0 for _, s in disease)
    assert all(rale_total(s.rale) == 0 for p in plans if p.diagnosis == "normal" for s in p.studies)
    # resolving courses still exist: some patients' later studies score lower than their first
    assert any(
        rale_total(p.studies[-1].rale) < rale_total(p.studies[0].rale) for p in plans if len(p.studies) > 1
    )


def test_clinical_record_and_outcome(manifest: list[dict]) -> None:
    for row in manifest:
        c = row["clinical"]
        assert 50 <= c["spo2_pct"] <= 100 and 30 <= c["temperature_c"] <= 43
        assert row["outcome"]["intubation_72h"] in (0, 1)
        assert set(row["demographics"]) == {"age", "sex", "comorbidities"}


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_regardless_of_workers(tmp_path: Path) -> None:
    generate(tmp_path / "a", n=4, seed=3, write_dicom=True, workers=1)
    generate(tmp_path / "b", n=4, seed=3, write_dicom=True, workers=2)
    generate(tmp_path / "c", n=4, seed=4, write_dicom=False, workers=1)
    a, b, c = (_tree_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert len(a) == 4 * 5 + 2  # image, 3 truth maps, DICOM per study + manifest + corpus.json
    assert not any(k.startswith("dicom/") for k in c)
    assert a["manifest.jsonl"] != c["manifest.jsonl"]


def test_corpus_is_a_prefix_of_a_larger_one(tmp_path: Path) -> None:
    generate(tmp_path / "small", n=3, seed=9, write_dicom=False, workers=1)
    generate(tmp_path / "large", n=6, seed=9, write_dicom=False, workers=1)
    small, large = read_manifest(tmp_path / "small"), read_manifest(tmp_path / "large")
    assert small == large[:3]


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path / "x", n=1, seed=0, write_dicom=False)
    assert (tmp_path / "x" / "keep.txt").read_text() == "precious"


def test_rejects_bad_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        generate(tmp_path / "y", n=0, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        generate(tmp_path / "z", n=1, seed=-1)
