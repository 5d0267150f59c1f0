"""The command line: clear errors for bad arguments, a working synth -> contact-sheet path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLI = [sys.executable, "-m", "cxrmesh.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["synth", "--n", "0", "--out", "{tmp}/a"], "--n"),
        (["synth", "--n", "many", "--out", "{tmp}/a"], "--n"),
        (["synth", "--n", "2", "--seed", "-3", "--out", "{tmp}/a"], "--seed"),
        (["synth", "--n", "2"], "--out"),
        (["synth", "--n", "2", "--out", "{tmp}/full"], "not empty"),
        (["contact-sheet", "{tmp}/nowhere"], "not a corpus"),
    ],
)
def test_bad_arguments_give_clear_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    result = run(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_synth_then_contact_sheets(tmp_path: Path, corpus: Path) -> None:
    result = run(
        "synth", "--n", "3", "--seed", "2", "--no-dicom", "--workers", "1", "--out", str(tmp_path / "c")
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_studies"] == 3 and summary["dicom"] is False
    sheet, real = tmp_path / "sheet.png", tmp_path / "real.png"
    result = run("contact-sheet", str(corpus), "--out", str(sheet), "--real-out", str(real))
    assert result.returncode == 0, result.stderr
    img = np.asarray(Image.open(sheet))
    assert img.shape[0] > 1000 and img.shape[1] >= 4 * 300
    assert img.std() > 20  # not blank
    assert Image.open(real).size[0] >= 4 * 300


def test_real_radiograph_goes_through_the_same_contract() -> None:
    from cxrmesh.synth.contact import real_radiograph

    img, info = real_radiograph()
    assert info["photometric"] == "MONOCHROME1" and info["bits_stored"] == 15
    assert img.shape == (512, 512) and img.min() >= 0.0 and img.max() <= 1.0
    # after MONOCHROME1 inversion the mediastinum (centre column) is brighter than the lung fields
    centre = img[150:350, 240:272].mean()
    lungs = np.concatenate([img[150:350, 100:180].ravel(), img[150:350, 330:410].ravel()]).mean()
    assert centre > lungs + 0.1
