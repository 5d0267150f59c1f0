"""Milvus case store: one entity per study (primary key ``study_key``), COSINE search with typed filters.

Design points (each one a place where the obvious code is wrong; the module named does that job):

* Portability. The same code runs on Milvus Lite (tests, laptops) and a real Milvus server, so it relies on
  nothing Lite does by accident: reads that must see a preceding write (``get``, ``count``, the label
  read-modify-write) ask for Strong consistency explicitly; searches use the configured level (Bounded by
  default, as the server does). Index build parameters are sent nested under ``params`` (``schema``).
* Filters are built from typed, allow-listed values and every string literal is escaped as well
  (``filters``); ``get`` builds its own escaped key list because pymilvus' ``get()`` does not escape.
* Failures become the typed errors of ``cxrmesh.search.errors`` (``translate``). Only
  :class:`StoreUnavailable` is retried, by :class:`RetryPolicy` (``retry``); every Milvus call carries a
  timeout, because without one pymilvus retries a dead server 75 times with back-off (minutes).
* No identifiers leave through logs or metrics: metric labels are the operation name and ok/error only;
  error and log messages never contain keys, and string literals in Milvus' messages (which echo the
  filter expression, patient key included) are redacted, also in pymilvus' own ERROR log lines (``redact``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from pymilvus import MilvusClient
from pymilvus.client.types import LoadState
from pymilvus.exceptions import ConnectionConfigException, MilvusException

from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.search.errors import InvalidQuery, NotFound, StoreError, StoreUnavailable
from cxrmesh.search.filters import OUTCOMES, check_key, check_str, filter_expression, in_list, str_list
from cxrmesh.search.records import CaseFilter, CaseRecord, Neighbour
from cxrmesh.search.redact import install_log_redaction, redact
from cxrmesh.search.retry import RetryPolicy, run_with_retry
from cxrmesh.search.rows import check_clinical, checked_vector, to_record, to_row
from cxrmesh.search.schema import (
    DEFAULT_BUILD_PARAMS,
    DEFAULT_SEARCH_PARAMS,
    INDEX_TYPES,
    OUTPUT_FIELDS,
    VECTOR,
    build_index_params,
    build_schema,
    check_index,
    check_schema,
)
from cxrmesh.search.tls import MilvusTLS
from cxrmesh.search.translate import credentials_refused, translate

T = TypeVar("T")

CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
MAX_K = 1024
_COLLECTION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_BATCH = 512  # rows per upsert / keys per `in [...]` list: well under gRPC's 64 MiB and expression limits
_DEFAULT_RETRY = RetryPolicy()
_NO_FILTER = CaseFilter()


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
        retry: RetryPolicy = _DEFAULT_RETRY,
        consistency: str = "Bounded",
        *,
        timeout_s: float = 5.0,
        ddl_timeout_s: float = 120.0,
        build_params: Mapping[str, int] | None = None,
        search_params: Mapping[str, int] | None = None,
        tls: MilvusTLS | None = None,
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
        if tls is not None and uri.endswith(".db"):
            raise ValueError("TLS is for a Milvus server; Milvus Lite (*.db) is a local file")
        self.uri, self.collection, self.dim, self.index = uri, collection, dim, index
        self.retry, self.consistency = retry, consistency
        self.timeout_s, self.ddl_timeout_s = float(timeout_s), float(ddl_timeout_s)
        self.build_params = dict(DEFAULT_BUILD_PARAMS[index] if build_params is None else build_params)
        self.search_params = dict(DEFAULT_SEARCH_PARAMS[index] if search_params is None else search_params)
        self._token = token
        self._tls = tls
        self._client_obj: MilvusClient | None = None
        self._lock = threading.Lock()
        self._closed = False
        install_log_redaction()

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
                    tls = self._tls.client_kwargs() if self._tls is not None else {}
                    # dedicated: pymilvus shares one channel per address|token otherwise, whatever the
                    # TLS settings of the client that asks (a store could ride another's channel)
                    self._client_obj = MilvusClient(
                        uri=self.uri, token=self._token, timeout=self.timeout_s, dedicated=True, **tls
                    )
                except ConnectionConfigException as e:
                    raise StoreError(f"bad Milvus address: {redact(e.message)}") from None
                except MilvusException as e:
                    if credentials_refused(e):
                        raise translate("connect", e) from None
                    raise StoreUnavailable(f"cannot connect to Milvus: {redact(e.message)}") from e
            return self._client_obj

    def _run(self, operation: str, fn: Callable[[MilvusClient], T], *, retry: bool = True) -> T:
        """Run ``fn`` with the retry policy; Milvus failures become the typed errors."""

        def once() -> T:
            try:
                return fn(self._client())
            except (MilvusException, grpc.RpcError) as e:
                err = translate(operation, e)
                # Keep the transport cause for debugging; drop server messages, which may echo the
                # filter expression (keys) in a logged traceback. The redacted gist is in `err`.
                raise err from (e if isinstance(err, StoreUnavailable) else None)

        return run_with_retry(operation, once, self.retry, retry=retry)

    def _query_keys(self, c: MilvusClient, keys: Sequence[str], output_fields: list[str]) -> list[dict]:
        """Strong read by primary key with an escaped expression (pymilvus get() does not escape)."""
        return c.query(
            self.collection,
            filter=in_list("study_key", keys),
            output_fields=output_fields,
            timeout=self.timeout_s,
            consistency_level="Strong",
        )

    # ------------------------------------------------------------------ schema

    def ensure_collection(self) -> None:
        """Create the collection, its COSINE index and load it if needed; idempotent and safe when two
        replicas start together. SchemaMismatch if an existing collection cannot hold this store's rows."""

        def run(c: MilvusClient) -> None:
            if not c.has_collection(self.collection, timeout=self.timeout_s):
                try:
                    c.create_collection(
                        self.collection,
                        schema=build_schema(c, self.dim),
                        index_params=build_index_params(c, self.index, self.build_params),
                        consistency_level=self.consistency,
                        timeout=self.ddl_timeout_s,
                    )
                except MilvusException:
                    # Another replica may have created it between our check and our create.
                    if not c.has_collection(self.collection, timeout=self.timeout_s):
                        raise
            desc = c.describe_collection(self.collection, timeout=self.timeout_s)
            check_schema(desc, self.collection, self.dim)
            indexes = c.list_indexes(self.collection, field_name=VECTOR)
            if not indexes:
                params = build_index_params(c, self.index, self.build_params)
                c.create_index(self.collection, params, timeout=self.ddl_timeout_s)
                indexes = c.list_indexes(self.collection, field_name=VECTOR)
            for name in indexes:
                index = c.describe_index(self.collection, name, timeout=self.timeout_s) or {}
                check_index(index, self.collection, self.index)
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
            row = to_row(rec, i, self.dim)
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
        key = check_key(study_key, "study_key")
        if diagnosis is None and outcome is None and clinical is None:
            raise InvalidQuery("update_labels needs a diagnosis, an outcome or clinical data")
        if clinical is not None:
            check_clinical(clinical, "clinical")
        if diagnosis is not None and diagnosis != "":
            check_str(diagnosis, "diagnosis", allowed=DIAGNOSES)
        if outcome is not None and (isinstance(outcome, bool) or outcome not in OUTCOMES):
            raise InvalidQuery("outcome must be -1 (unknown), 0 or 1")

        def run(c: MilvusClient) -> bool:
            found = self._query_keys(c, [key], OUTPUT_FIELDS)
            if not found:
                return False
            row = {name: found[0][name] for name in OUTPUT_FIELDS}
            new = dict(row)
            if diagnosis is not None:
                new["diagnosis"] = diagnosis
            if outcome is not None:
                new["outcome"] = int(outcome)
            if clinical is not None:
                new["clinical"] = clinical
            if any(new[f] != row[f] for f in ("diagnosis", "outcome", "clinical")):
                new[VECTOR] = np.asarray(row[VECTOR], dtype=np.float32)
                c.upsert(self.collection, [new], timeout=self.timeout_s)
            return True

        return self._run("update_labels", run)

    # ------------------------------------------------------------------ reads

    def get(self, study_keys: Sequence[str]) -> dict[str, CaseRecord]:
        """The stored records among ``study_keys`` (unknown keys are simply absent), Strong consistency."""
        keys = str_list(study_keys, "study_keys", check_key)
        out: dict[str, CaseRecord] = {}
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start : start + _BATCH]
            rows = self._run("get", lambda c, chunk=chunk: self._query_keys(c, chunk, OUTPUT_FIELDS))
            for row in rows:
                rec = to_record(row)
                out[rec.study_key] = rec
        return out

    def get_one(self, study_key: str) -> CaseRecord:
        """One stored record; NotFound if the store does not hold it (a query by study key)."""
        key = check_key(study_key, "study_key")
        found = self.get([key])
        if key not in found:
            raise NotFound("no stored study has this study key")
        return found[key]

    def search(self, vector: np.ndarray, k: int, flt: CaseFilter = _NO_FILTER) -> list[Neighbour]:
        """The k most similar stored cases passing ``flt``, most similar first."""
        v = checked_vector(vector, self.dim, "query vector")
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
                output_fields=OUTPUT_FIELDS,
                search_params={"metric_type": "COSINE", "params": params},
                anns_field=VECTOR,
                timeout=self.timeout_s,
                consistency_level=self.consistency,
            )

        hits = self._run("search", run)
        out = [
            Neighbour(to_record(h["entity"]), float(np.clip(float(h["distance"]), -1.0, 1.0)))
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
