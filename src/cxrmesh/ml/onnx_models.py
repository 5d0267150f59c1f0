"""In-process inference with the exported ONNX models (ONNX Runtime; no torch, no Triton).

The services call Triton; this path exists for reports, tests and offline checks, and takes the
same inputs (``spec``) so its numbers are comparable with the served ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrmesh.analysis.lung_map import lung_map
from cxrmesh.contracts.tensors import EMBEDDER, LANDMARKER, SEG_MEMBERS
from cxrmesh.ml.repository import member_weights, onnx_path


@dataclass
class Findings:
    lungs: np.ndarray  # (MODEL_INPUT, MODEL_INPUT) uint8 labels
    probs: np.ndarray  # (3, MODEL_INPUT, MODEL_INPUT) ensemble (weighted) mean
    member_probs: np.ndarray  # (5, 3, MODEL_INPUT, MODEL_INPUT)
    landmarks: np.ndarray  # (2, 2) (x, y) in MODEL_INPUT pixels
    landmark_confidence: np.ndarray
    embedding: np.ndarray
    attention: np.ndarray


class OnnxModels:
    """Sessions for every ONNX model in a Triton model repository (``<name>/1/model.onnx``)."""

    def __init__(self, repository: Path, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.sessions = {}
        for name in (*SEG_MEMBERS, EMBEDDER.name, LANDMARKER.name):
            path = onnx_path(repository, name)
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: run `cxrmesh export` or check the repository path")
            self.sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.member_weights = member_weights(Path(repository))  # what the served ensemble uses

    def run(self, image: np.ndarray) -> Findings:
        members = np.stack([self.sessions[m].run(["probs"], {"image": image})[0][0] for m in SEG_MEMBERS])
        probs = np.tensordot(self.member_weights, members, axes=1).astype(np.float32)
        xy, conf = self.sessions[LANDMARKER.name].run(None, {"image": image})
        emb, att = self.sessions[EMBEDDER.name].run(None, {"image": image})
        lungs = lung_map(probs, image[0, 0])
        return Findings(lungs, probs, members, xy[0], conf[0], emb[0], att[0, 0])
