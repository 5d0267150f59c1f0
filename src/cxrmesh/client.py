"""The public Python client of the mesh's gRPC API, for the CLI and for other teams.

``CxrClient`` asks the study view, search and ingestion services over mutual TLS and returns typed
results (``StudySummary``, ``SimilarCase``, ``Vote``); a failed call raises one of the typed errors
below (``StudyNotFound``, ``InvalidRequest``, ``Unavailable``, ``PermissionDenied``), mapped from the
gRPC status code and the ``google.rpc.ErrorInfo`` reason the services attach. It needs only the
services' ``host:port`` and a ``TlsFiles`` identity, not the local mesh::

    from cxrmesh.client import CxrClient, Endpoints
    from cxrmesh.runtime.tls import TlsFiles

    tls = TlsFiles(cert=Path("me.pem"), key=Path("me.key"), ca=Path("ca.pem"))
    with CxrClient(Endpoints("mesh:50051", "mesh:50053", "mesh:50057"), tls) as cxr:
        summary = cxr.wait(cxr.ingest(Path("study.dcm")).study_key, timeout_s=300)
        print(summary.vote.diagnosis, [c.study_key for c in cxr.similar(summary.study_key, k=5)])

The lower-level ingest helpers (``chunks``, ``ingest_bytes``, ``ingest_file``, manifest headers) are
kept for ``cxrmesh ingest``, the demo and the tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from cxrmesh.contracts import convert
from cxrmesh.contracts.corpus import manifest_clinical
from cxrmesh.contracts.ingest_stream import ingest_chunks
from cxrmesh.v1 import (
    common_pb2,
    events_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    studyview_pb2,
    studyview_pb2_grpc,
)

if TYPE_CHECKING:
    from cxrmesh.runtime.tls import TlsFiles


def chunks(data: bytes, header: ingestion_pb2.IngestHeader) -> Iterator[ingestion_pb2.IngestChunk]:
    """The Ingest stream: header first, then 1 MiB pieces (``cxrmesh.contracts.ingest_stream``)."""
    return ingest_chunks(data, header)


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


# --- typed errors -------------------------------------------------------------------------------


class CxrError(Exception):
    """A call the mesh refused or could not answer: gRPC status name, ErrorInfo reason, details."""

    def __init__(self, code: str, reason: str, details: str):
        super().__init__(f"{reason or code.lower()}: {details}")
        self.code, self.reason, self.details = code, reason, details


class StudyNotFound(CxrError):
    """No study with this key has reached the mesh (NOT_FOUND)."""


class InvalidRequest(CxrError):
    """The request was malformed: bad key, k out of range, not a DICOM (INVALID_ARGUMENT, ...)."""


class Unavailable(CxrError):
    """A service or its dependency did not answer in time (UNAVAILABLE, DEADLINE_EXCEEDED); retry."""


class PermissionDenied(CxrError):
    """The client certificate or token does not allow this call (PERMISSION_DENIED, UNAUTHENTICATED)."""


_ERRORS: dict[grpc.StatusCode, type[CxrError]] = {
    grpc.StatusCode.NOT_FOUND: StudyNotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
}


def typed_error(exc: grpc.RpcError) -> CxrError:
    """The typed error for a failed gRPC call (``CxrError`` itself for codes without a class)."""
    from cxrmesh.runtime.grpc_server import error_reason

    code = exc.code()  # type: ignore[attr-defined]
    reason = error_reason(exc) if code != grpc.StatusCode.DEADLINE_EXCEEDED else "timeout"
    return _ERRORS.get(code, CxrError)(code.name, reason, exc.details() or "")  # type: ignore[attr-defined]


@contextmanager
def _typed_errors() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        raise typed_error(exc) from None


# --- typed results ------------------------------------------------------------------------------


def _enum_name(full: str, prefix: str) -> str:
    """``DIAGNOSIS_COVID19`` -> ``covid19``; every ``*_UNSPECIFIED`` -> ``unknown``."""
    return "unknown" if full.endswith("_UNSPECIFIED") else full.removeprefix(prefix).lower()


def _fields(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@dataclass(frozen=True)
class SimilarCase:
    """One prior case near the query, with its labels and the clinical data known for it."""

    study_key: str
    similarity: float  # cosine
    diagnosis: str  # normal | covid19 | other_pneumonia | unknown
    outcome: str  # intubated_72h | not_intubated | unknown
    site: str
    age_band: str
    sex: str
    study_date: str  # shifted, YYYY-MM-DD
    clinical: dict[str, Any]  # ClinicalData fields that are set

    @classmethod
    def from_proto(cls, c: search_pb2.SimilarCase) -> SimilarCase:
        return cls(
            study_key=c.study_key,
            similarity=round(float(c.similarity), 6),
            diagnosis=_enum_name(common_pb2.Diagnosis.Name(c.diagnosis), "DIAGNOSIS_"),
            outcome=_enum_name(common_pb2.Outcome.Name(c.outcome), "OUTCOME_"),
            site=c.site,
            age_band=c.age_band,
            sex=c.sex,
            study_date=c.study_date,
            clinical=_fields(c.clinical),
        )


@dataclass(frozen=True)
class Vote:
    """The neighbour vote: the diagnosis, its scores (sum 1) and the neighbours that voted."""

    diagnosis: str  # unknown when no labelled neighbour
    scores: dict[str, float]
    neighbours_used: int
    neighbours: list[SimilarCase]

    @classmethod
    def from_proto(cls, d: search_pb2.DiagnoseReply) -> Vote:
        return cls(
            diagnosis=_enum_name(common_pb2.Diagnosis.Name(d.diagnosis), "DIAGNOSIS_"),
            scores={k: round(float(v), 6) for k, v in sorted(d.scores.items())},
            neighbours_used=d.neighbours_used,
            neighbours=[SimilarCase.from_proto(c) for c in d.cases],
        )


@dataclass(frozen=True)
class Stage:
    name: str  # ingested | embedded | segmented | quantified | prognosis
    state: str  # pending | done | failed
    reason: str  # why it failed
    updated_at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Region:
    """One of the four lung regions: its share of the lungs, opacity and estimated RALE parts."""

    region: str  # right_upper | right_lower | left_upper | left_lower
    area_fraction: float
    opacity_fraction: float
    mean_intensity: float
    rale_extent: int
    rale_density: int
    rale_score: int


@dataclass(frozen=True)
class Prognosis:
    status: str  # done | no_clinical_data | unknown (not yet)
    probability_intubation_72h: float | None
    missing_clinical: list[str]
    neighbours_with_outcome: int
    neighbours_intubated: int


@dataclass(frozen=True)
class StudySummary:
    """What the study view knows of one study, as plain values (``asdict`` gives the JSON schema)."""

    study_key: str
    complete: bool  # every stage done or failed
    failed: bool  # some stage failed
    stages: list[Stage]
    metadata: dict[str, Any]
    regions: list[Region]
    rale_total: int | None  # 0-48 (estimated), None before quantification or when refused
    warnings: list[str]
    quality: str | None  # the image quality gate: pass, flagged, refused; None before quantification
    landmarks_estimated: bool  # the zone split used landmarks estimated from the lung map
    vote: Vote | None
    prognosis: Prognosis | None
    similar: list[SimilarCase]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_proto(cls, v: studyview_pb2.StudyView) -> StudySummary:
        stages = [
            Stage(
                s.name,
                _enum_name(studyview_pb2.StageState.Name(s.state), "STAGE_"),
                s.reason,
                s.updated_at.ToJsonString() if s.HasField("updated_at") else "",
            )
            for s in v.stages
        ]
        state = {s.name: s.state for s in stages}
        q, p = v.quantification, v.prognosis
        regions = [
            Region(
                r.region,
                *(round(float(x), 6) for x in (r.area_fraction, r.opacity_fraction, r.mean_intensity)),
                r.rale_extent,
                r.rale_density,
                r.rale_score,
            )
            for r in q.regions
        ]
        prognosis = None
        if state.get("prognosis") == "done":
            status = _enum_name(events_pb2.PrognosisResult.Status.Name(p.status), "STATUS_")
            prognosis = Prognosis(
                status,
                round(float(p.probability_intubation_72h), 6) if status == "done" else None,
                list(p.missing_clinical),
                p.neighbours_with_outcome,
                p.neighbours_intubated,
            )
        return cls(
            study_key=v.study_key,
            complete=v.complete,
            failed=any(s.state == "failed" for s in stages),
            stages=stages,
            metadata=_fields(v.metadata),
            regions=regions,
            rale_total=q.rale_total if state.get("quantified") == "done" and q.regions else None,
            warnings=list(q.warnings),
            quality=convert.VERDICT_NAMES.get(q.quality.verdict),
            landmarks_estimated=q.landmarks_estimated,
            vote=Vote.from_proto(v.diagnosis) if v.HasField("diagnosis") else None,
            prognosis=prognosis,
            similar=[SimilarCase.from_proto(c) for c in v.similar_cases],
        )


# --- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """``host:port`` of the three public services."""

    ingestion: str
    search: str
    studyview: str


MAX_MESSAGE = 256 << 20  # a DICOM query or a study view with its similar cases

FILTER_KEYS = ("site", "diagnosis", "sex", "age_band", "from", "to", "labelled_only", "same_patient")


def _bad_filter(why: str) -> InvalidRequest:
    return InvalidRequest("INVALID_ARGUMENT", "bad_filter", why)


def case_filter(spec: str) -> search_pb2.CaseFilter:
    """A ``CaseFilter`` from ``key=value,...`` (keys: FILTER_KEYS; repeat a key to allow several values).

    ``diagnosis`` takes normal | covid19 | other_pneumonia; ``from``/``to`` a shifted YYYY-MM-DD;
    ``labelled_only`` and ``same_patient`` take true/false.
    """
    flt = search_pb2.CaseFilter()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in FILTER_KEYS:
            raise _bad_filter(f"{item!r}: use key=value with a key of {', '.join(FILTER_KEYS)}")
        if key == "diagnosis":
            if not convert.diagnosis_enum(value):
                raise _bad_filter(f"unknown diagnosis {value!r}")
            flt.diagnoses.append(convert.diagnosis_enum(value))
        elif key in ("labelled_only", "same_patient"):
            if value.lower() not in ("true", "false"):
                raise _bad_filter(f"{key} takes true or false")
            name = "labelled_only" if key == "labelled_only" else "include_same_patient"
            setattr(flt, name, value.lower() == "true")
        elif key in ("from", "to"):
            setattr(flt, f"study_date_{key}", value)
        else:
            getattr(flt, {"site": "sites", "sex": "sexes", "age_band": "age_bands"}[key]).append(value)
    return flt


Query = str | bytes | Path  # a study key, a DICOM file's bytes, or its path


def _similar_request(
    query: Query, k: int, flt: search_pb2.CaseFilter | None
) -> search_pb2.FindSimilarRequest:
    req = search_pb2.FindSimilarRequest(k=k, filter=flt)
    if isinstance(query, Path):
        req.dicom = query.read_bytes()
    elif isinstance(query, bytes):
        req.dicom = query
    else:
        req.study_key = query
    return req


class CxrClient:
    """Calls to the mesh's public services over one channel each (mutual TLS unless ``tls`` is None).

    Every method raises a ``CxrError`` subclass on failure; use it as a context manager to close the
    channels.
    """

    def __init__(self, endpoints: Endpoints, tls: TlsFiles | None, timeout_s: float = 60):
        from cxrmesh.runtime.tls import open_channel

        self.timeout_s = timeout_s
        options = [(f"grpc.max_{way}_message_length", MAX_MESSAGE) for way in ("send", "receive")]
        self._channels = [open_channel(t, tls, options) for t in astuple(endpoints)]
        ingestion, search, view = self._channels
        self._ingest = ingestion_pb2_grpc.IngestionServiceStub(ingestion)
        self._search = search_pb2_grpc.SearchServiceStub(search)
        self._view = studyview_pb2_grpc.StudyViewServiceStub(view)

    def __enter__(self) -> CxrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def ingest(self, dicom: Path | bytes, header: ingestion_pb2.IngestHeader | None = None) -> IngestResult:
        """Send one DICOM (a file seen before answers with its existing key and ``duplicate``)."""
        path = dicom if isinstance(dicom, Path) else Path("<bytes>")
        with _typed_errors():
            data = dicom.read_bytes() if isinstance(dicom, Path) else dicom
            reply = ingest_bytes(self._ingest, data, header, self.timeout_s)
        return IngestResult(path, reply.study_key, reply.duplicate)

    def study_view(self, study_key: str, similar_k: int = 5) -> studyview_pb2.StudyView:
        """The raw ``StudyView`` message (for the report)."""
        req = studyview_pb2.GetStudyRequest(study_key=study_key, similar_k=similar_k)
        with _typed_errors():
            return self._view.GetStudy(req, timeout=self.timeout_s)

    def study(self, study_key: str, similar_k: int = 5) -> StudySummary:
        return StudySummary.from_proto(self.study_view(study_key, similar_k))

    def watch(self, study_key: str, timeout_s: float = 300) -> Iterator[StudySummary]:
        """Each change of the study's stages until it is complete (``Unavailable`` after ``timeout_s``)."""
        req = studyview_pb2.GetStudyRequest(study_key=study_key)
        with _typed_errors():
            for view in self._view.WatchStudy(req, timeout=timeout_s):
                yield StudySummary.from_proto(view)

    def wait(self, study_key: str, timeout_s: float = 300, similar_k: int = 5) -> StudySummary:
        """The study once complete (every stage done or failed)."""
        for _ in self.watch(study_key, timeout_s):
            pass
        return self.study(study_key, similar_k)

    def similar(
        self, query: Query, k: int = 10, flt: search_pb2.CaseFilter | None = None
    ) -> list[SimilarCase]:
        """Prior cases nearest ``query`` (a study key, DICOM bytes or a DICOM path), best first."""
        with _typed_errors():
            reply = self._search.FindSimilar(_similar_request(query, k, flt), timeout=self.timeout_s)
        return [SimilarCase.from_proto(c) for c in reply.cases]

    def diagnose(self, query: Query, k: int = 10, flt: search_pb2.CaseFilter | None = None) -> Vote:
        """The neighbour vote for ``query``, with the neighbours that voted."""
        with _typed_errors():
            reply = self._search.Diagnose(_similar_request(query, k, flt), timeout=self.timeout_s)
        return Vote.from_proto(reply)
