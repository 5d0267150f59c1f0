"""Model cards (one per served model) and docs/models.md, generated from the training metrics.

Generated rather than hand-written so the numbers in the repository never drift from the run that
produced the weights.
"""

from __future__ import annotations

from typing import Any

from cxrmesh.contracts.tensors import BY_NAME, SEG_ENSEMBLE, SEG_MEMBERS, ModelSpec

TRAINING = (
    "Synthetic chest radiographs from the seed-1 corpus of `cxrmesh synth --seed 1 --no-dicom` (three "
    "simulated sites, CR/DX, PA/AP; normal, COVID-19 and other pneumonia; lung shapes from 362 real "
    "annotated lung pairs), patient-level 70/15/15 train/val/test split: 2,000 studies here, 3,000 on "
    "the GPU host (the 2,000 are their exact prefix, split alike), so the test split of "
    "`data/corpus-2000` holds no trained-on patient; trained with `cxrmesh train` and "
    "`scripts/train_on_gpu.sh` (which model how: docs/models.md). No real patient images were used."
)
INPUT = (
    "`image`: FP32 [N, 1, 256, 256], display values in [0, 1] (1 = white) after the preprocessing "
    "contract (`cxrmesh.contracts.preprocessing`: modality LUT, VOI LUT, MONOCHROME1 inversion, "
    "letterbox to 512, "
    "2x2 average pooling to 256). Normalisation is inside the graph."
)
LIMITS = (
    "Research and engineering use only; not a medical device. Trained on synthetic images only: "
    "texture, devices, positioning extremes, paediatric and lateral films are out of distribution. "
    "Validate on local real data before any clinical use."
)

USE = {
    "cxr_embedder": "Similar-case retrieval (cosine similarity in Milvus), diagnosis by neighbour vote, "
    "and frozen features for prognosis. The attention map shows where features were pooled from.",
    "lung_seg_ensemble": "Right/left lung segmentation for four-region quantification; serve this, not "
    "the members, unless member disagreement is wanted (request `member_probs`).",
    "cxr_landmarks": "Carina and left hilum for the upper/lower zone split (`cxrmesh.analysis.regions`).",
    "prognosis_head": "Probability of intubation within 72 h. Needs clinical data: callers must not "
    "send placeholders for missing values.",
}


def _contract(spec: ModelSpec) -> list[str]:
    rows = ["| direction | tensor | dtype | shape (with batch) |", "| --- | --- | --- | --- |"]
    for direction, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        for t in tensors:
            dims = ", ".join(map(str, t.dims))
            rows.append(f"| {direction} | `{t.name}` | {t.dtype} | [1..{spec.max_batch_size}, {dims}] |")
    return rows


def _metrics_lines(name: str, m: dict[str, Any]) -> list[str]:
    if name in SEG_MEMBERS and "dice_members" in m:
        return [f"- Test Dice (mean of right and left lung): **{m['dice_members'][name]:.3f}**"]
    if name == SEG_ENSEMBLE.name and "dice_ensemble" in m:
        members = ", ".join(f"{k.removeprefix('lung_seg_')} {v:.4f}" for k, v in m["dice_members"].items())
        lines = [f"- Test Dice: ensemble **{m['dice_ensemble']:.4f}**; members {members}"]
        if len(set(m.get("ensemble_weights", {}).values())) > 1:
            fitted = m["ensemble_weights"].items()
            weights = ", ".join(f"{k.removeprefix('lung_seg_')} {v:g}" for k, v in fitted)
            lines.append(
                f"- Member weights (fitted on the validation split): {weights}; the unweighted mean "
                f"scores {m['dice_ensemble_unweighted']:.4f}. Every member is still called: "
                "`member_probs` and the members' agreement use all five."
            )
        return lines
    if name == "cxr_landmarks" and "landmark_error_mm" in m:
        e = m["landmark_error_mm"]
        return [
            f"- Test error: mean **{e['mean']:.2f} mm** (carina {e['carina_mean']:.2f}, left hilum "
            f"{e['left_hilum_mean']:.2f}), 95th percentile {e['p95']:.2f} mm"
        ]
    if name == "cxr_embedder" and "retrieval" in m:
        r = m["retrieval"]
        return [
            f"- Retrieval (test queries against the train gallery, label = diagnosis): precision@1 "
            f"{r['precision_at_1']:.3f}, @5 {r['precision_at_5']:.3f}, @10 **{r['precision_at_10']:.3f}**, "
            f"mAP@R {r['map_at_r']:.3f}",
            "- Diagnosis by similarity-weighted vote of 10 neighbours: accuracy "
            f"**{r['vote_accuracy_at_10']:.3f}**",
        ]
    if name == "prognosis_head" and "prognosis" in m:
        p = m["prognosis"]
        return [
            f"- Test AUC: clinical only {p['auc_clinical_only']:.3f}, image only {p['auc_image_only']:.3f}, "
            f"image + clinical **{p['auc_image_and_clinical']:.3f}** ({p['test_positives']} events in "
            f"{p['test_n']} test studies)"
        ]
    return ["- Not evaluated in this run."]


def model_card(name: str, metrics: dict[str, Any]) -> str:
    spec = BY_NAME[name]
    use = USE.get(name, "Member of the lung segmentation ensemble (`lung_seg_ensemble`).")
    lines = [
        f"# {name}",
        "",
        spec.description,
        "",
        "## Intended use",
        "",
        use,
        "",
        "## Input contract",
        "",
        INPUT if any(t.name == "image" for t in spec.inputs) else "Raw feature vectors; see the table.",
        "",
        *_contract(spec),
        "",
        "## Training data",
        "",
        TRAINING,
        "",
        "## Metrics (synthetic test split)",
        "",
        *_metrics_lines(name, metrics),
        "",
        "## Limits",
        "",
        LIMITS,
        "",
    ]
    return "\n".join(lines)


def all_cards(metrics: dict[str, Any]) -> dict[str, str]:
    return {name: model_card(name, metrics) for name in BY_NAME}


def results_table(m: dict[str, Any]) -> str:
    """The metrics of a training run as the Markdown table in docs/models.md."""
    rows = ["| measure | value | target |", "| --- | --- | --- |"]
    if "dice_members" in m:
        for name, v in m["dice_members"].items():
            rows.append(f"| Dice, {name} | {v:.4f} | |")
        best = max(m["dice_members"].values())
        rows.append(
            f"| **Dice, ensemble** | **{m['dice_ensemble']:.4f}** | ≥ 0.95 and > best member ({best:.4f}) |"
        )
        if len(set(m.get("ensemble_weights", {}).values())) > 1:
            rows.append(f"| Dice, ensemble with equal weights | {m['dice_ensemble_unweighted']:.4f} | |")
    if "landmark_error_mm" in m:
        e = m["landmark_error_mm"]
        rows.append(f"| landmark error, carina (mean) | {e['carina_mean']:.2f} mm | |")
        rows.append(f"| landmark error, left hilum (mean) | {e['left_hilum_mean']:.2f} mm | |")
        rows.append(
            f"| **landmark error, mean** (95th pct) | **{e['mean']:.2f} mm** ({e['p95']:.2f}) | ≤ 5 mm |"
        )
    if "retrieval" in m:
        r = m["retrieval"]
        rows.append(
            f"| retrieval precision@1 / @5 | {r['precision_at_1']:.3f} / {r['precision_at_5']:.3f} | |"
        )
        rows.append(f"| **retrieval precision@10** | **{r['precision_at_10']:.3f}** | ≥ 0.90 |")
        rows.append(f"| retrieval mAP@R | {r['map_at_r']:.3f} | |")
        rows.append(f"| **diagnosis by neighbour vote (10)** | **{r['vote_accuracy_at_10']:.3f}** | ≥ 0.90 |")
    if "prognosis" in m:
        p = m["prognosis"]
        rows.append(f"| prognosis AUC, clinical only | {p['auc_clinical_only']:.3f} | |")
        rows.append(f"| prognosis AUC, image only | {p['auc_image_only']:.3f} | |")
        rows.append(
            f"| **prognosis AUC, image + clinical** | **{p['auc_image_and_clinical']:.3f}** "
            "| > clinical only |"
        )
    return "\n".join(rows)
