"""Serve the model repository with a real tritonserver and run corpus studies through it over gRPC.

What ``make demo`` shows for the models: Triton (CPU profile) loads every model, the segmentation
ensemble, landmark detector and embedder answer over gRPC, and their answers are scored against
the synthetic truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrmesh.analysis.lung_map import lung_map
from cxrmesh.analysis.pixels import input_labels, model_input
from cxrmesh.analysis.quantify import lung_dice
from cxrmesh.contracts.corpus import read_manifest, read_training_copy
from cxrmesh.contracts.tensors import EMBEDDER, LANDMARKER, SEG_ENSEMBLE


def _infer(client, spec, image: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("image", list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    res = client.infer(spec.name, [inp], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
    return {o: res.as_numpy(o) for o in outputs}


def score_study(client, corpus: Path, row: dict[str, Any]) -> dict[str, Any]:
    """One corpus study through the served ensemble, landmarks and embedder, scored against its truth."""
    from cxrmesh.ml.data import mm_per_input_pixel, to_input_frame

    image = model_input(read_training_copy(corpus / row["paths"]["image"]))
    seg = _infer(client, SEG_ENSEMBLE, image, ["probs"])["probs"][0]
    lm = _infer(client, LANDMARKER, image, ["landmarks", "confidence"])
    emb = _infer(client, EMBEDDER, image, ["embedding"])["embedding"][0]
    truth = input_labels(np.asarray(Image.open(corpus / row["paths"]["lungs"])))
    expected = np.array([to_input_frame(row["landmarks"][k]["model"]) for k in ("carina", "left_hilum")])
    err_mm = np.linalg.norm(lm["landmarks"][0] - expected, axis=1) * mm_per_input_pixel(row)
    return {
        "study": row["sop_instance_uid"][-12:],
        "site": row["site"],
        "diagnosis": row["diagnosis"],
        "dice": round(float(lung_dice(lung_map(seg, image[0, 0]), truth)), 4),
        "landmark_error_mm": [round(float(e), 2) for e in err_mm],
        "embedding_norm": round(float(np.linalg.norm(emb)), 4),
    }


def run(repository: Path, corpus: Path, n: int = 6) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from cxrmesh.local.triton_server import running_server

    rows = read_manifest(corpus)[:n]
    report: dict[str, Any] = {}
    with running_server(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        report["models"] = sorted(
            m["name"] for m in client.get_model_repository_index(as_json=True)["models"]
        )
        report["studies"] = [score_study(client, corpus, row) for row in rows]
    report["mean_dice"] = float(np.mean([s["dice"] for s in report["studies"]]))
    report["mean_landmark_error_mm"] = float(np.mean([s["landmark_error_mm"] for s in report["studies"]]))
    return report
