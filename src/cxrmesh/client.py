"""Client helpers for the mesh's gRPC APIs (used by ``cxrmesh ingest``, the demo and the tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cxrmesh.contracts import convert
from cxrmesh.contracts.corpus import manifest_clinical
from cxrmesh.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc

CHUNK = 1 << 20


def chunks(data: bytes, header: ingestion_pb2.IngestHeader) -> Iterator[ingestion_pb2.IngestChunk]:
    """The Ingest stream: header first, then the file in 1 MiB pieces."""
    header.total_bytes = len(data)
    yield ingestion_pb2.IngestChunk(header=header)
    for i in range(0, len(data), CHUNK):
        yield ingestion_pb2.IngestChunk(data=data[i : i + CHUNK])


def ingest_bytes(
    stub: ingestion_pb2_grpc.IngestionServiceStub,
    data: bytes,
    header: ingestion_pb2.IngestHeader | None = None,
    timeout_s: float = 60,
) -> ingestion_pb2.IngestReply:
    return stub.Ingest(chunks(data, header or ingestion_pb2.IngestHeader()), timeout=timeout_s)


def header_from_manifest_row(row: dict[str, Any]) -> ingestion_pb2.IngestHeader:
    """Labels and clinical data of a corpus manifest row (the project's dataset layout)."""
    header = ingestion_pb2.IngestHeader(source_name=Path(row["paths"]["dicom"] or "").name)
    outcome = row.get("outcome", {}).get("intubation_72h")
    header.labels.CopyFrom(
        common_pb2.KnownLabels(
            diagnosis=convert.diagnosis_enum(row.get("diagnosis", "")),
            outcome=convert.outcome_enum(-1 if outcome is None else int(outcome)),
        )
    )
    values = manifest_clinical(row)
    if values is not None:
        values["sex_male"] = bool(values["sex_male"])
        values["comorbidity_count"] = int(values["comorbidity_count"])
        header.clinical.CopyFrom(common_pb2.ClinicalData(**values))
    return header


def manifest_headers(manifest: Path) -> dict[Path, ingestion_pb2.IngestHeader]:
    """DICOM path -> header with its labels/clinical data, from a corpus ``manifest.jsonl``."""
    root = manifest.parent
    out = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        if row.get("paths", {}).get("dicom"):
            out[(root / row["paths"]["dicom"]).resolve()] = header_from_manifest_row(row)
    return out


@dataclass
class IngestResult:
    path: Path
    study_key: str = ""
    duplicate: bool = False
    error_code: str = ""
    error: str = ""


def ingest_file(
    stub: ingestion_pb2_grpc.IngestionServiceStub,
    path: Path,
    header: ingestion_pb2.IngestHeader | None = None,
    timeout_s: float = 60,
) -> IngestResult:
    from cxrmesh.runtime.grpc_server import error_reason

    try:
        reply = ingest_bytes(stub, path.read_bytes(), header, timeout_s)
        return IngestResult(path, reply.study_key, reply.duplicate)
    except grpc.RpcError as exc:
        return IngestResult(path, error_code=exc.code().name, error=f"{error_reason(exc)}: {exc.details()}")


def dicom_files(paths: list[Path]) -> list[Path]:
    """Files given directly, and every *.dcm under folders given."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in (".dcm", "")))
        else:
            out.append(p)
    return out
