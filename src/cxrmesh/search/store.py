"""Milvus case store: one entity per study (primary key ``study_key``), COSINE search with typed filters.

Design points (each one a place where the obvious code is wrong):

* Portability. The same code runs on Milvus Lite (tests, laptops) and a real Milvus server, so it relies on
  nothing Lite does by accident: reads that must see a preceding write (``get``, ``count``, the label
  read-modify-write) ask for Strong consistency explicitly; searches use the configured level (Bounded by
  default, as the server does). Index build parameters are sent nested under ``params``, the one form both
  Lite and the server read.
* Filters are built from typed, allow-listed values and every string literal is escaped as well, so a
  value can never change the expression's structure (``"M\\" or 1==1"`` is refused). pymilvus' own
  ``get()`` pastes primary keys into an expression unescaped, which is why ``get`` here builds its own.
* Failures become the typed errors of ``cxrmesh.search.errors``. Only :class:`StoreUnavailable` is retried,
  by :class:`RetryPolicy`; every Milvus call carries a timeout, because without one pymilvus retries a dead
  server 75 times with back-off (minutes).
* No identifiers leave through logs or metrics: metric labels are the operation name and ok/error only;
  error and log messages never contain keys, and string literals in Milvus' messages (which echo the
  filter expression, patient key included) are redacted, also in pymilvus' own ERROR log lines.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date
from typing import Any, TypeVar

import grpc
import numpy as np
from prometheus_client import Counter, Histogram
from pymilvus import DataType, MilvusClient
from pymilvus.client.types import LoadState, Status
from pymilvus.exceptions import (
    CollectionNotExistException,
    ConnectError,
    ConnectionConfigException,
    DataNotMatchException,
    DataTypeNotMatchException,
    ErrorCode,
    MilvusException,
    MilvusUnavailableException,
    ParamError,
)
from pymilvus.grpc_gen import common_pb2

from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.search.errors import InvalidQuery, NotFound, SchemaMismatch, StoreError, StoreUnavailable

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_SECONDS = Histogram(
    "cxrmesh_milvus_request_seconds",
    "Time of one case-store operation against Milvus, retries included.",
    ["operation", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RETRIES = Counter(
    "cxrmesh_milvus_retries",  # exposed as cxrmesh_milvus_retries_total
    "Case-store operations retried after Milvus was unavailable.",
    ["operation"],
)

INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW")
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
MAX_K = 1024
SEXES = ("M", "F", "O")
OUTCOMES = (-1, 0, 1)

# Per-index defaults; build params are what the server keeps, search params are sent with every search.
DEFAULT_BUILD_PARAMS: dict[str, dict[str, int]] = {
    "FLAT": {},
    "IVF_FLAT": {"nlist": 1024},
    "HNSW": {"M": 16, "efConstruction": 200},
}
DEFAULT_SEARCH_PARAMS: dict[str, dict[str, int]] = {
    "FLAT": {},
    "IVF_FLAT": {"nprobe": 32},
    "HNSW": {"ef": 128},
}

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")
_AGE_BAND_RE = re.compile(r"[0-9]{1,3}(-[0-9]{1,3}|\+)")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_COLLECTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_REF_MAX = 1024
_CLINICAL_MAX = 2048
_BATCH = 512  # rows per upsert / keys per `in [...]` list: well under gRPC's 64 MiB and expression limits
_MAX_EXCLUDED = 1024

# Field name -> (type, type params). study_day (yyyymmdd, 0 unknown) exists for date-range filters, which
# are integer comparisons on every Milvus version; study_date keeps the text the caller gave.
_SCALARS: dict[str, tuple[DataType, dict[str, int]]] = {
    "study_key": (DataType.VARCHAR, {"max_length": 128}),
    "patient_key": (DataType.VARCHAR, {"max_length": 128}),
    "model_version": (DataType.VARCHAR, {"max_length": 64}),
    "site": (DataType.VARCHAR, {"max_length": 64}),
    "diagnosis": (DataType.VARCHAR, {"max_length": 32}),
    "outcome": (DataType.INT8, {}),
    "age_band": (DataType.VARCHAR, {"max_length": 16}),
    "sex": (DataType.VARCHAR, {"max_length": 8}),
    "study_date": (DataType.VARCHAR, {"max_length": 10}),
    "study_day": (DataType.INT32, {}),
    "attention_ref": (DataType.VARCHAR, {"max_length": _REF_MAX}),
    # the case's clinical variables as compact JSON (returned with similar cases, never filtered on)
    "clinical": (DataType.VARCHAR, {"max_length": _CLINICAL_MAX}),
}
_VECTOR = "embedding"
_OUTPUT_FIELDS = [*_SCALARS, _VECTOR]

_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
# String literals within one line, except the file names of traceback lines (File "/path/x.py", line 1).
_LITERAL_RE = re.compile(r"(?<!File )\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'")


# ----------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of :class:`StoreUnavailable` failures only (timeouts, refused connections, rate limits).

    ``attempts`` counts the first try. Before retry n (1-based) the store sleeps
    ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))``, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so that replicas that failed together do not retry together.
    Invalid queries, schema mismatches and other server errors are never retried: they would fail again.
    """

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be an int >= 1 (1 = no retry)")
        if not (self.initial_backoff_s >= 0 and self.max_backoff_s >= self.initial_backoff_s):
            raise ValueError("RetryPolicy needs 0 <= initial_backoff_s <= max_backoff_s")
        if not self.multiplier >= 1:
            raise ValueError("RetryPolicy.multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy.jitter must be in [0, 1)")

    def backoff_s(self, retry: int) -> float:
        """Sleep before retry number ``retry`` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        if self.jitter:
            base *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return base


@dataclass
class CaseRecord:
    """One study as the store holds it. "" / -1 mean unknown; labels may arrive after the embedding."""

    study_key: str
    patient_key: str
    embedding: np.ndarray  # (dim,) float32, unit length
    model_version: str
    site: str = ""
    diagnosis: str = ""  # "" unknown, else one of DIAGNOSES
    outcome: int = -1  # -1 unknown, 0/1 intubated within 72 h
    age_band: str = ""
    sex: str = ""
    study_date: str = ""  # YYYY-MM-DD
    attention_ref: str = ""  # blob reference of the attention map
    clinical: str = ""  # clinical variables as JSON ("" unknown)

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare arrays with ==, whose truth value is ambiguous.
        if not isinstance(other, CaseRecord):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name))
            if f.name == "embedding"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, holds an array


@dataclass(frozen=True)
class Neighbour:
    """A stored case and its cosine similarity to the query (embeddings are unit length)."""

    record: CaseRecord
    similarity: float


@dataclass(frozen=True)
class CaseFilter:
    """Which stored cases may be returned; empty fields do not restrict.

    ``model_version`` (an addition to the first API) should always be set by the service: embeddings of
    two model versions live in different spaces and their cosine means nothing.
    """

    sites: tuple[str, ...] = ()
    diagnoses: tuple[str, ...] = ()
    sexes: tuple[str, ...] = ()
    age_bands: tuple[str, ...] = ()
    labelled_only: bool = False
    study_date_from: str = ""
    study_date_to: str = ""
    exclude_patient_key: str = ""  # a patient's own other studies must not count as "similar prior cases"
    exclude_study_keys: tuple[str, ...] = ()
    model_version: str = ""


# ----------------------------------------------------------------------------- validation and expressions


def _check_str(value: object, what: str, *, pattern: re.Pattern[str] | None = None, allowed=()) -> str:
    """A validated string; the message names the field and the rule, never the value (it may be a key)."""
    if not isinstance(value, str):
        raise InvalidQuery(f"{what} must be a string, got {type(value).__name__}")
    if allowed and value not in allowed:
        raise InvalidQuery(f"{what} must be one of {', '.join(allowed)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidQuery(f"{what} must match {pattern.pattern}")
    return value


def _check_key(value: object, what: str) -> str:
    return _check_str(value, what, pattern=_KEY_RE)


def _check_date(value: object, what: str) -> str:
    text = _check_str(value, what, pattern=_DATE_RE)
    try:
        date.fromisoformat(text)
    except ValueError:
        raise InvalidQuery(f"{what} is not a calendar date (YYYY-MM-DD)") from None
    return text


def _study_day(study_date: str) -> int:
    return int(study_date.replace("-", "")) if study_date else 0


def _quote(value: str) -> str:
    """A Milvus string literal. Values are allow-listed before this; escaping is the second fence."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _str_list(values: object, what: str, check: Callable[[object, str], str]) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        # A bare string would iterate as characters and silently filter on each letter.
        raise InvalidQuery(f"{what} must be a tuple of strings, not {type(values).__name__}")
    out: list[str] = []
    for v in values:
        v = check(v, f"{what} entry")
        if v not in out:
            out.append(v)
    return out


def _in_list(field_name: str, values: Sequence[str], *, negate: bool = False) -> str:
    op = "not in" if negate else "in"
    return f"{field_name} {op} [{', '.join(_quote(v) for v in values)}]"


def filter_expression(flt: CaseFilter) -> str:
    """The Milvus boolean expression for a filter ("" when it does not restrict); InvalidQuery if a value
    is not one the schema can hold, which also refuses anything that would alter the expression."""
    if not isinstance(flt, CaseFilter):
        raise InvalidQuery(f"filter must be a CaseFilter, got {type(flt).__name__}")
    parts: list[str] = []
    if sites := _str_list(flt.sites, "filter.sites", lambda v, w: _check_str(v, w, pattern=_SITE_RE)):
        parts.append(_in_list("site", sites))
    if diagnoses := _str_list(
        flt.diagnoses, "filter.diagnoses", lambda v, w: _check_str(v, w, allowed=DIAGNOSES)
    ):
        parts.append(_in_list("diagnosis", diagnoses))
    if sexes := _str_list(flt.sexes, "filter.sexes", lambda v, w: _check_str(v, w, allowed=SEXES)):
        parts.append(_in_list("sex", sexes))
    if bands := _str_list(
        flt.age_bands, "filter.age_bands", lambda v, w: _check_str(v, w, pattern=_AGE_BAND_RE)
    ):
        parts.append(_in_list("age_band", bands))
    if not isinstance(flt.labelled_only, bool):
        raise InvalidQuery("filter.labelled_only must be a bool")
    if flt.labelled_only:
        parts.append('diagnosis != ""')
    day_from = (
        _study_day(_check_date(flt.study_date_from, "filter.study_date_from")) if flt.study_date_from else 0
    )
    day_to = _study_day(_check_date(flt.study_date_to, "filter.study_date_to")) if flt.study_date_to else 0
    if day_from and day_to and day_from > day_to:
        raise InvalidQuery("filter.study_date_from is after filter.study_date_to")
    if day_from or day_to:
        parts.append("study_day > 0")  # a date range never matches a study of unknown date
        if day_from:
            parts.append(f"study_day >= {day_from}")
        if day_to:
            parts.append(f"study_day <= {day_to}")
    if flt.exclude_patient_key:
        parts.append(
            f"patient_key != {_quote(_check_key(flt.exclude_patient_key, 'filter.exclude_patient_key'))}"
        )
    excluded = _str_list(flt.exclude_study_keys, "filter.exclude_study_keys", _check_key)
    if len(excluded) > _MAX_EXCLUDED:
        raise InvalidQuery(f"filter.exclude_study_keys holds more than {_MAX_EXCLUDED} keys")
    if excluded:
        parts.append(_in_list("study_key", excluded, negate=True))
    if flt.model_version:
        version = _check_str(flt.model_version, "filter.model_version", pattern=_MODEL_RE)
        parts.append(f"model_version == {_quote(version)}")
    return " and ".join(parts)


def _redact(text: str) -> str:
    """Milvus echoes filter expressions in its errors; their string literals may be keys."""
    return _LITERAL_RE.sub('"…"', text)


class _RedactLiterals(logging.Filter):
    """Rewrites pymilvus' ERROR lines (which quote the server's message) without string literals."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redact(record.getMessage())
        record.args = ()
        return True


_REDACT_INSTALLED = threading.Lock()
_redact_done = False


def _install_log_redaction() -> None:
    global _redact_done
    with _REDACT_INSTALLED:
        if not _redact_done:
            logging.getLogger("pymilvus.decorators").addFilter(_RedactLiterals())
            _redact_done = True


def _translate(operation: str, exc: Exception) -> StoreError:
    """Map a pymilvus / gRPC failure to the store's error classes (the only place that knows codes)."""
    if isinstance(exc, grpc.RpcError):
        code: Any = exc.code()
        message = exc.details() or ""
    elif isinstance(exc, MilvusException):
        code, message = exc.code, exc.message
    else:  # pragma: no cover - callers only pass the two above
        code, message = None, str(exc)
    detail = _redact(str(message)).splitlines()[0][:300] if message else ""
    where = f"milvus {operation}"
    if isinstance(code, grpc.StatusCode):
        if code in _UNAVAILABLE_CODES:
            return StoreUnavailable(f"{where}: {code.name}: {detail}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidQuery(f"{where} rejected the request: {detail}")
    if isinstance(exc, MilvusException):
        if (
            isinstance(exc, (ConnectError, MilvusUnavailableException))
            or exc.code == Status.CONNECT_FAILED  # pymilvus could not (re)connect
            or exc.retriable  # the server says so (e.g. service not ready)
            or exc.code == ErrorCode.RATE_LIMIT
            or exc.compatible_code == common_pb2.RateLimit
        ):
            return StoreUnavailable(f"{where}: code {exc.code}: {detail}")
        if isinstance(exc, CollectionNotExistException) or exc.code == ErrorCode.COLLECTION_NOT_FOUND:
            return StoreError(f"{where}: the collection does not exist; call ensure_collection() first")
        if (
            isinstance(exc, (ParamError, DataTypeNotMatchException, DataNotMatchException))
            or exc.is_input_error
        ):
            return InvalidQuery(f"{where} rejected the request: {detail}")
        return StoreError(f"{where}: code {exc.code}: {detail}")
    return StoreError(f"{where}: {detail}")


# ----------------------------------------------------------------------------- the store


class CaseStore:
    """Prior cases in one Milvus collection; thread-safe, connects lazily (so a service can start and
    report not-ready while Milvus is still coming up)."""

    def __init__(
        self,
        uri: str,
        token: str = "",
        collection: str = "cxr_cases",
        dim: int = 128,
        index: str = "FLAT",
        retry: RetryPolicy = RetryPolicy(),
        consistency: str = "Bounded",
        *,
        timeout_s: float = 5.0,
        ddl_timeout_s: float = 120.0,
        build_params: Mapping[str, int] | None = None,
        search_params: Mapping[str, int] | None = None,
    ) -> None:
        if not isinstance(uri, str) or not uri:
            raise ValueError("uri must be a Milvus address (http://host:port) or a Milvus Lite path (*.db)")
        if not _COLLECTION_RE.fullmatch(collection):
            raise ValueError(f"collection must match {_COLLECTION_RE.pattern}")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 32768:
            raise ValueError("dim must be an int in 1..32768")
        if index not in INDEX_TYPES:
            raise ValueError(f"index must be one of {', '.join(INDEX_TYPES)}")
        if consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}")
        if not (timeout_s > 0 and ddl_timeout_s > 0):
            raise ValueError("timeouts must be > 0 seconds")
        self.uri, self.collection, self.dim, self.index = uri, collection, dim, index
        self.retry, self.consistency = retry, consistency
        self.timeout_s, self.ddl_timeout_s = float(timeout_s), float(ddl_timeout_s)
        self.build_params = dict(DEFAULT_BUILD_PARAMS[index] if build_params is None else build_params)
        self.search_params = dict(DEFAULT_SEARCH_PARAMS[index] if search_params is None else search_params)
        self._token = token
        self._client_obj: MilvusClient | None = None
        self._lock = threading.Lock()
        self._closed = False
        _install_log_redaction()

    def __repr__(self) -> str:  # no token
        return f"CaseStore(collection={self.collection!r}, dim={self.dim}, index={self.index!r})"

    def __enter__(self) -> CaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> MilvusClient:
        with self._lock:
            if self._closed:
                raise StoreError("the case store is closed")
            if self._client_obj is None:
                try:
                    self._client_obj = MilvusClient(uri=self.uri, token=self._token, timeout=self.timeout_s)
                except ConnectionConfigException as e:
                    raise StoreError(f"bad Milvus address: {_redact(e.message)}") from None
                except MilvusException as e:
                    raise StoreUnavailable(f"cannot connect to Milvus: {_redact(e.message)}") from e
            return self._client_obj

    def _run(self, operation: str, fn: Callable[[MilvusClient], T], *, retry: bool = True) -> T:
        """Run ``fn`` with the retry policy; one histogram observation per call, retries included."""
        start = time.monotonic()
        outcome = "error"
        attempts = self.retry.attempts if retry else 1
        try:
            attempt = 1
            while True:
                try:
                    try:
                        result = fn(self._client())
                    except (MilvusException, grpc.RpcError) as e:
                        err = _translate(operation, e)
                        # Keep the transport cause for debugging; drop server messages, which may echo the
                        # filter expression (keys) in a logged traceback. The redacted gist is in `err`.
                        raise err from (e if isinstance(err, StoreUnavailable) else None)
                    outcome = "ok"
                    return result
                except StoreUnavailable as e:
                    if attempt >= attempts:
                        if retry:  # a failed health check is reported by its caller, not logged here
                            _LOG.warning("milvus %s unavailable after %d attempts: %s", operation, attempt, e)
                        raise
                    delay = self.retry.backoff_s(attempt)
                    RETRIES.labels(operation=operation).inc()
                    _LOG.info(
                        "milvus %s unavailable (attempt %d/%d), retrying in %.2fs: %s",
                        operation,
                        attempt,
                        attempts,
                        delay,
                        e,
                    )
                    time.sleep(delay)
                    attempt += 1
        finally:
            REQUEST_SECONDS.labels(operation=operation, outcome=outcome).observe(time.monotonic() - start)

    def _vector(self, vector: object, what: str) -> np.ndarray:
        try:
            v = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidQuery(f"{what} must be an array of {self.dim} floats") from None
        if v.shape != (self.dim,):
            raise InvalidQuery(f"{what} has shape {v.shape}, the store holds {self.dim}-d embeddings")
        if not np.isfinite(v).all():
            raise InvalidQuery(f"{what} has NaN or infinite values")
        if float(np.linalg.norm(v)) < 1e-6:
            raise InvalidQuery(f"{what} is all zeros; cosine similarity is undefined")
        return v

    def _row(self, rec: CaseRecord, i: int) -> dict[str, Any]:
        """Validated Milvus row for a record; messages name the batch index, not the key."""
        if not isinstance(rec, CaseRecord):
            raise InvalidQuery(f"records[{i}] is a {type(rec).__name__}, not a CaseRecord")
        w = f"records[{i}]"
        if rec.site:
            _check_str(rec.site, f"{w}.site", pattern=_SITE_RE)
        if rec.diagnosis:
            _check_str(rec.diagnosis, f"{w}.diagnosis", allowed=DIAGNOSES)
        if isinstance(rec.outcome, bool) or rec.outcome not in OUTCOMES:
            raise InvalidQuery(f"{w}.outcome must be -1 (unknown), 0 or 1")
        if rec.age_band:
            _check_str(rec.age_band, f"{w}.age_band", pattern=_AGE_BAND_RE)
        if rec.sex:
            _check_str(rec.sex, f"{w}.sex", allowed=SEXES)
        if rec.study_date:
            _check_date(rec.study_date, f"{w}.study_date")
        ref = _check_str(rec.attention_ref, f"{w}.attention_ref")
        if len(ref) > _REF_MAX or not ref.isprintable():
            raise InvalidQuery(f"{w}.attention_ref must be printable and at most {_REF_MAX} characters")
        clinical = _check_str(rec.clinical, f"{w}.clinical")
        if len(clinical) > _CLINICAL_MAX or not clinical.isprintable():
            raise InvalidQuery(f"{w}.clinical must be printable and at most {_CLINICAL_MAX} characters")
        return {
            "study_key": _check_key(rec.study_key, f"{w}.study_key"),
            "patient_key": _check_key(rec.patient_key, f"{w}.patient_key"),
            _VECTOR: self._vector(rec.embedding, f"{w}.embedding"),
            "model_version": _check_str(rec.model_version, f"{w}.model_version", pattern=_MODEL_RE),
            "site": rec.site,
            "diagnosis": rec.diagnosis,
            "outcome": int(rec.outcome),
            "age_band": rec.age_band,
            "sex": rec.sex,
            "study_date": rec.study_date,
            "study_day": _study_day(rec.study_date),
            "attention_ref": ref,
            "clinical": clinical,
        }

    @staticmethod
    def _record(entity: Mapping[str, Any]) -> CaseRecord:
        return CaseRecord(
            study_key=str(entity["study_key"]),
            patient_key=str(entity["patient_key"]),
            embedding=np.asarray(entity[_VECTOR], dtype=np.float32),
            model_version=str(entity["model_version"]),
            site=str(entity["site"]),
            diagnosis=str(entity["diagnosis"]),
            outcome=int(entity["outcome"]),
            age_band=str(entity["age_band"]),
            sex=str(entity["sex"]),
            study_date=str(entity["study_date"]),
            attention_ref=str(entity["attention_ref"]),
            clinical=str(entity["clinical"]),
        )

    def _query_keys(self, c: MilvusClient, keys: Sequence[str], output_fields: list[str]) -> list[dict]:
        """Strong read by primary key with an escaped expression (pymilvus get() does not escape)."""
        return c.query(
            self.collection,
            filter=_in_list("study_key", keys),
            output_fields=output_fields,
            timeout=self.timeout_s,
            consistency_level="Strong",
        )

    # ------------------------------------------------------------------ schema

    def _schema(self, c: MilvusClient) -> Any:
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        for name, (dtype, params) in _SCALARS.items():
            schema.add_field(name, dtype, is_primary=(name == "study_key"), **params)
        schema.add_field(_VECTOR, DataType.FLOAT_VECTOR, dim=self.dim)
        return schema

    def _index_params(self, c: MilvusClient) -> Any:
        params = c.prepare_index_params()
        # Nested under "params": Milvus Lite reads only that form; the server accepts it too.
        params.add_index(
            _VECTOR, index_type=self.index, metric_type="COSINE", params={"params": dict(self.build_params)}
        )
        return params

    def _check_schema(self, desc: Mapping[str, Any]) -> None:
        have = {f["name"]: f for f in desc.get("fields", [])}
        want = {name: (dtype, params) for name, (dtype, params) in _SCALARS.items()}
        want[_VECTOR] = (DataType.FLOAT_VECTOR, {"dim": self.dim})
        problems: list[str] = []
        for name, (dtype, params) in want.items():
            f = have.get(name)
            if f is None:
                problems.append(f"field {name} is missing")
            elif f.get("type") != dtype:
                problems.append(f"field {name} is {f.get('type')!r}, expected {dtype!r}")
            elif "dim" in params and int(f.get("params", {}).get("dim", -1)) != params["dim"]:
                problems.append(
                    f"{name} has dim {f.get('params', {}).get('dim')}, this store uses {params['dim']}"
                )
            elif (
                "max_length" in params
                and int(f.get("params", {}).get("max_length", 0)) < params["max_length"]
            ):
                problems.append(f"field {name} is shorter than {params['max_length']} characters")
        if not have.get("study_key", {}).get("is_primary"):
            problems.append("study_key is not the primary key")
        extra = sorted(set(have) - set(want))
        if extra:
            problems.append(f"unexpected fields {', '.join(extra)}")
        if problems:
            raise SchemaMismatch(
                f"collection {self.collection} does not match this store: {'; '.join(problems)}. "
                "Point the store at another collection or migrate this one."
            )

    def _check_index(self, c: MilvusClient, index_name: str) -> None:
        desc = c.describe_index(self.collection, index_name, timeout=self.timeout_s) or {}
        metric = str(desc.get("metric_type", "")).upper()
        kind = str(desc.get("index_type", "")).upper()
        if metric != "COSINE":
            raise SchemaMismatch(
                f"collection {self.collection} is indexed with metric {metric or '?'}, not COSINE; "
                "its similarities would not be cosines"
            )
        if kind != self.index:
            raise SchemaMismatch(
                f"collection {self.collection} has a {kind or '?'} index, this store is configured for "
                f"{self.index}; configure index={kind!r} or rebuild the index"
            )

    def ensure_collection(self) -> None:
        """Create the collection, its COSINE index and load it if needed; idempotent and safe when two
        replicas start together. SchemaMismatch if an existing collection cannot hold this store's rows."""

        def run(c: MilvusClient) -> None:
            if not c.has_collection(self.collection, timeout=self.timeout_s):
                try:
                    c.create_collection(
                        self.collection,
                        schema=self._schema(c),
                        index_params=self._index_params(c),
                        consistency_level=self.consistency,
                        timeout=self.ddl_timeout_s,
                    )
                except MilvusException:
                    # Another replica may have created it between our check and our create.
                    if not c.has_collection(self.collection, timeout=self.timeout_s):
                        raise
            self._check_schema(c.describe_collection(self.collection, timeout=self.timeout_s))
            indexes = c.list_indexes(self.collection, field_name=_VECTOR)
            if not indexes:
                c.create_index(self.collection, self._index_params(c), timeout=self.ddl_timeout_s)
                indexes = c.list_indexes(self.collection, field_name=_VECTOR)
            for name in indexes:
                self._check_index(c, name)
            state = c.get_load_state(self.collection, timeout=self.timeout_s).get("state")
            if state != LoadState.Loaded:
                c.load_collection(self.collection, timeout=self.ddl_timeout_s)

        self._run("ensure_collection", run)

    # ------------------------------------------------------------------ writes

    def upsert(self, records: Sequence[CaseRecord], *, keep_known_labels: bool = True) -> None:
        """Insert or replace studies by ``study_key`` (sending one twice leaves one entity).

        With ``keep_known_labels`` an unknown diagnosis/outcome in a record does not erase a known one
        already stored: labels come on another topic and may be applied before a re-delivered embedding.
        Within one call the last record of a key wins. All records are validated before anything is sent.
        """
        rows: dict[str, dict[str, Any]] = {}
        for i, rec in enumerate(records):
            row = self._row(rec, i)
            rows.pop(row["study_key"], None)
            rows[row["study_key"]] = row
        batch = list(rows.values())
        for start in range(0, len(batch), _BATCH):
            chunk = batch[start : start + _BATCH]
            self._run("upsert", lambda c, chunk=chunk: self._upsert_chunk(c, chunk, keep_known_labels))

    def _upsert_chunk(self, c: MilvusClient, chunk: list[dict[str, Any]], keep_known_labels: bool) -> None:
        unlabelled = [
            r["study_key"] for r in chunk if r["diagnosis"] == "" or r["outcome"] == -1 or r["clinical"] == ""
        ]
        if keep_known_labels and unlabelled:
            stored = {
                e["study_key"]: e
                for e in self._query_keys(c, unlabelled, ["study_key", "diagnosis", "outcome", "clinical"])
            }
            merged = []
            for r in chunk:
                old = stored.get(r["study_key"])
                if old is not None:
                    r = dict(r)
                    if r["diagnosis"] == "":
                        r["diagnosis"] = str(old["diagnosis"])
                    if r["outcome"] == -1:
                        r["outcome"] = int(old["outcome"])
                    if r["clinical"] == "":
                        r["clinical"] = str(old["clinical"])
                merged.append(r)
            chunk = merged
        c.upsert(self.collection, chunk, timeout=self.timeout_s)

    def update_labels(
        self,
        study_key: str,
        *,
        diagnosis: str | None = None,
        outcome: int | None = None,
        clinical: str | None = None,
    ) -> bool:
        """Set the diagnosis and/or outcome of a stored study ("" / -1 clear them); False if the study is not
        there yet (the caller keeps the labels and tries again).

        A read-modify-write at Strong consistency (Milvus has no per-field update before 2.6): not atomic
        against a concurrent upsert of the same study, so route one study's events through one consumer
        (e.g. Kafka key = study key). The same holds for ``upsert(keep_known_labels=True)``.
        """
        key = _check_key(study_key, "study_key")
        if diagnosis is None and outcome is None and clinical is None:
            raise InvalidQuery("update_labels needs a diagnosis, an outcome or clinical data")
        if clinical is not None and (len(clinical) > _CLINICAL_MAX or not clinical.isprintable()):
            raise InvalidQuery(f"clinical must be printable and at most {_CLINICAL_MAX} characters")
        if diagnosis is not None and diagnosis != "":
            _check_str(diagnosis, "diagnosis", allowed=DIAGNOSES)
        if outcome is not None and (isinstance(outcome, bool) or outcome not in OUTCOMES):
            raise InvalidQuery("outcome must be -1 (unknown), 0 or 1")

        def run(c: MilvusClient) -> bool:
            found = self._query_keys(c, [key], _OUTPUT_FIELDS)
            if not found:
                return False
            row = {name: found[0][name] for name in _OUTPUT_FIELDS}
            new = dict(row)
            if diagnosis is not None:
                new["diagnosis"] = diagnosis
            if outcome is not None:
                new["outcome"] = int(outcome)
            if clinical is not None:
                new["clinical"] = clinical
            fields_ = ("diagnosis", "outcome", "clinical")
            if any(new[f] != row[f] for f in fields_):
                new[_VECTOR] = np.asarray(row[_VECTOR], dtype=np.float32)
                c.upsert(self.collection, [new], timeout=self.timeout_s)
            return True

        return self._run("update_labels", run)

    # ------------------------------------------------------------------ reads

    def get(self, study_keys: Sequence[str]) -> dict[str, CaseRecord]:
        """The stored records among ``study_keys`` (unknown keys are simply absent), Strong consistency."""
        keys = _str_list(study_keys, "study_keys", _check_key)
        out: dict[str, CaseRecord] = {}
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start : start + _BATCH]
            rows = self._run("get", lambda c, chunk=chunk: self._query_keys(c, chunk, _OUTPUT_FIELDS))
            for row in rows:
                rec = self._record(row)
                out[rec.study_key] = rec
        return out

    def get_one(self, study_key: str) -> CaseRecord:
        """One stored record; NotFound if the store does not hold it (a query by study key)."""
        key = _check_key(study_key, "study_key")
        found = self.get([key])
        if key not in found:
            raise NotFound("no stored study has this study key")
        return found[key]

    def search(self, vector: np.ndarray, k: int, flt: CaseFilter = CaseFilter()) -> list[Neighbour]:
        """The k most similar stored cases passing ``flt``, most similar first."""
        v = self._vector(vector, "query vector")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
            raise InvalidQuery(f"k must be an integer in 1..{MAX_K}")
        k = int(k)
        expr = filter_expression(flt)
        params = dict(self.search_params)
        if self.index == "HNSW":
            params["ef"] = max(int(params.get("ef", k)), k)  # HNSW returns at most ef hits

        def run(c: MilvusClient) -> list:
            return c.search(
                self.collection,
                data=[v.tolist()],
                filter=expr,
                limit=k,
                output_fields=_OUTPUT_FIELDS,
                search_params={"metric_type": "COSINE", "params": params},
                anns_field=_VECTOR,
                timeout=self.timeout_s,
                consistency_level=self.consistency,
            )

        hits = self._run("search", run)
        out = [
            Neighbour(self._record(h["entity"]), float(np.clip(float(h["distance"]), -1.0, 1.0)))
            for h in (hits[0] if hits else [])
        ]
        out.sort(key=lambda n: -n.similarity)
        return out

    def count(self) -> int:
        """Number of stored studies (Strong: counts every acknowledged upsert)."""

        def run(c: MilvusClient) -> int:
            res = c.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                timeout=self.timeout_s,
                consistency_level="Strong",
            )
            return int(res[0]["count(*)"]) if res else 0

        return self._run("count", run)

    def ping(self) -> bool:
        """True if Milvus answers (one try, no retries: a health check must answer quickly)."""
        try:
            self._run(
                "ping", lambda c: c.has_collection(self.collection, timeout=self.timeout_s), retry=False
            )
        except StoreError:
            return False
        return True

    def close(self) -> None:
        """Release the connection; idempotent. The store cannot be used afterwards."""
        with self._lock:
            self._closed = True
            client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()


__all__ = [
    "CONSISTENCY_LEVELS",
    "INDEX_TYPES",
    "MAX_K",
    "CaseFilter",
    "CaseRecord",
    "CaseStore",
    "Neighbour",
    "RetryPolicy",
    "filter_expression",
]
