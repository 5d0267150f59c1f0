"""PyTorch -> ONNX (dynamo exporter, opset 18, one file, dynamic batch) with a parity check.

Tensor names and shapes come from ``cxrmesh.contracts.tensors`` so the ONNX files, the Triton configs and
the clients agree by construction.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrmesh.contracts.tensors import MAX_BATCH, ONNX_MODELS, ModelSpec, example_inputs

OPSET = 18
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    model: str
    max_abs_diff: float
    batches: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_TOLERANCE


def export_model(model: torch.nn.Module, spec: ModelSpec, path: Path) -> Path:
    """Write ``model`` as a single-file ONNX model with a dynamic batch dimension."""
    model = model.eval()
    example = tuple(torch.from_numpy(v) for v in example_inputs(spec, 2).values())
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = {t.name: {0: batch} for t in spec.inputs}
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        model,
        example,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        dynamic_shapes=dynamic,
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
    )
    program.save(str(path), external_data=False)
    return path


@functools.lru_cache(maxsize=1)
def radiographs(n: int = 16) -> np.ndarray:
    """``n`` synthetic radiographs in the models' input frame (rendered on the fly, seed 0).

    Parity is checked on images like the ones served: on uniform noise a heatmap model's spatial
    softmax is flat, and the soft-argmax then magnifies float32 rounding into coordinate noise that
    says nothing about the exported graph.
    """
    from cxrmesh.analysis.pixels import model_input
    from cxrmesh.contracts.corpus import read_training_copy
    from cxrmesh.synth.corpus import generate

    with tempfile.TemporaryDirectory(prefix="cxrmesh-parity-") as tmp:
        out = Path(tmp) / "c"
        generate(out, n=n, seed=0, write_dicom=False, workers=1)
        images = [model_input(read_training_copy(p))[0] for p in sorted((out / "images").glob("*.png"))]
    return np.stack(images)


def check_parity(model: torch.nn.Module, spec: ModelSpec, path: Path, batches=(1, 3)) -> Parity:
    """Max |torch - onnxruntime| over every output at the given batch sizes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in batches:
        feeds = example_inputs(spec, b, seed=b)
        if "image" in feeds:
            feeds["image"] = radiographs()[:b]
        with torch.no_grad():
            ref = model(*(torch.from_numpy(v) for v in feeds.values()))
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run([t.name for t in spec.outputs], feeds)
        for r, g in zip(ref, got, strict=True):
            worst = max(worst, float(np.abs(r.numpy() - g).max()))
    return Parity(spec.name, worst, tuple(batches))


def export_all(weights: Path, out: Path) -> list[Parity]:
    """Export every ONNX model whose weights exist to ``out/<name>.onnx``; returns parity results."""
    from cxrmesh.ml.weights import load_weights

    results = []
    for spec in ONNX_MODELS:
        if not (weights / f"{spec.name}.pt").exists():
            raise FileNotFoundError(f"no weights for {spec.name} in {weights}; run `cxrmesh train` first")
        model = load_weights(spec.name, weights)
        path = export_model(model, spec, out / f"{spec.name}.onnx")
        parity = check_parity(model, spec, path)
        if not parity.ok:
            raise RuntimeError(f"{spec.name}: ONNX differs from PyTorch by {parity.max_abs_diff:.2e}")
        results.append(parity)
    (out / "parity.json").write_text(
        json.dumps([{"model": p.model, "max_abs_diff": p.max_abs_diff} for p in results], indent=2) + "\n"
    )
    return results
