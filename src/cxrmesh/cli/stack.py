"""Commands of the local mesh: up, down, status, ingest, and the demo that runs on it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrmesh.cli.app import app, fail
from cxrmesh.contracts.topics import PARTITIONS

if TYPE_CHECKING:
    from cxrmesh.local.mesh import MeshState

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
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="Processes of every service (they share the work).")
    ] = 1,
    database: Annotated[
        str,
        typer.Option("--database", help="sqlite (one file in <home>/data) or postgres (a local cluster)."),
    ] = "sqlite",
    milvus: Annotated[
        str, typer.Option("--milvus", help="lite (Milvus Lite) or server (the standalone Milvus server).")
    ] = "lite",
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions", min=1, envvar="CXRMESH_KAFKA_PARTITIONS", help="Partitions per new topic."
        ),
    ] = PARTITIONS,
    broker_storage: Annotated[
        str,
        typer.Option(
            "--broker-storage",
            help="memory (lost on a broker restart) or s3 (a journalled local S3 in <home>/s3: kept).",
        ),
    ] = "memory",
    monitoring: Annotated[
        bool,
        typer.Option(
            "--monitoring", help="Also Prometheus and Alertmanager (loopback only) with the cluster's rules."
        ),
    ] = False,
    dicom_sender: Annotated[
        list[str] | None,
        typer.Option(
            "--dicom-sender",
            metavar="AE_TITLE",
            help="Calling AE title allowed to C-STORE to the gateway (repeat for several; none: nobody).",
        ),
    ] = None,
    pacs: Annotated[
        bool,
        typer.Option(
            "--pacs",
            help="Also Orthanc as a stand-in PACS: forwards radiographs to cxrmesh, receives the results.",
        ),
    ] = False,
) -> None:
    """Start the local mesh (broker, database, Milvus, tritonserver, services) and wait until healthy.

    Mutual TLS by default: certificates come from the local CA in <home>/pki (made once, reused).
    With --replicas N every service runs N processes sharing its consumer group and the database.
    With --monitoring, Prometheus scrapes every process and evaluates k8s/monitoring's rules.
    The DICOM gateway (AE title CXRMESH) accepts C-STORE only from the --dicom-sender AE titles.
    """
    from cxrmesh.local.mesh import Mesh, MeshError

    if ports not in ("fixed", "auto"):
        fail("--ports must be 'fixed' or 'auto'")
    if insecure:
        typer.secho(
            "WARNING: --insecure: plaintext gRPC without client certificates, debugging only",
            fg=typer.colors.RED,
            err=True,
        )
    try:
        mesh = Mesh(
            home,
            ports=ports,
            insecure=insecure,
            replicas=replicas,
            database=database,
            milvus=milvus,
            partitions=partitions,
            broker_storage=broker_storage,
            monitoring=monitoring,
            dicom_senders=dicom_sender or (),
            pacs=pacs,
        )
        state = mesh.up(timeout, progress=lambda m: typer.echo(f"starting {m}"))
    except MeshError as exc:
        fail(str(exc))
    typer.echo(f"mesh up: ingestion at {state.endpoint('ingestion')}, search at {state.endpoint('search')}")
    if replicas > 1:
        typer.echo(f"{replicas} replicas of every service; `cxrmesh status --home {home}` lists them")
    typer.echo(f"state and logs in {home}; stop with `cxrmesh down --home {home}`")
    if not insecure:
        typer.echo(f"mutual TLS on every port; the CA and client certificate are in {home / 'pki'}")
    _echo_dicom(state)
    _echo_monitoring(state)


def _echo_dicom(state: MeshState) -> None:
    """Where DICOM senders, STOW-RS callers and the stand-in PACS's users go (nothing when absent)."""
    from cxrmesh.local.pacs import GATEWAY_AE, STOW_TOKEN, orthanc_sign_in

    if state.dicom:
        typer.echo(f"{'dicom:':<14} AE {GATEWAY_AE} at {state.dicom} (C-ECHO, C-STORE of CR/DX)")
    if state.stow:
        token = Path(state.home) / STOW_TOKEN
        typer.echo(f"{'stow-rs:':<14} {state.stow}/studies (bearer token in {token})")
    if state.orthanc:
        typer.echo(f"{'pacs:':<14} Orthanc at {state.orthanc} ({orthanc_sign_in(Path(state.home))})")


def _echo_monitoring(state: MeshState) -> None:
    """The monitoring UIs of a mesh started with --monitoring (nothing otherwise)."""
    from cxrmesh.local.prometheus import WEB_USER, monitoring_urls, web_password

    parts = [(p.name, p.endpoint) for p in state.procs if p.kind == "monitoring"]
    for what, url in monitoring_urls(parts).items():
        typer.echo(f"{what + ':':<14} {url}")
    if parts:
        typer.echo(f"{'sign in:':<14} user {WEB_USER}, password in {web_password(Path(state.home))}")


@app.command()
def down(home: HomeOpt = MESH_HOME) -> None:
    """Stop the local mesh started from ``--home`` (services first, then Triton, Milvus, broker)."""
    from cxrmesh.local.mesh import Mesh

    stopped = Mesh(home).down()
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command()
def status(home: HomeOpt = MESH_HOME) -> None:
    """Processes of the local mesh with their health; exit 1 if any is not healthy."""
    from cxrmesh.local.mesh import Mesh, MeshState

    rows = Mesh(home).status()
    if not rows:
        typer.echo(f"no mesh in {home}")
        raise typer.Exit(code=1)
    for r in rows:
        typer.echo(f"{r['name']:<18} pid {r['pid']:<8} {r['health']:<12} {r['endpoint']:<24} {r['log']}")
    state = MeshState.load(home.resolve())
    if state is not None:
        _echo_dicom(state)
        _echo_monitoring(state)
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
            fail(f"no mesh in {home}: start one with `cxrmesh up` or pass --target host:port")
        target = state.endpoint("ingestion")
    try:  # the client certificate of the mesh in --home (another host's target too)
        tls = (state or MeshState(home=str(home.resolve()))).tls()
    except MeshError as exc:
        fail(str(exc))
    files = dicom_files(paths)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        fail(f"not found: {', '.join(missing[:5])}")
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
        fail(str(exc))
    typer.echo(result.text)
    typer.echo(f"PACS (Orthanc) holds under RG1's original study: {result.pacs}")
    typer.echo(f"HTML report: {result.report}   ({len(result.views)} studies, {result.seconds:.0f} s)")
    if result.failed:
        typer.secho(f"{result.failed} studies have failed stages (see the report)", fg=typer.colors.YELLOW)


# --- query commands: the public gRPC API through cxrmesh.client ----------------------------------
