"""Search at scale: the case store's Milvus (Lite, and the standalone server with HNSW and IVF_FLAT)
against FAISS HNSW in process and exact brute force (FAISS IndexFlatIP), at 10k, 100k and 1M embeddings.

Why it looks as it does:

* The vectors are synthetic but shaped like the embedder's: 128-d (``EMBED_DIM``), unit length, compared
  by inner product (= the store's COSINE), drawn as a mixture of clusters per diagnosis (24 sub-clusters
  around each class centre, each varying along 16 directions of its own, a small per-site shift, two close
  studies per patient), not uniform noise: real embeddings cluster by class, and uniform 128-d noise has
  no near neighbours at all, which would make every index look worse and every filter look harmless.
  The scalar fields are the case store's own (site, study date, diagnosis, patient, model version), so
  a filter is the expression the search service sends (``CaseFilter``) and its ground truth is a NumPy
  mask over the same columns.
* Recall@10 is against exact brute force over the rows the filter admits; latency is one query at a time
  (the service's pattern), end to end through each engine's client: for Milvus that is ``CaseStore.search``
  over gRPC with mutual TLS and the token, returning the stored fields as the service reads them.
  The filter's evaluation is part of every engine's latency (FAISS gets its NumPy mask per query).
* Build time is what it takes to make the index searchable: for the server, the insert, flush, index
  build and load; for FAISS, ``add``. Memory is the RSS growth of the process that holds the index (the
  server's process tree; this process for Milvus Lite, which runs in process); for FAISS, which shares
  this process with the corpus and the ground truth, the size of the index's own arrays.
* The server is loaded in bulk with pymilvus' column-wise insert in 50k-row batches (rows built by the
  store's own ``to_row``), not ``CaseStore.upsert``: the store's 512-row upserts (delete + insert per key)
  run at ~5k rows/s, minutes at 1M, and the ingestion path is measured elsewhere. Each size loads its
  collection once; IVF_FLAT then replaces the HNSW index on the same rows.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.suite.common import spread
from benchmarks.suite.search_corpus import (
    FILTERS,
    MODES,
    Corpus,
    Filter,
    K,
    Query,
    ground_truth,
    make_corpus,
    make_queries,
)
from benchmarks.suite.search_engines import (
    BRUTE_FORCE_BELOW,
    FILTERED_EF_MAX,
    HNSW_BUILD,
    HNSW_EF,
    Engine,
    FaissFlat,
    FaissHnsw,
    MilvusLite,
    MilvusServerIdsOnly,
    MilvusServerIndex,
    ServerCollection,
    ivf_params,
)
from cxrmesh.contracts.tensors import EMBED_DIM

TITLE = "Search at scale"
REPEATS = 3
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000,)
QUERIES = {10_000: 200, 100_000: 200, 1_000_000: 150}  # 1M: the 9-minute budget on 2 cores
QUICK_QUERIES = 60
EXACT_QUERIES_1M = 60  # one exact 1M scan is 10-35 ms: 60 queries x 3 repeats x 3 modes is already 12 s
LITE_MAX = 10_000  # Milvus Lite (pure Python) scans 10k rows in ~10 ms: beyond that it is not a contender
LITE_QUERIES = 60


def measure(engine: Engine, queries: list[Query], truth: dict[str, list[set[int]]]) -> list[dict[str, Any]]:
    """Build (timed, with the RSS growth), then every query one at a time, REPEATS times per mode."""
    gc.collect()
    before = engine.rss()
    phases = engine.build()
    footprint = getattr(engine, "footprint", None)
    memory = footprint() if footprint else engine.rss() - getattr(engine, "baseline", lambda b: b)(before)
    common = {"engine": engine.name, "index": engine.index, "queries": len(queries)}
    common |= {"build_s": float(sum(phases.values())), "phases": phases, "memory_mib": memory}
    modes = getattr(engine, "modes", MODES)
    return [{**common, "filter": mode, **_latencies(engine, queries, truth[mode], mode)} for mode in modes]


def _latencies(engine: Engine, queries: list[Query], truth: list[set[int]], mode: str) -> dict[str, Any]:
    def flt(q: Query) -> Filter | None:
        return None if mode == "none" else q.filters[mode]

    recall: list[float] = []
    p50, p99, qps = [], [], []
    for rep in range(REPEATS):
        engine.search(queries[0].vec, flt(queries[0]))  # warm-up
        lat = []
        for q, exact in zip(queries, truth, strict=True):
            t = time.perf_counter()
            got = engine.search(q.vec, flt(q))
            lat.append(time.perf_counter() - t)
            if rep == 0:
                recall.append(len(exact & set(got)) / max(1, len(exact)))
        ms = np.asarray(lat) * 1000
        p50.append(float(np.percentile(ms, 50)))
        p99.append(float(np.percentile(ms, 99)))
        qps.append(len(lat) / float(np.sum(lat)))
    return {
        "recall": float(np.mean(recall)),
        "recall_min": float(np.min(recall)),
        "p50_ms": spread(p50),
        "p99_ms": spread(p99),
        "qps": spread(qps),
    }


@contextlib.contextmanager
def milvus_server(work: Path) -> Iterator[Any]:
    """A standalone Milvus as the mesh runs it: authorization, generated root password, mutual TLS."""
    from cxrmesh.local.milvus import MilvusServer
    from cxrmesh.local.pki import LocalCA

    server = MilvusServer(work / "milvus" / "data", work / "milvus.log", ca=LocalCA(work / "pki"))
    server.__enter__()
    try:
        yield server
    finally:
        server.stop(grace_s=3)  # with collections loaded it rarely stops by itself: then it is killed


def engines_for(
    c: Corpus, work: Path, coll: ServerCollection, quick: bool
) -> list[tuple[Callable[[], Engine], int]]:
    """(engine factory, number of queries) for one size, in the order they run."""
    nq = QUICK_QUERIES if quick else QUERIES[c.n]
    ivf_build, ivf_search = ivf_params(c.n)
    out: list[tuple[Callable[[], Engine], int]] = [
        (lambda: FaissFlat(c), min(nq, EXACT_QUERIES_1M) if c.n >= 1_000_000 else nq),
        (lambda: FaissHnsw(c), nq),
        (lambda: MilvusServerIndex(coll, "HNSW", HNSW_BUILD, {"ef": HNSW_EF}), nq),
        (lambda: MilvusServerIdsOnly(coll, "HNSW", HNSW_BUILD, {"ef": HNSW_EF}), nq),
        (lambda: MilvusServerIndex(coll, "IVF_FLAT", ivf_build, ivf_search), nq),
    ]
    if c.n <= LITE_MAX:
        out.append((lambda: MilvusLite(c, work), min(nq, LITE_QUERIES)))
    return out


def run_size(n: int, work: Path, server: Any, quick: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    c = make_corpus(n)
    queries = make_queries(c, QUICK_QUERIES if quick else QUERIES[n])
    truth = ground_truth(c, queries)
    admitted = {name: float(np.mean([q.filters[name].mask(c).mean() for q in queries])) for name in FILTERS}
    rows: list[dict[str, Any]] = []
    coll = ServerCollection(server, c, f"bench_{n}")
    try:
        for factory, nq in engines_for(c, work, coll, quick):
            engine = factory()
            try:
                rows += measure(engine, queries[:nq], {f: t[:nq] for f, t in truth.items()})
            finally:
                engine.close()
            print(
                f"   search {n:>9,}: {engine.name} {engine.index} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    finally:
        coll.drop()
    return {"n": n, "admitted": admitted, "rows": rows, "seconds": time.perf_counter() - t0}


def run(quick: bool, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    sizes = QUICK_SIZES if quick else FULL_SIZES
    t0 = time.perf_counter()
    with milvus_server(work) as server:
        results = [run_size(n, work, server, quick) for n in sizes]
    return {
        "dim": EMBED_DIM,
        "k": K,
        "repeats": REPEATS,
        "cores": os.cpu_count(),
        "hnsw": {**HNSW_BUILD, "ef": HNSW_EF, "filtered_ef_max": FILTERED_EF_MAX},
        "brute_force_below": BRUTE_FORCE_BELOW,
        "ivf": {str(n): dict(zip(("build", "search"), ivf_params(n), strict=True)) for n in sizes},
        "lite_max": LITE_MAX,
        "sizes": results,
        "seconds": time.perf_counter() - t0,
    }


def render(results: dict[str, Any], figures: Path) -> str:
    from benchmarks.suite.search_page import page

    return page(results, figures, TITLE)
