"""The ``cxrmesh`` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cxrmesh.client import CxrClient, SimilarCase, StudySummary, Vote

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
        _fail(f"training needs the [train] extra (torch, segmentation-models-pytorch, ...): {exc}")
    if not (corpus / "manifest.jsonl").is_file():
        _fail(f"{corpus} has no manifest.jsonl; generate one with `cxrmesh synth --out {corpus}`")
    parts = tuple(p for p in only.split(",") if p)
    steps = ("seg", "ensemble", "landmarks", "embedder", "prognosis")
    unknown = set(parts) - set(steps)
    if unknown:
        _fail(f"--only: unknown step(s) {sorted(unknown)}; choose from {', '.join(steps)}")
    from cxrmesh.contracts.tensors import SEG_MEMBERS

    members = tuple(m for m in seg_members.split(",") if m)
    if set(members) - set(SEG_MEMBERS):
        _fail(f"--seg-members: unknown {sorted(set(members) - set(SEG_MEMBERS))}; choose from {SEG_MEMBERS}")
    if precision not in PRECISIONS:
        _fail(f"--precision {precision!r}: choose {', '.join(PRECISIONS)}")
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
        _fail(str(exc))
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
        _fail(f"export needs the [train] extra (torch, onnx, onnxscript): {exc}")
    from cxrmesh.contracts.tensors import ENSEMBLE_WEIGHTS_FILE
    from cxrmesh.export.cards import all_cards
    from cxrmesh.export.repository import write_repository

    if not weights.is_dir():
        _fail(f"no weights directory {weights}; run `cxrmesh train` first")
    run_metrics = json.loads(metrics.read_text()) if metrics.is_file() else {}
    try:
        parity = export_all(weights, onnx_dir)
    except (FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
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
        _fail(str(exc))


@app.command("models-demo")
def models_demo(
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus with truth to score against.")],
    repository: Annotated[Path, typer.Option("--repository")] = Path("model_repository"),
    n: Annotated[int, typer.Option("--n", min=1, max=200)] = 6,
) -> None:
    """Start tritonserver (CPU profile) on the repository and run corpus studies through it over gRPC."""
    from cxrmesh.local.triton_demo import run

    if not (corpus / "manifest.jsonl").is_file():
        _fail(f"{corpus} is not a corpus (no manifest.jsonl)")
    if not repository.is_dir():
        _fail(f"no model repository at {repository}; run `cxrmesh export`")
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


MESH_HOME = Path("data/mesh")
HomeOpt = Annotated[Path, typer.Option("--home", help="Mesh home: state, data, logs.")]


@app.command()
def up(
    home: HomeOpt = MESH_HOME,
    ports: Annotated[
        str, typer.Option("--ports", help="fixed (documented defaults) or auto (free ports).")
    ] = "fixed",
    timeout: Annotated[float, typer.Option("--timeout", min=10, help="Seconds to wait per part.")] = 300,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC, no client certificates: debugging only.")
    ] = False,
) -> None:
    """Start the local mesh (broker, Milvus Lite, tritonserver, services) and wait until healthy.

    Mutual TLS by default: certificates come from the local CA in <home>/pki (made once, reused).
    """
    from cxrmesh.local.mesh import Mesh, MeshError

    if ports not in ("fixed", "auto"):
        _fail("--ports must be 'fixed' or 'auto'")
    if insecure:
        typer.secho(
            "WARNING: --insecure: plaintext gRPC without client certificates, debugging only",
            fg=typer.colors.RED,
            err=True,
        )
    try:
        mesh = Mesh(home, ports=ports, insecure=insecure)
        state = mesh.up(timeout, progress=lambda m: typer.echo(f"starting {m}"))
    except MeshError as exc:
        _fail(str(exc))
    typer.echo(f"mesh up: ingestion at {state.endpoint('ingestion')}, search at {state.endpoint('search')}")
    typer.echo(f"state and logs in {home}; stop with `cxrmesh down --home {home}`")
    if not insecure:
        typer.echo(f"mutual TLS on every port; the CA and client certificate are in {home / 'pki'}")


@app.command()
def down(home: HomeOpt = MESH_HOME) -> None:
    """Stop the local mesh started from ``--home`` (services first, then Triton, Milvus, broker)."""
    from cxrmesh.local.mesh import Mesh

    stopped = Mesh(home).down()
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(home: HomeOpt = MESH_HOME) -> None:
    """Processes of the local mesh with their health; exit 1 if any is not healthy."""
    from cxrmesh.local.mesh import Mesh

    rows = Mesh(home).status()
    if not rows:
        typer.echo(f"no mesh in {home}")
        raise typer.Exit(code=1)
    for r in rows:
        typer.echo(f"{r['name']:<13} pid {r['pid']:<8} {r['health']:<12} {r['endpoint']:<24} {r['log']}")
    if any(r["health"] not in ("SERVING", "RUNNING") for r in rows):
        raise typer.Exit(code=1)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    home: HomeOpt = MESH_HOME,
    target: Annotated[str, typer.Option("--target", help="Ingestion host:port (default: from --home).")] = "",
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Corpus manifest.jsonl with labels/clinical data.")
    ] = None,
) -> None:
    """Send DICOM files to the ingestion service (streamed), with a progress bar and a summary."""
    from collections import Counter

    from tqdm import tqdm

    from cxrmesh.client import dicom_files, ingest_file, manifest_headers
    from cxrmesh.local.mesh import MeshError, MeshState
    from cxrmesh.runtime.tls import open_channel
    from cxrmesh.v1 import ingestion_pb2_grpc

    state = MeshState.load(home.resolve())
    if not target:
        if state is None:
            _fail(f"no mesh in {home}: start one with `cxrmesh up` or pass --target host:port")
        target = state.endpoint("ingestion")
    try:  # the client certificate of the mesh in --home (another host's target too)
        tls = (state or MeshState(home=str(home.resolve()))).tls()
    except MeshError as exc:
        _fail(str(exc))
    files = dicom_files(paths)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        _fail(f"not found: {', '.join(missing[:5])}")
    headers = manifest_headers(manifest) if manifest else {}
    counts: Counter[str] = Counter()
    with open_channel(target, tls, options=[("grpc.max_send_message_length", 256 << 20)]) as ch:
        stub = ingestion_pb2_grpc.IngestionServiceStub(ch)
        for f in tqdm(files, desc="ingest", unit="file", disable=None):
            res = ingest_file(stub, f, headers.get(f.resolve()))
            if res.error_code:
                counts["refused"] += 1
                tqdm.write(f"{f}: {res.error_code} {res.error}")
            else:
                counts["duplicate" if res.duplicate else "accepted"] += 1
    typer.echo(", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no files")
    if counts["refused"]:
        raise typer.Exit(code=1)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where the corpus, mesh state and report go.")] = Path(
        "out/demo"
    ),
    n: Annotated[int, typer.Option("--n", min=8, help="Synthetic studies to generate.")] = 40,
    new: Annotated[
        int, typer.Option("--new", min=1, help="Of those, studies ingested as new (unlabelled).")
    ] = 6,
) -> None:
    """The whole system end to end on the local mesh: ingest, follow every study, report."""
    from cxrmesh.local.demo import run
    from cxrmesh.local.mesh import MeshError

    try:
        result = run(out, n=n, new=new, say=typer.echo)
    except MeshError as exc:
        _fail(str(exc))
    typer.echo(result.text)
    typer.echo(f"HTML report: {result.report}   ({len(result.views)} studies, {result.seconds:.0f} s)")
    if result.failed:
        typer.secho(f"{result.failed} studies have failed stages (see the report)", fg=typer.colors.YELLOW)


# --- query commands: the public gRPC API through cxrmesh.client ----------------------------------

QUERY_EXIT_CODES = (
    "Exit codes: 0 ok; 1 a stage of the study failed (watch, diagnose), permission denied or another "
    "refusal; 2 usage error or invalid request; 3 unknown study; 4 mesh unavailable or timed out. "
    "Errors print one line: error: <reason>: <details>."
)
JSON_SCHEMA = "cxrmesh.cli/1"  # the "schema" key of every --json document; docs/cli.md describes it
JsonOpt = Annotated[
    bool, typer.Option("--json", help=f"Print one JSON document (schema {JSON_SCHEMA}, see docs/cli.md).")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for the study.")]


def _exit_code(exc: Exception) -> int:
    from cxrmesh.client import InvalidRequest, StudyNotFound, Unavailable
    from cxrmesh.local.mesh import MeshError

    for kind, code in ((StudyNotFound, 3), (Unavailable, 4), (MeshError, 4), (InvalidRequest, 2)):
        if isinstance(exc, kind):
            return code
    return 1


@contextmanager
def _query(home: Path, timeout_s: float = 60) -> Iterator[CxrClient]:
    """A client of the mesh in ``home`` with its operator certificate; errors become one line + exit code."""
    from cxrmesh.client import CxrClient, CxrError, Endpoints
    from cxrmesh.local.mesh import MeshError, MeshState

    try:
        state = MeshState.load(home.resolve())
        if state is None:
            raise MeshError(f"no mesh in {home}: start one with `cxrmesh up --home {home}`")
        endpoints = Endpoints(*(state.endpoint(n) for n in ("ingestion", "search", "studyview")))
        with CxrClient(endpoints, state.tls(), timeout_s) as client:
            yield client
    except (CxrError, MeshError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=_exit_code(exc)) from None


def _print_json(kind: str, body: dict) -> None:
    typer.echo(json.dumps({"schema": JSON_SCHEMA, "kind": kind, **body}, sort_keys=True))


def _case_line(c: SimilarCase) -> str:
    clinical = " ".join(f"{k}={v}" for k, v in sorted(c.clinical.items()))
    return (
        f"  {c.study_key[:8]}  sim {c.similarity:.3f}  {c.diagnosis:<15} {c.outcome:<13} "
        f"site {c.site[:8] or '-'} {c.sex or '-'} {c.age_band or '-'} {c.study_date or '-'}  {clinical}"
    )


def _vote_lines(vote: Vote) -> list[str]:
    scores = ", ".join(f"{k} {v:.2f}" for k, v in vote.scores.items())
    head = f"vote: {vote.diagnosis} ({scores}) from {vote.neighbours_used} labelled neighbours"
    return [head, *(_case_line(c) for c in vote.neighbours)]


def _study_lines(s: StudySummary) -> list[str]:
    status = "failed" if s.failed else "complete" if s.complete else "in progress"
    lines = [f"study {s.study_key}: {status}"]
    lines += [f"  {st.name:<13} {st.state:<8} {st.reason}".rstrip() for st in s.stages]
    if s.regions:
        lines.append(f"regions (RALE total {s.rale_total}/48):")
        lines += [
            f"  {r.region:<12} area {r.area_fraction:.2f}  opacity {r.opacity_fraction:.2f}  "
            f"RALE {r.rale_extent}x{r.rale_density}={r.rale_score}"
            for r in s.regions
        ]
    lines += [f"warning: {w}" for w in s.warnings]
    if s.vote is not None:
        lines += _vote_lines(s.vote)[:1]
    if s.prognosis is not None:
        p = s.prognosis
        lines.append(
            f"prognosis: P(intubation within 72 h) = {p.probability_intubation_72h:.2f}"
            if p.status == "done"
            else f"prognosis: {p.status} (missing {', '.join(p.missing_clinical)})"
        )
    if s.similar:
        lines.append("similar cases:")
        lines += [_case_line(c) for c in s.similar]
    return lines


@app.command(epilog=QUERY_EXIT_CODES)
def study(
    study_key: Annotated[str, typer.Argument(help="Study key (from `cxrmesh ingest` / IngestReply).")],
    home: HomeOpt = MESH_HOME,
    similar_k: Annotated[int, typer.Option("--similar-k", min=1, max=100)] = 5,
    as_json: JsonOpt = False,
) -> None:
    """The study view: state per stage, region table, vote, prognosis and similar cases.

    --json: {"schema", "kind": "study", "study": StudySummary} (fields in docs/cli.md).
    """
    with _query(home) as cxr:
        summary = cxr.study(study_key, similar_k)
    if as_json:
        _print_json("study", {"study": summary.to_json()})
    else:
        typer.echo("\n".join(_study_lines(summary)))


@app.command(epilog=QUERY_EXIT_CODES)
def watch(
    study_key: Annotated[str, typer.Argument(help="Study key.")],
    home: HomeOpt = MESH_HOME,
    timeout: TimeoutOpt = 300,
    as_json: JsonOpt = False,
) -> None:
    """Follow a study until every stage is done or failed; one line (or JSON document) per change.

    --json: one document per line, {"schema", "kind": "study", "study": StudySummary}.
    """
    last = None
    with _query(home) as cxr:
        for last in cxr.watch(study_key, timeout):
            if as_json:
                _print_json("study", {"study": last.to_json()})
            else:
                states = " ".join(f"{s.name}={s.state}" for s in last.stages)
                typer.echo(f"{study_key[:8]} {states}")
    if last is None or not last.complete:
        typer.secho("error: timeout: the study did not complete", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=4)
    if last.failed:
        raise typer.Exit(code=1)


@app.command(epilog=QUERY_EXIT_CODES)
def similar(
    query: Annotated[str, typer.Argument(help="A DICOM file (not stored) or a study key.")],
    home: HomeOpt = MESH_HOME,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1024, help="Cases to return.")] = 10,
    where: Annotated[
        str,
        typer.Option(
            "--filter",
            help="key=value,... with keys site, diagnosis, sex, age_band, from, to, labelled_only, "
            "same_patient (repeat a key for several values).",
        ),
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Ranked similar prior cases with their labels and clinical data.

    --json: {"schema", "kind": "similar", "query", "cases": [SimilarCase]}.
    """
    from cxrmesh.client import case_filter

    path = Path(query)
    with _query(home) as cxr:
        cases = cxr.similar(path if path.is_file() else query, k, case_filter(where))
    if as_json:
        _print_json("similar", {"query": query, "cases": [asdict(c) for c in cases]})
    else:
        typer.echo("\n".join(_case_line(c) for c in cases) or "no similar cases")


@app.command(epilog=QUERY_EXIT_CODES)
def diagnose(
    dicom: Annotated[Path, typer.Argument(help="A DICOM file; ingested unless the mesh has it already.")],
    home: HomeOpt = MESH_HOME,
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=1024, help="Neighbours that vote.")] = 10,
    timeout: TimeoutOpt = 300,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a study (if new), wait until it is complete and print the neighbour vote with its neighbours.

    --json: {"schema", "kind": "diagnose", "study_key", "duplicate", "failed", "vote": Vote}.
    """
    if not dicom.is_file():
        _fail(f"not found: {dicom}")
    with _query(home) as cxr:
        ingested = cxr.ingest(dicom)
        summary = cxr.wait(ingested.study_key, timeout)
        vote = cxr.diagnose(ingested.study_key, k)
    if as_json:
        body = {"study_key": ingested.study_key, "duplicate": ingested.duplicate, "failed": summary.failed}
        _print_json("diagnose", {**body, "vote": asdict(vote)})
    else:
        typer.echo(f"study {ingested.study_key}{' (already ingested)' if ingested.duplicate else ''}")
        typer.echo("\n".join(_vote_lines(vote)))
    if summary.failed:
        raise typer.Exit(code=1)


def _local_study_keys(home: Path) -> list[str]:
    """Every study the local mesh's study view has seen (read-only; the API has no listing call)."""
    import sqlite3

    db = home / "data" / "studyview" / "views.sqlite"
    if not db.is_file():
        return []
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT study_key FROM stages ORDER BY study_key")]


@app.command(epilog=QUERY_EXIT_CODES)
def report(
    study_keys: Annotated[list[str] | None, typer.Argument(help="Study keys to report.")] = None,
    home: HomeOpt = MESH_HOME,
    every: Annotated[bool, typer.Option("--all", help="Every study the mesh in --home has seen.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for index.html.")] = Path("out/report"),
) -> None:
    """Write the HTML report (one self-contained page) for the chosen studies of the local mesh."""
    from cxrmesh.reporting.html import write_html_report
    from cxrmesh.runtime.blobs import open_blob_store

    if bool(study_keys) == every:
        _fail("give study keys or --all (not both)")
    keys = _local_study_keys(home) if every else list(study_keys or ())
    if not keys:
        _fail(f"no studies in the mesh in {home}")
    with _query(home) as cxr:
        views = [cxr.study_view(key) for key in keys]
    blobs = open_blob_store((home / "data" / "blobs").resolve().as_uri())
    typer.echo(str(write_html_report(views, blobs, out, title="cxrmesh report")))


if __name__ == "__main__":
    app()
