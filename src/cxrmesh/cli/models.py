"""Commands that make data and models: the synthetic corpus, training, export, pictures of the models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cxrmesh.cli.app import app, fail


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output directory (must be new or empty).")],
    n: Annotated[int, typer.Option("--n", min=1, max=1_000_000, help="Number of studies.")] = 200,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Random seed; same seed and arguments, same bytes.")
    ] = 0,
    dicom: Annotated[
        bool, typer.Option("--dicom/--no-dicom", help="Write full-resolution DICOM too.")
    ] = True,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Processes; 0 = one per core.")] = 0,
) -> None:
    """Generate a synthetic chest-radiograph corpus with full ground truth."""
    from tqdm import tqdm

    from cxrmesh.synth.corpus import generate

    def bar(it):
        return tqdm(it, total=n, desc="studies", unit="study", file=sys.stderr, disable=None)

    try:
        summary = generate(out, n=n, seed=seed, write_dicom=dicom, workers=workers or None, progress=bar)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))


@app.command("contact-sheet")
def contact_sheet_cmd(
    corpus: Annotated[Path, typer.Argument(help="Corpus directory written by `cxrmesh synth`.")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("docs/contact-sheet.png"),
    n: Annotated[int, typer.Option("--n", min=1, max=64)] = 16,
    real_out: Annotated[
        Path | None, typer.Option("--real-out", help="Also write the real-vs-synthetic sheet here.")
    ] = None,
) -> None:
    """Draw samples with their masks, landmarks, zone split and opacity truth."""
    from cxrmesh.synth.contact import contact_sheet, real_vs_synthetic

    if not (corpus / "manifest.jsonl").is_file():
        fail(f"{corpus} is not a corpus (no manifest.jsonl); run `cxrmesh synth --out {corpus}` first")
    typer.echo(str(contact_sheet(corpus, out, n=n)))
    if real_out is not None:
        typer.echo(str(real_vs_synthetic(corpus, real_out)))


@app.command()
def train(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus directory (manifest.jsonl + images).")],
    out: Annotated[
        Path, typer.Option("--out", help="Run directory: checkpoints, history, metrics.json.")
    ] = Path("runs"),
    weights: Annotated[Path, typer.Option("--weights", help="Where final weights are written.")] = Path(
        "weights"
    ),
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    only: Annotated[
        str,
        typer.Option("--only", help="Comma-separated steps: seg, ensemble, landmarks, embedder, prognosis."),
    ] = "",
    seg_epochs: Annotated[int, typer.Option("--seg-epochs", min=1)] = 5,
    landmark_epochs: Annotated[int, typer.Option("--landmark-epochs", min=1)] = 8,
    embed_epochs: Annotated[int, typer.Option("--embed-epochs", min=1)] = 40,
    embed_batch: Annotated[int, typer.Option("--embed-batch", min=6, help="Class-balanced batch.")] = 30,
    seg_limit: Annotated[
        int, typer.Option("--seg-limit", min=0, help="Training images per segmentation member (0 = all).")
    ] = 800,
    seg_seconds: Annotated[
        float,
        typer.Option("--seg-seconds", min=0, help="Wall-time budget per segmentation member (0 = none)."),
    ] = 0,
    seg_members: Annotated[
        str, typer.Option("--seg-members", help="Comma-separated members to train (default: all five).")
    ] = "",
    init_weights: Annotated[
        Path | None,
        typer.Option("--init-weights", help="Fine-tune the segmentation members from these weights."),
    ] = None,
    seg_lr: Annotated[
        float, typer.Option("--seg-lr", min=0, help="Peak learning rate of the segmentation members.")
    ] = 3e-3,
    precision: Annotated[
        str,
        typer.Option(
            "--precision", help="Segmentation forward pass: auto (bf16 where the CPU/GPU has it), bf16, fp32."
        ),
    ] = "auto",
    device: Annotated[
        str, typer.Option("--device", help="auto (GPU if PyTorch sees one), cpu, cuda or cuda:N.")
    ] = "auto",
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Ignore existing checkpoints instead of resuming.")
    ] = False,
) -> None:
    """Train the four models (resumable; seeded) and evaluate them on the test split."""
    try:
        from cxrmesh.ml.loop import PRECISIONS
        from cxrmesh.ml.train import TrainConfig, train_all
    except ImportError as exc:
        fail(f"training needs the [train] extra (torch, segmentation-models-pytorch, ...): {exc}")
    if not (corpus / "manifest.jsonl").is_file():
        fail(f"{corpus} has no manifest.jsonl; generate one with `cxrmesh synth --out {corpus}`")
    parts = tuple(p for p in only.split(",") if p)
    steps = ("seg", "ensemble", "landmarks", "embedder", "prognosis")
    unknown = set(parts) - set(steps)
    if unknown:
        fail(f"--only: unknown step(s) {sorted(unknown)}; choose from {', '.join(steps)}")
    from cxrmesh.contracts.tensors import SEG_MEMBERS

    members = tuple(m for m in seg_members.split(",") if m)
    if set(members) - set(SEG_MEMBERS):
        fail(f"--seg-members: unknown {sorted(set(members) - set(SEG_MEMBERS))}; choose from {SEG_MEMBERS}")
    if precision not in PRECISIONS:
        fail(f"--precision {precision!r}: choose {', '.join(PRECISIONS)}")
    cfg = TrainConfig(
        corpus=corpus,
        out=out,
        weights=weights,
        seed=seed,
        seg_epochs=seg_epochs,
        landmark_epochs=landmark_epochs,
        embed_epochs=embed_epochs,
        embed_batch=embed_batch,
        seg_limit=seg_limit or None,
        seg_seconds=seg_seconds or None,
        seg_members=members,
        init_weights=init_weights,
        seg_lr=seg_lr,
        precision=precision,
        device=device,
        resume=not fresh,
        only=parts,
    )
    try:
        metrics = train_all(cfg)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True))


@app.command("export")
def export_cmd(
    weights: Annotated[Path, typer.Option("--weights", help="Trained weights from `cxrmesh train`.")] = Path(
        "weights"
    ),
    metrics: Annotated[
        Path, typer.Option("--metrics", help="metrics.json of the run, for the model cards.")
    ] = Path("runs/metrics.json"),
    out: Annotated[Path, typer.Option("--out", help="Triton model repository to write.")] = Path(
        "model_repository"
    ),
    onnx_dir: Annotated[Path, typer.Option("--onnx-dir", help="Where the exported ONNX files go.")] = Path(
        "build/onnx"
    ),
) -> None:
    """Export ONNX (parity-checked against PyTorch) and write the Triton model repository."""
    try:
        from cxrmesh.export.onnx_export import export_all
    except ImportError as exc:
        fail(f"export needs the [train] extra (torch, onnx, onnxscript): {exc}")
    from cxrmesh.contracts.tensors import ENSEMBLE_WEIGHTS_FILE
    from cxrmesh.export.cards import all_cards
    from cxrmesh.export.repository import write_repository

    if not weights.is_dir():
        fail(f"no weights directory {weights}; run `cxrmesh train` first")
    run_metrics = json.loads(metrics.read_text()) if metrics.is_file() else {}
    try:
        parity = export_all(weights, onnx_dir)
    except (FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
    fitted = weights / ENSEMBLE_WEIGHTS_FILE
    ensemble_weights = json.loads(fitted.read_text())["weights"] if fitted.is_file() else None
    names = write_repository(onnx_dir, out, cards=all_cards(run_metrics), ensemble_weights=ensemble_weights)
    for p in parity:
        typer.echo(f"{p.model}: ONNX parity max |diff| {p.max_abs_diff:.2e}")
    typer.echo(f"wrote {len(names)} models to {out}")


@app.command("real-report")
def real_report(
    repository: Annotated[Path, typer.Option("--repository")] = Path("model_repository"),
    out: Annotated[Path, typer.Option("--out")] = Path("docs/real-radiograph-models.png"),
) -> None:
    """Run the exported models on the real pydicom-data radiograph and draw what they found."""
    from cxrmesh.reporting.real_radiograph import real_radiograph_report

    try:
        typer.echo(json.dumps(real_radiograph_report(repository, out), indent=2))
    except FileNotFoundError as exc:
        fail(str(exc))


@app.command("models-demo")
def models_demo(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus with truth to score against.")],
    repository: Annotated[Path, typer.Option("--repository")] = Path("model_repository"),
    n: Annotated[int, typer.Option("--n", min=1, max=200)] = 6,
) -> None:
    """Start tritonserver (CPU profile) on the repository and run corpus studies through it over gRPC."""
    from cxrmesh.local.triton_demo import run

    if not (corpus / "manifest.jsonl").is_file():
        fail(f"{corpus} is not a corpus (no manifest.jsonl)")
    if not repository.is_dir():
        fail(f"no model repository at {repository}; run `cxrmesh export`")
    typer.echo(json.dumps(run(repository, corpus, n), indent=2))


@app.command()
def atlas(
    out: Annotated[Path, typer.Option("--out", help="Where to write the atlas .npz.")],
    source: Annotated[
        Path | None,
        typer.Option("--source", help="torchxrayvision wheel or mask zip; downloaded if omitted."),
    ] = None,
    cache_dir: Annotated[Path, typer.Option("--cache-dir")] = Path(".cache/atlas"),
) -> None:
    """Rebuild the lung-shape atlas from the real masks in the torchxrayvision wheel."""
    from cxrmesh.synth.atlas import atlas_main

    report = atlas_main(out, source, cache_dir)
    typer.echo(f"accepted {len(report.atlas)} of {report.total}; rejected {report.rejected}")
