"""Commands that ask the running mesh about studies (study, watch, similar, diagnose, report)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cxrmesh.client import CxrClient, SimilarCase, StudySummary, Vote

from cxrmesh.cli.app import app, fail
from cxrmesh.cli.stack import MESH_HOME, HomeOpt

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


def _study_lines(s: StudySummary, marks: Sequence[str] = (), reasons: Collection[str] = ()) -> list[str]:
    """The study as text; ``marks`` (landmarks estimated, quality flagged/refused) print as lines of their
    own and ``reasons`` (the quality gate's, already in a mark) are not repeated as warnings."""
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
    lines += [f"warning: {w}" for w in s.warnings if w not in reasons]
    lines += list(marks)
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
    from cxrmesh.client import StudySummary
    from cxrmesh.reporting import views

    with _query(home) as cxr:
        view = cxr.study_view(study_key, similar_k)
    summary = StudySummary.from_proto(view)
    if as_json:
        _print_json("study", {"study": summary.to_json()})
    else:
        typer.echo("\n".join(_study_lines(summary, views.mark_lines(view), views.quality_reasons(view))))


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
        fail(f"not found: {dicom}")
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
    from cxrmesh.local.mesh import MeshState
    from cxrmesh.services.studyview.store import study_keys

    state = MeshState.load(home.resolve())
    if state is None:
        return []
    db = state.database()
    try:
        return study_keys(db)
    finally:
        db.close()


@app.command(epilog=QUERY_EXIT_CODES)
def report(
    study_keys: Annotated[list[str] | None, typer.Argument(help="Study keys to report.")] = None,
    home: HomeOpt = MESH_HOME,
    every: Annotated[bool, typer.Option("--all", help="Every study the mesh in --home has seen.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder of the report.")] = Path("out/report"),
) -> None:
    """Write the HTML report (index.html and one self-contained page per study under studies/) for the
    chosen studies of the local mesh."""
    from cxrmesh.reporting.html import write_html_report
    from cxrmesh.reporting.views import mark_lines, short_key
    from cxrmesh.runtime.blobs import open_blob_store

    if bool(study_keys) == every:
        fail("give study keys or --all (not both)")
    keys = _local_study_keys(home) if every else list(study_keys or ())
    if not keys:
        fail(f"no studies in the mesh in {home}")
    with _query(home) as cxr:
        views = [cxr.study_view(key) for key in keys]
    blobs = open_blob_store((home / "data" / "blobs").resolve().as_uri())
    typer.echo(str(write_html_report(views, blobs, out, title="cxrmesh report")))
    for view in views:  # the marks a reader must not miss; stdout stays the index path alone
        for line in mark_lines(view):
            typer.echo(f"study {short_key(view.study_key)}: {line}", err=True)
