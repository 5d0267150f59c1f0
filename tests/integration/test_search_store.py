"""Case store against a real Milvus Lite (embedded and as a server), and the diagnosis vote.

The embedded tests use ``<tmp>/cases.db`` (Milvus Lite runs a gRPC server in a thread of this process);
the server tests start ``milvus-lite server`` as a subprocess, which is the code path a real Milvus
deployment takes (``uri=http://host:port``).
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest

from cxrmesh.local.milvus import MilvusLiteServer
from cxrmesh.search import (
    DIAGNOSES,
    CaseFilter,
    CaseRecord,
    CaseStore,
    InvalidQuery,
    Neighbour,
    NotFound,
    RetryPolicy,
    SchemaMismatch,
    StoreError,
    StoreUnavailable,
    Vote,
    filter_expression,
    weighted_vote,
)

DIM = 128
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2, jitter=0.0)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def make_records(n: int, seed: int = 0) -> list[CaseRecord]:
    """n studies, 3 per patient, attributes cycling so that every filter value is present and mixed."""
    rng = np.random.default_rng(seed)
    sites, sexes, bands = ("site-a", "site-b", "site-c"), ("M", "F", "O", ""), ("20-29", "40-49", "90+", "")
    out = []
    for i in range(n):
        out.append(
            CaseRecord(
                study_key=f"S{i:04d}",
                patient_key=f"P{i // 3:04d}",
                embedding=unit(rng.standard_normal(DIM)),
                model_version="m2" if i % 7 == 0 else "m1",
                site=sites[i % 3],
                diagnosis=("", *DIAGNOSES)[i % 4],
                outcome=(-1, 0, 1)[i % 3],
                age_band=bands[(i // 2) % 4],
                sex=sexes[(i // 3) % 4],
                study_date="" if i % 5 == 0 else (date(2020, 3, 1) + timedelta(days=i)).isoformat(),
                attention_ref=f"blob://attention/{i:04d}.npy",
            )
        )
    return out


def release_embedded(db: Path) -> None:
    """Stop the in-process Milvus Lite server of a .db path (as a process exit would)."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(db))


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    db = tmp_path / "cases.db"
    yield db
    release_embedded(db)


@pytest.fixture
def store(db_path: Path) -> Iterator[CaseStore]:
    s = CaseStore(str(db_path), dim=DIM, consistency="Strong", retry=FAST_RETRY)
    s.ensure_collection()
    yield s
    s.close()


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CaseStore, list[CaseRecord]]]:
    """One populated store shared by the read-only filter tests (creating one costs ~1 s)."""
    db = tmp_path_factory.mktemp("filled") / "cases.db"
    s = CaseStore(str(db), dim=DIM, consistency="Strong", retry=FAST_RETRY)
    s.ensure_collection()
    recs = make_records(96)
    s.upsert(recs)
    yield s, recs
    s.close()
    release_embedded(db)


def wait_until(pred: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ----------------------------------------------------------------------------- embedded Milvus Lite


def test_upsert_then_search_returns_nearest_by_cosine(store: CaseStore) -> None:
    recs = make_records(40, seed=1)
    store.upsert(recs)
    gallery = np.stack([r.embedding for r in recs])
    query = unit(recs[5].embedding + 0.3 * unit(np.random.default_rng(2).standard_normal(DIM)))

    got = store.search(query, k=10)

    sims = gallery @ query
    want = np.argsort(-sims)[:10]
    assert [n.record.study_key for n in got] == [recs[i].study_key for i in want]
    assert np.allclose([n.similarity for n in got], sims[want], atol=1e-5)
    assert got[0].record == recs[5]  # every field and the embedding come back
    assert all(a.similarity >= b.similarity for a, b in itertools.pairwise(got))


def test_same_study_twice_leaves_one_entity_with_the_new_fields(store: CaseStore) -> None:
    rec = make_records(1)[0]
    store.upsert([rec])
    newer = replace(rec, embedding=unit(np.ones(DIM)), model_version="m9", site="site-z", attention_ref="x")
    store.upsert([newer])
    store.upsert([newer, newer])  # duplicates in one batch too

    assert store.count() == 1
    assert store.get([rec.study_key])[rec.study_key] == newer
    assert store.search(unit(np.ones(DIM)), k=1)[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_labels_arrive_after_the_embedding(store: CaseStore) -> None:
    rec = replace(make_records(1)[0], diagnosis="", outcome=-1)
    assert store.update_labels(rec.study_key, diagnosis="covid19") is False  # not stored yet

    store.upsert([rec])
    assert store.update_labels(rec.study_key, diagnosis="covid19") is True
    assert store.update_labels(rec.study_key, outcome=1) is True
    got = store.get([rec.study_key])[rec.study_key]
    assert (got.diagnosis, got.outcome) == ("covid19", 1)
    assert np.array_equal(got.embedding, rec.embedding)  # the rewrite kept the vector

    # A re-delivered embedding event (labels unknown) must not erase the labels ...
    store.upsert([rec])
    got = store.get([rec.study_key])[rec.study_key]
    assert (got.diagnosis, got.outcome) == ("covid19", 1)
    # ... unless asked to, and labels can be cleared explicitly.
    store.update_labels(rec.study_key, diagnosis="")
    assert store.get([rec.study_key])[rec.study_key].diagnosis == ""
    store.upsert([rec], keep_known_labels=False)
    assert store.get([rec.study_key])[rec.study_key].outcome == -1
    assert store.count() == 1

    with pytest.raises(InvalidQuery):
        store.update_labels(rec.study_key, diagnosis="flu")
    with pytest.raises(InvalidQuery):
        store.update_labels(rec.study_key, outcome=2)
    with pytest.raises(InvalidQuery):
        store.update_labels(rec.study_key)


def test_get_unknown_keys_are_absent_and_get_one_raises_not_found(store: CaseStore) -> None:
    recs = make_records(3)
    store.upsert(recs)
    assert store.get([]) == {}
    assert set(store.get(["S0000", "S0002", "S9999"])) == {"S0000", "S0002"}
    assert store.get_one("S0001") == recs[1]
    with pytest.raises(NotFound):
        store.get_one("S9999")


FILTERS: dict[str, tuple[CaseFilter, Callable[[CaseRecord], bool]]] = {
    "sites": (CaseFilter(sites=("site-a", "site-c")), lambda r: r.site in ("site-a", "site-c")),
    "diagnoses": (CaseFilter(diagnoses=("covid19",)), lambda r: r.diagnosis == "covid19"),
    "sexes": (CaseFilter(sexes=("F", "O")), lambda r: r.sex in ("F", "O")),
    "age_bands": (CaseFilter(age_bands=("90+",)), lambda r: r.age_band == "90+"),
    "labelled_only": (CaseFilter(labelled_only=True), lambda r: r.diagnosis != ""),
    "date_from": (CaseFilter(study_date_from="2020-04-01"), lambda r: r.study_date >= "2020-04-01"),
    "date_to": (CaseFilter(study_date_to="2020-03-20"), lambda r: "" < r.study_date <= "2020-03-20"),
    "date_range": (
        CaseFilter(study_date_from="2020-03-10", study_date_to="2020-03-31"),
        lambda r: "2020-03-10" <= r.study_date <= "2020-03-31",
    ),
    "exclude_patient": (CaseFilter(exclude_patient_key="P0004"), lambda r: r.patient_key != "P0004"),
    "exclude_studies": (
        CaseFilter(exclude_study_keys=("S0001", "S0050")),
        lambda r: r.study_key not in ("S0001", "S0050"),
    ),
    "model_version": (CaseFilter(model_version="m2"), lambda r: r.model_version == "m2"),
    "combined": (
        CaseFilter(sites=("site-b",), labelled_only=True, sexes=("M", "F"), exclude_patient_key="P0001"),
        lambda r: (
            r.site == "site-b" and r.diagnosis != "" and r.sex in ("M", "F") and r.patient_key != "P0001"
        ),
    ),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_each_filter_kind_returns_exactly_the_matching_cases(
    filled: tuple[CaseStore, list[CaseRecord]], name: str
) -> None:
    s, recs = filled
    flt, keep = FILTERS[name]
    want = {r.study_key for r in recs if keep(r)}
    assert 0 < len(want) < len(recs), "the fixture must make this filter discriminate"
    got = s.search(recs[0].embedding, k=len(recs), flt=flt)
    assert {n.record.study_key for n in got} == want


def test_query_patients_own_studies_are_not_similar_prior_cases(
    filled: tuple[CaseStore, list[CaseRecord]],
) -> None:
    s, recs = filled
    query = recs[10]  # patient P0003 has S0009..S0011
    own = {r.study_key for r in recs if r.patient_key == query.patient_key}
    assert s.search(query.embedding, k=1)[0].record.study_key == query.study_key  # without the exclusion
    got = s.search(query.embedding, k=10, flt=CaseFilter(exclude_patient_key=query.patient_key))
    assert len(got) == 10 and not own & {n.record.study_key for n in got}


@pytest.mark.parametrize(
    "flt",
    [
        CaseFilter(sexes=('M" or 1==1',)),
        CaseFilter(sexes=("M' or 1==1",)),
        CaseFilter(sites=('site-a"] or site in ["x',)),
        CaseFilter(age_bands=("40-49\\",)),
        CaseFilter(exclude_patient_key='P1" or patient_key != "'),
        CaseFilter(exclude_study_keys=('S1") or (1==1',)),
        CaseFilter(model_version='m1" or 1==1 or model_version=="'),
        CaseFilter(study_date_from='2020-01-01" or 1==1'),
        CaseFilter(diagnoses=("covid19 or 1==1",)),
        CaseFilter(sexes="MF"),  # a bare string, not a tuple: would filter per character
    ],
)
def test_filter_injection_is_refused(filled: tuple[CaseStore, list[CaseRecord]], flt: CaseFilter) -> None:
    s, recs = filled
    with pytest.raises(InvalidQuery) as err:
        s.search(recs[0].embedding, k=5, flt=flt)
    assert "1==1" not in str(err.value)  # messages name the rule, never echo the value


def test_filter_expression_is_built_from_escaped_literals() -> None:
    assert filter_expression(CaseFilter()) == ""
    expr = filter_expression(
        CaseFilter(
            sites=("site-a", "site-a"), sexes=("M",), study_date_to="2020-12-31", exclude_patient_key="P1"
        )
    )
    assert expr == (
        'site in ["site-a"] and sex in ["M"] and study_day > 0 and study_day <= 20201231'
        ' and patient_key != "P1"'
    )
    from cxrmesh.search.filters import quote

    assert quote('M" or 1==1') == '"M\\" or 1==1"'  # the second fence, behind the allow-lists


def test_store_get_refuses_keys_that_would_break_the_expression(store: CaseStore) -> None:
    with pytest.raises(InvalidQuery):
        store.get(["S1' or study_key != '"])
    with pytest.raises(InvalidQuery):
        store.get("S0001")  # a bare string


@pytest.mark.parametrize(
    ("vector", "k", "reason"),
    [
        (np.ones(64, np.float32), 5, "shape"),
        (np.ones((1, DIM), np.float32), 5, "shape"),
        (np.full(DIM, np.nan, np.float32), 5, "NaN"),
        (np.r_[np.ones(DIM - 1), np.inf].astype(np.float32), 5, "NaN or infinite"),
        (np.zeros(DIM, np.float32), 5, "zeros"),
        ("not a vector", 5, "floats"),
        (np.ones(DIM, np.float32), 0, "k must"),
        (np.ones(DIM, np.float32), 1025, "k must"),
        (np.ones(DIM, np.float32), True, "k must"),
        (np.ones(DIM, np.float32), 2.5, "k must"),
    ],
)
def test_bad_query_raises_invalid_query_with_a_reason(
    filled: tuple[CaseStore, list[CaseRecord]], vector: object, k: object, reason: str
) -> None:
    s, _ = filled
    with pytest.raises(InvalidQuery, match=reason):
        s.search(vector, k)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "flt",
    [
        CaseFilter(study_date_from="2020-02-30"),
        CaseFilter(study_date_from="2020-05-01", study_date_to="2020-04-01"),
        CaseFilter(exclude_study_keys=tuple(f"S{i}" for i in range(1025))),
    ],
)
def test_bad_filter_values_raise_invalid_query(
    filled: tuple[CaseStore, list[CaseRecord]], flt: CaseFilter
) -> None:
    s, recs = filled
    with pytest.raises(InvalidQuery):
        s.search(recs[0].embedding, 3, flt)


def test_bad_record_is_refused_before_anything_is_written(store: CaseStore) -> None:
    good = make_records(2)
    for bad in (
        replace(good[1], embedding=np.ones(DIM - 1, np.float32)),
        replace(good[1], embedding=np.full(DIM, np.nan, np.float32)),
        replace(good[1], diagnosis="flu"),
        replace(good[1], outcome=3),
        replace(good[1], sex='M" or 1==1'),
        replace(good[1], study_date="20200101"),
        replace(good[1], study_key=""),
        replace(good[1], attention_ref="x\n"),
    ):
        with pytest.raises(InvalidQuery):
            store.upsert([good[0], bad])
    assert store.count() == 0


def test_reopen_existing_collection_and_refuse_an_incompatible_one(db_path: Path) -> None:
    recs = make_records(5)
    with CaseStore(str(db_path), dim=DIM, consistency="Strong") as s:
        s.ensure_collection()
        s.upsert(recs)
    release_embedded(db_path)  # as if the process had exited: data must come back from disk

    with CaseStore(str(db_path), dim=DIM, consistency="Strong") as s:
        s.ensure_collection()
        s.ensure_collection()  # idempotent
        assert s.count() == 5
        assert s.search(recs[3].embedding, k=1)[0].record == recs[3]

    with CaseStore(str(db_path), dim=64) as s, pytest.raises(SchemaMismatch, match="dim 128"):
        s.ensure_collection()
    with CaseStore(str(db_path), dim=DIM, index="IVF_FLAT") as s, pytest.raises(SchemaMismatch, match="FLAT"):
        s.ensure_collection()
    with CaseStore(str(db_path), dim=DIM, collection="other") as s:
        s.ensure_collection()  # another collection in the same database is independent
        assert s.count() == 0


def test_hnsw_index_is_created_and_returns_exact_top_hits_unfiltered(db_path: Path) -> None:
    recs = make_records(30, seed=3)
    with CaseStore(str(db_path), dim=DIM, index="HNSW", consistency="Strong") as s:
        s.ensure_collection()
        s.upsert(recs)
        got = s.search(recs[7].embedding, k=3)
        assert got[0].record.study_key == recs[7].study_key
        assert got[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_closed_store_refuses_calls(db_path: Path) -> None:
    s = CaseStore(str(db_path), dim=DIM)
    s.ensure_collection()
    s.close()
    s.close()
    assert s.ping() is False
    with pytest.raises(StoreError, match="closed"):
        s.count()


def test_metrics_are_labelled_by_operation_and_outcome_only(store: CaseStore) -> None:
    before = metric("cxrmesh_milvus_request_seconds_count", operation="search", outcome="ok")
    recs = make_records(4)
    store.upsert(recs)
    store.search(recs[0].embedding, 2, CaseFilter(exclude_patient_key=recs[0].patient_key))
    assert metric("cxrmesh_milvus_request_seconds_count", operation="search", outcome="ok") == before + 1
    text = generate_latest(REGISTRY).decode()
    assert "cxrmesh_milvus_retries_total" in text
    for line in text.splitlines():
        if line.startswith("cxrmesh_milvus"):
            assert "P0000" not in line and "S0000" not in line


def test_pymilvus_error_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    """pymilvus logs the server's message, which echoes the filter; the store installs a redacting filter."""
    CaseStore("/nonexistent/cases.db")  # constructing a store installs it
    with caplog.at_level(logging.ERROR, logger="pymilvus.decorators"):
        logging.getLogger("pymilvus.decorators").error(
            "RPC error: [search], cannot parse expression: "
            "patient_key != \"P0042\" and study_key not in ['S7']"
        )
    assert "P0042" not in caplog.text and "S7" not in caplog.text
    assert "cannot parse expression" in caplog.text


def test_missing_collection_is_a_store_error_and_not_retried(db_path: Path) -> None:
    before = metric("cxrmesh_milvus_retries_total", operation="count")
    with CaseStore(str(db_path), dim=DIM, retry=FAST_RETRY) as s, pytest.raises(StoreError) as err:
        s.count()
    assert not isinstance(err.value, StoreUnavailable)
    assert metric("cxrmesh_milvus_retries_total", operation="count") == before


def test_error_mapping_of_server_answers() -> None:
    """What a real server answers (which Lite cannot be made to) maps to the right class, redacted."""
    from pymilvus.exceptions import ErrorCode, MilvusException

    from cxrmesh.search.translate import translate

    echo = 'cannot parse expression: patient_key != "P0042"'
    cases = [
        (MilvusException(code=1100, message=echo, is_input_error=True), InvalidQuery),
        (MilvusException(code=65535, message=echo), StoreError),
        (MilvusException(code=1, message="service not ready", retriable=True), StoreUnavailable),
        (MilvusException(code=ErrorCode.RATE_LIMIT, message="rate limit exceeded"), StoreUnavailable),
        (MilvusException(code=ErrorCode.COLLECTION_NOT_FOUND, message="collection not found"), StoreError),
    ]
    for exc, cls in cases:
        err = translate("search", exc)
        assert type(err) is cls
        assert "P0042" not in str(err)


# ----------------------------------------------------------------------------- Milvus Lite server (uri=http://)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MilvusLiteServer]:
    with MilvusLiteServer(tmp_path / "milvus", tmp_path / "milvus.log") as srv:
        yield srv


def test_server_code_path_then_unavailable_after_the_configured_attempts(
    server: MilvusLiteServer, caplog: pytest.LogCaptureFixture
) -> None:
    s = CaseStore(server.uri, dim=DIM, index="IVF_FLAT", retry=FAST_RETRY, timeout_s=2.0)
    wait_until(s.ping, "milvus-lite server")
    s.ensure_collection()
    recs = make_records(12, seed=4)
    s.upsert(recs)
    assert s.count() == 12
    with CaseStore(server.uri, dim=DIM, index="IVF_FLAT", consistency="Strong") as strong:
        assert strong.search(recs[2].embedding, k=1)[0].record == recs[2]
        hits = strong.search(recs[2].embedding, k=12, flt=CaseFilter(exclude_patient_key=recs[2].patient_key))
        assert len(hits) == 9  # 4 patients x 3 studies, less the query patient's

    server.stop()
    retries = metric("cxrmesh_milvus_retries_total", operation="search")
    errors = metric("cxrmesh_milvus_request_seconds_count", operation="search", outcome="error")
    caplog.clear()
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreUnavailable):
        s.search(recs[0].embedding, k=3, flt=CaseFilter(exclude_patient_key=recs[0].patient_key))
    assert time.monotonic() - t0 < 3 * 2.0 + 1.0  # attempts x timeout + back-off: no hang
    assert metric("cxrmesh_milvus_retries_total", operation="search") == retries + FAST_RETRY.attempts - 1
    assert metric("cxrmesh_milvus_request_seconds_count", operation="search", outcome="error") == errors + 1
    assert recs[0].patient_key not in caplog.text
    assert s.ping() is False
    with pytest.raises(StoreUnavailable):
        s.upsert(recs[:1])

    # The same store recovers when the server is back; the data was persisted by the server.
    server.start()
    wait_until(s.ping, "milvus-lite server restart")
    s.ensure_collection()
    assert s.count() == 12
    s.close()


def test_unresponsive_server_times_out_instead_of_hanging() -> None:
    """A peer that accepts TCP but never speaks gRPC: each attempt ends at timeout_s."""
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(8)
        port = sink.getsockname()[1]
        policy = RetryPolicy(attempts=2, initial_backoff_s=0.05, jitter=0.0)
        s = CaseStore(f"http://127.0.0.1:{port}", dim=DIM, retry=policy, timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            s.count()
        assert time.monotonic() - t0 < 2 * 0.5 + 2.0
        t0 = time.monotonic()
        assert s.ping() is False
        assert time.monotonic() - t0 < 0.5 + 1.0
        s.close()


def test_retry_policy_backoff_and_validation() -> None:
    p = RetryPolicy(attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2.0, jitter=0.0)
    assert [p.backoff_s(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    jittered = RetryPolicy(jitter=0.5)
    assert all(0.05 <= jittered.backoff_s(1) <= 0.15 for _ in range(50))
    assert RetryPolicy() == RetryPolicy(attempts=4, initial_backoff_s=0.1, max_backoff_s=2.0, multiplier=2.0)
    for bad in (dict(attempts=0), dict(initial_backoff_s=3.0), dict(multiplier=0.5), dict(jitter=1.0)):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def test_store_config_is_validated() -> None:
    for bad in (
        dict(uri=""),
        dict(uri="x.db", index="IVF_PQ"),
        dict(uri="x.db", consistency="Strongest"),
        dict(uri="x.db", dim=0),
        dict(uri="x.db", collection="cases; drop"),
        dict(uri="x.db", timeout_s=0),
    ):
        with pytest.raises(ValueError):
            CaseStore(**bad)  # type: ignore[arg-type]
    assert "token" not in repr(CaseStore("http://h:1", token="secret")) and "secret" not in repr(
        CaseStore("http://h:1", token="secret")
    )


# ----------------------------------------------------------------------------- the vote (pure)


def nb(diagnosis: str, similarity: float, key: str = "S") -> Neighbour:
    rec = CaseRecord(key, "P", np.zeros(2, np.float32), "m1", diagnosis=diagnosis)
    return Neighbour(rec, similarity)


def test_vote_weights_by_similarity() -> None:
    v = weighted_vote([nb("covid19", 0.9), nb("normal", 0.5), nb("normal", 0.3), nb("covid19", 0.2)])
    assert v.label == "covid19"  # 1.1 against 0.8
    assert v.scores == pytest.approx({"normal": 0.8 / 1.9, "covid19": 1.1 / 1.9, "other_pneumonia": 0.0})
    assert math.isclose(sum(v.scores.values()), 1.0) and v.neighbours_used == 4


def test_vote_uses_the_top_k_labelled_neighbours_whatever_their_order() -> None:
    ns = [nb("normal", 0.1), nb("", 0.99), nb("other_pneumonia", 0.8), nb("", 0.95), nb("normal", 0.2)]
    v = weighted_vote(ns, k=2)
    # Unlabelled cases are skipped, not counted against k: the top-2 labelled are 0.8 and 0.2.
    assert v.label == "other_pneumonia" and v.neighbours_used == 2
    assert v.scores["normal"] == pytest.approx(0.2 / 1.0)


def test_vote_negative_similarities_weigh_nothing_and_ties_go_to_the_first_diagnosis() -> None:
    v = weighted_vote([nb("covid19", -0.5), nb("other_pneumonia", 0.4), nb("covid19", 0.4)])
    assert v.label == "covid19"  # 0.4 each: DIAGNOSES order breaks the tie, as numpy.argmax does
    assert v.scores == pytest.approx({"normal": 0.0, "covid19": 0.5, "other_pneumonia": 0.5})
    allneg = weighted_vote([nb("covid19", -0.1), nb("other_pneumonia", -0.2)])
    # Training's argmax of an all-zero row is index 0.
    assert allneg.label == "normal" and allneg.neighbours_used == 2
    assert allneg.scores == pytest.approx({d: 1 / 3 for d in DIAGNOSES})


def test_vote_without_labelled_neighbours_abstains() -> None:
    assert weighted_vote([]) == Vote("", {d: 0.0 for d in DIAGNOSES}, 0)
    assert weighted_vote([nb("", 0.9)]).label == ""


def test_vote_rejects_bad_arguments() -> None:
    for k in (0, -1, True, 2.0):
        with pytest.raises(InvalidQuery):
            weighted_vote([nb("normal", 0.5)], k=k)  # type: ignore[arg-type]
    with pytest.raises(InvalidQuery):
        weighted_vote([nb("normal", float("nan"))])


def _vote_accuracy(
    query: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray, g_labels: np.ndarray
) -> float:
    """weighted_vote over each query's full, similarity-sorted gallery."""
    sims = query @ gallery.T
    hits = 0
    for i in range(len(query)):
        ns = [nb(DIAGNOSES[g_labels[j]], float(sims[i, j])) for j in np.argsort(-sims[i])]
        hits += weighted_vote(ns, k=10).label == DIAGNOSES[q_labels[i]]
    return hits / len(query)


def _clustered(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((3, 16))
    labels = rng.integers(0, 3, n)
    x = centres[labels] + 1.5 * rng.standard_normal((n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_vote_matches_the_training_metric_reference_rule() -> None:
    """The rule of retrieval_metrics (train.py), restated with numpy, query by query."""
    rng = np.random.default_rng(7)
    gallery, g_labels = _clustered(rng, 300)
    query, _ = _clustered(rng, 60)
    sims = query @ gallery.T
    order = np.argsort(-sims, axis=1)
    for i in range(len(query)):
        votes = np.zeros(3)
        for j in order[i, :10]:
            votes[g_labels[j]] += max(sims[i, j], 0.0)
        ns = [nb(DIAGNOSES[g_labels[j]], float(sims[i, j])) for j in order[i]]
        v = weighted_vote(ns, k=10)
        assert v.label == DIAGNOSES[int(votes.argmax())]
        assert [v.scores[d] for d in DIAGNOSES] == pytest.approx(votes / votes.sum())


@pytest.mark.slow
def test_vote_accuracy_equals_retrieval_metrics_vote_accuracy_at_10() -> None:
    """Against the training code itself (imports torch: skipped where it is not installed)."""
    pytest.importorskip("torch")
    from cxrmesh.ml.metrics import retrieval_metrics

    rng = np.random.default_rng(11)
    gallery, g_labels = _clustered(rng, 400)
    query, q_labels = _clustered(rng, 80)
    expected = retrieval_metrics(query, q_labels, gallery, g_labels)["vote_accuracy_at_10"]
    assert _vote_accuracy(query, q_labels, gallery, g_labels) == pytest.approx(expected)
