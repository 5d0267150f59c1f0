"""``cxrmesh demo``: the whole system on one machine, end to end.

Generates a mixed synthetic set (full-resolution DICOM), starts the local mesh, ingests most
studies as a labelled archive of prior cases (labels + clinical data, as a hospital's import would)
and the rest plus the real pydicom-data radiograph as new studies, follows every study over the
study view until it is complete, prints a short report for a few new studies, writes the HTML
report with overlays, and stops the mesh.

The real radiograph takes the hospital's way in and out: it is stored into the stand-in PACS
(Orthanc, ``cxrmesh up --pacs``), which forwards it to cxrmesh's DICOM gateway by C-STORE; once its
study is complete, the PACS sender stores the SEG and the two SRs back into Orthanc, filed under the
original study. The demo waits until they are there and says what the PACS holds.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from cxrmesh.client import header_from_manifest_row, ingest_bytes
from cxrmesh.contracts.corpus import read_manifest
from cxrmesh.local.mesh import Mesh, MeshError
from cxrmesh.local.pacs import pacs_api, results_in_pacs
from cxrmesh.runtime.blobs import open_blob_store
from cxrmesh.synth.corpus import generate
from cxrmesh.v1 import ingestion_pb2, ingestion_pb2_grpc, studyview_pb2, studyview_pb2_grpc

if TYPE_CHECKING:
    from cxrmesh.local.orthanc import OrthancAPI


@dataclass
class DemoResult:
    views: list[studyview_pb2.StudyView]
    report: Path
    text: str
    seconds: float
    failed: int
    pacs: dict[str, int]  # the real radiograph's study in the PACS: instances per modality


def _new_header(row: dict, with_clinical: bool) -> ingestion_pb2.IngestHeader:
    """A new study: no labels (that is what the mesh is for), clinical data only sometimes."""
    full = header_from_manifest_row(row)
    header = ingestion_pb2.IngestHeader(source_name=full.source_name)
    if with_clinical:
        header.clinical.CopyFrom(full.clinical)
    return header


def run(
    out: Path,
    n: int = 40,
    new: int = 6,
    seed: int = 7,
    say: Callable[[str], None] = print,
    timeout_s: float = 600,
) -> DemoResult:
    from pydicom.data import get_testdata_file

    from cxrmesh.reporting.html import write_html_report
    from cxrmesh.reporting.text import text_report

    start = time.monotonic()
    corpus = out / "corpus"
    if not (corpus / "manifest.jsonl").is_file():
        say(f"generating {n} synthetic studies with DICOM into {corpus}")
        generate(corpus, n=n, seed=seed, write_dicom=True)
    rows = [r for r in read_manifest(corpus) if r["paths"].get("dicom")]
    archive, fresh = rows[: len(rows) - new], rows[len(rows) - new :]
    mesh = Mesh(out / "mesh", ports="auto", pacs=True)
    mesh.down()  # a mesh left over from an interrupted demo
    state = mesh.up(progress=lambda m: say(f"starting {m}"))
    try:
        with (
            state.channel("ingestion") as ich,
            state.channel("studyview") as vch,
        ):
            ingest = ingestion_pb2_grpc.IngestionServiceStub(ich)
            view = studyview_pb2_grpc.StudyViewServiceStub(vch)
            real = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
            pacs = pacs_api(mesh.home, state.orthanc)
            say("storing RG1_UNCR.dcm into the PACS (Orthanc), which forwards it to cxrmesh's DICOM gateway")
            pacs.upload(real)
            say(f"ingesting {len(archive)} labelled prior cases and {len(fresh)} new studies over gRPC")
            for row in archive:
                ingest_bytes(
                    ingest, (corpus / row["paths"]["dicom"]).read_bytes(), header_from_manifest_row(row)
                )
            new_keys = []
            for i, row in enumerate(fresh):
                data = (corpus / row["paths"]["dicom"]).read_bytes()
                new_keys.append(
                    ingest_bytes(ingest, data, _new_header(row, with_clinical=i % 3 != 2)).study_key
                )
            # the PACS's forward has it already, or will: either way this is the study's key
            new_keys.append(
                ingest_bytes(ingest, real, ingestion_pb2.IngestHeader(source_name="RG1")).study_key
            )
            say("waiting for every new study to complete")
            views = []
            for key in new_keys:
                req = studyview_pb2.GetStudyRequest(study_key=key)
                for _ in view.WatchStudy(req, timeout=timeout_s):
                    pass
                views.append(
                    view.GetStudy(studyview_pb2.GetStudyRequest(study_key=key, similar_k=5), timeout=30)
                )
        say("waiting for the results of RG1 to be filed in the PACS")
        in_pacs = _wait_for_results(pacs, pydicom.dcmread(io.BytesIO(real), stop_before_pixels=True))
        say(f"the PACS holds under RG1's original study: {_counts(in_pacs)}")
        blobs = open_blob_store((out / "mesh" / "data" / "blobs").resolve().as_uri())
        report = write_html_report(views, blobs, out / "report", title="cxrmesh demo")
        text = text_report(views, max_studies=4)
    finally:
        mesh.down()
    failed = sum(any(s.state == studyview_pb2.STAGE_FAILED for s in v.stages) for v in views)
    return DemoResult(views, report, text, time.monotonic() - start, failed, in_pacs)


def _wait_for_results(pacs: OrthancAPI, original: pydicom.Dataset, timeout_s: float = 180) -> dict[str, int]:
    """The original's study in the PACS once it holds the SEG and both SRs (or says what is missing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = results_in_pacs(pacs, str(original.StudyInstanceUID))
        if counts.get("SEG", 0) >= 1 and counts.get("SR", 0) >= 2:
            return counts
        if time.monotonic() > deadline:
            raise MeshError(
                f"the results of RG1 did not reach the PACS within {timeout_s:.0f} s"
                f" (it holds {_counts(counts)}); see the pacs_sender and gateway logs in the mesh's logs"
            )
        time.sleep(1.0)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {modality}" for modality, n in sorted(counts.items())) or "nothing"
