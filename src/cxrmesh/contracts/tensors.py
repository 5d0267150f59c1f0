"""Serving contracts of the four models: tensor names, types and shapes, stated once.

This module has no torch dependency: the exporter, the Triton model-repository writer, the
Triton client in the services and the tests all read the same specs. Batch is the leading,
dynamic dimension everywhere (``-1`` below means dynamic in Triton's ``dims`` sense, without batch).

Every image model takes display values in [0, 1] (1 = white) at ``MODEL_INPUT`` x ``MODEL_INPUT``,
the letterboxed 512 frame of ``cxrmesh.contracts.preprocessing`` average-pooled by 2; normalisation
(``INPUT_MEAN``/``INPUT_STD``) happens inside the exported graph, so callers never repeat it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrmesh.contracts.preprocessing import MODEL_SIZE

MODEL_INPUT = 256  # pixels per side seen by every image model
POOL = MODEL_SIZE // MODEL_INPUT
EMBED_DIM = 128
ATTENTION_SIZE = MODEL_INPUT // 16
SEG_CLASSES = ("background", "right_lung", "left_lung")
LANDMARKS = ("carina", "left_hilum")
REGION_FEATURES = tuple(
    f"{region}_{name}"
    for region in ("right_upper", "right_lower", "left_upper", "left_lower")
    for name in ("area_fraction", "mean_intensity", "opacity_fraction")
)
CLINICAL_FEATURES = (
    "age",
    "sex_male",
    "spo2_pct",
    "resp_rate_per_min",
    "heart_rate_bpm",
    "temperature_c",
    "crp_mg_l",
    "lymphocytes_1e9_l",
    "d_dimer_mg_l_feu",
    "ldh_u_l",
    "comorbidity_count",
    "days_since_onset",
)
MAX_BATCH = 16


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton data type, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension

    @property
    def numpy_dtype(self) -> str:
        return {"TYPE_FP32": "float32", "TYPE_INT32": "int32", "TYPE_FP16": "float16"}[self.dtype]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    description: str
    max_batch_size: int = MAX_BATCH
    members: tuple[str, ...] = field(default=())  # for composite models


IMAGE = Tensor("image", "TYPE_FP32", (1, MODEL_INPUT, MODEL_INPUT))
SEG_PROBS = Tensor("probs", "TYPE_FP32", (len(SEG_CLASSES), MODEL_INPUT, MODEL_INPUT))

SEG_MEMBERS = (
    "lung_seg_unet",
    "lung_seg_unetplusplus",
    "lung_seg_fpn",
    "lung_seg_manet",
    "lung_seg_deeplabv3plus",
)

EMBEDDER = ModelSpec(
    "cxr_embedder",
    (IMAGE,),
    (
        Tensor("embedding", "TYPE_FP32", (EMBED_DIM,)),
        Tensor("attention", "TYPE_FP32", (1, ATTENTION_SIZE, ATTENTION_SIZE)),
    ),
    "Deep-metric-learning embedding (L2-normalised) and its spatial attention map.",
)
SEGMENTERS = tuple(
    ModelSpec(name, (IMAGE,), (SEG_PROBS,), f"Lung segmentation ensemble member {name}.")
    for name in SEG_MEMBERS
)
SEG_ENSEMBLE = ModelSpec(
    "lung_seg_ensemble",
    (IMAGE,),
    (
        SEG_PROBS,
        Tensor("member_probs", "TYPE_FP32", (len(SEG_MEMBERS), len(SEG_CLASSES), MODEL_INPUT, MODEL_INPUT)),
    ),
    "Mean of the five members' class probabilities (weighted when the config sets member_weights); "
    "each member's on request (member_probs).",
    members=SEG_MEMBERS,
)
# The ensemble's member weights, fitted on the validation split by ``cxrmesh train --only ensemble``, written
# into the ensemble's config by ``cxrmesh export`` (JSON: {"weights": {member: weight}, ...}).
ENSEMBLE_WEIGHTS_FILE = "lung_seg_ensemble.json"
LANDMARKER = ModelSpec(
    "cxr_landmarks",
    (IMAGE,),
    (
        Tensor("landmarks", "TYPE_FP32", (len(LANDMARKS), 2)),  # (x, y) in MODEL_INPUT pixels
        Tensor("confidence", "TYPE_FP32", (len(LANDMARKS),)),
    ),
    "Carina and left-hilum coordinates by heatmap regression with sub-pixel (soft-argmax) decoding.",
)
PROGNOSIS = ModelSpec(
    "prognosis_head",
    (
        Tensor("embedding", "TYPE_FP32", (EMBED_DIM,)),
        Tensor("regions", "TYPE_FP32", (len(REGION_FEATURES),)),
        Tensor("clinical", "TYPE_FP32", (len(CLINICAL_FEATURES),)),
    ),
    (Tensor("probability", "TYPE_FP32", (1,)),),
    "Probability of intubation within 72 h from frozen embedding + four-region features + clinical data.",
)

ALL_MODELS: tuple[ModelSpec, ...] = (EMBEDDER, *SEGMENTERS, SEG_ENSEMBLE, LANDMARKER, PROGNOSIS)
ONNX_MODELS: tuple[ModelSpec, ...] = (EMBEDDER, *SEGMENTERS, LANDMARKER, PROGNOSIS)
BY_NAME = {m.name: m for m in ALL_MODELS}


def example_inputs(spec: ModelSpec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``spec`` in each tensor's natural range (images in [0, 1], unit embeddings)."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = (batch, *t.dims)
        if t.name == "embedding":
            v = rng.standard_normal(shape).astype(np.float32)
            out[t.name] = v / np.linalg.norm(v, axis=1, keepdims=True)
        else:
            out[t.name] = rng.random(shape, dtype=np.float32)
    return out
