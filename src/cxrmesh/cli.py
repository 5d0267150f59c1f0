"""The ``cxrmesh`` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="cxrmesh",
    help="Chest-radiograph retrieval and four-region lung quantification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


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
        _fail(str(exc))
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
        _fail(f"{corpus} is not a corpus (no manifest.jsonl); run `cxrmesh synth --out {corpus}` first")
    typer.echo(str(contact_sheet(corpus, out, n=n)))
    if real_out is not None:
        typer.echo(str(real_vs_synthetic(corpus, real_out)))


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


if __name__ == "__main__":
    app()
