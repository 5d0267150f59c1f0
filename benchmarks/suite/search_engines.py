"""The engines the search benchmark compares, behind one small protocol: FAISS exact and HNSW in
process, Milvus Lite, and the standalone Milvus server (HNSW, IVF_FLAT, and ids-only) through the case
store's client.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks.suite.common import rss_mib, tree_pids
from benchmarks.suite.search_corpus import Corpus, Filter, K
from cxrmesh.contracts.tensors import EMBED_DIM
from cxrmesh.search import CaseFilter, CaseStore, filter_expression
from cxrmesh.search.schema import VECTOR

BULK_ROWS = 50_000  # ~30 MB a request: well under gRPC's 64 MiB
HNSW_BUILD = {"M": 16, "efConstruction": 64}
HNSW_EF = 128  # the store's default; at 64 the server's HNSW missed 0.99 unfiltered at 10k
FILTERED_EF_MAX = 1024  # FAISS HNSW under a broad filter: ef grows as the admitted fraction shrinks
BRUTE_FORCE_BELOW = 0.07  # admitted fraction below which Milvus (knowhere) HNSW searches exactly; FAISS too


def ivf_params(n: int) -> tuple[dict[str, int], dict[str, int]]:
    """IVF_FLAT build and search parameters for n rows: nlist ~ sqrt(n) (k-means on 2 cores stays in
    seconds), nprobe = nlist / 16 (at least 16): recall@10 >= 0.99 here without a filter and under the
    labelled one; no nprobe short of a scan saves the cross-cluster diagnosis filter (see the page)."""
    nlist = 128 if n <= 20_000 else 512 if n <= 200_000 else 1024
    return {"nlist": nlist}, {"nprobe": max(16, nlist // 16)}


class Engine(Protocol):
    """An index under test: built once per size, then searched one query at a time."""

    name: str
    index: str

    def build(self) -> dict[str, float]: ...  # the timed phases (seconds)

    def rss(self) -> float: ...  # MiB of the process(es) holding the index

    def search(self, vec: np.ndarray, flt: Filter | None) -> list[int]: ...

    def close(self) -> None: ...


class FaissFlat:
    """Exact brute force (IndexFlatIP); a filter becomes an ID bitmap from the NumPy mask. Built on every
    core, searched on one: one query at a time, OpenMP's fork/join costs more than it splits (2.5x at 1M)."""

    name, index = "FAISS (exact)", "IndexFlatIP"

    def __init__(self, c: Corpus) -> None:
        self.c = c

    def build(self) -> dict[str, float]:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        t = time.perf_counter()
        self.ix = self.make()
        self.ix.add(self.c.emb)
        took = time.perf_counter() - t
        faiss.omp_set_num_threads(1)
        return {"index_s": took}

    def make(self) -> Any:
        import faiss

        return faiss.IndexFlatIP(EMBED_DIM)

    def rss(self) -> float:
        return rss_mib()

    def footprint(self) -> float:
        """MiB the index's own arrays hold (steadier than this process's RSS, which the corpus and the
        ground truth's temporaries move by more than a 10k index weighs)."""
        return self.ix.codes.size() / 2**20

    def search(self, vec: np.ndarray, flt: Filter | None) -> list[int]:
        import faiss

        if flt is None:
            return self.ids(self.ix, vec, None)
        bits = np.packbits(flt.mask(self.c), bitorder="little")  # referenced until the search returns
        return self.ids(self.ix, vec, faiss.SearchParameters(sel=self.selector(bits)))

    def selector(self, bits: np.ndarray) -> Any:
        import faiss

        return faiss.IDSelectorBitmap(self.c.n, faiss.swig_ptr(bits))

    @staticmethod
    def ids(ix: Any, vec: np.ndarray, params: Any) -> list[int]:
        _, ids = ix.search(vec[None, :], K, params=params)
        return [int(i) for i in ids[0] if i >= 0]

    def close(self) -> None:
        import faiss

        self.ix = None
        faiss.omp_set_num_threads(os.cpu_count() or 1)


class FaissHnsw(FaissFlat):
    """FAISS HNSW with the server's M / efConstruction / ef. Under a filter it does what Milvus' HNSW does:
    below 7 % admitted rows, exact search over them (the index's own flat storage, no second copy);
    above, the graph search skipping rows outside the bitmap, ef raised by 1 / admitted fraction (capped)
    so that the beam still holds K admitted rows."""

    name, index = (
        "FAISS HNSW",
        f"HNSW M={HNSW_BUILD['M']}, efConstruction={HNSW_BUILD['efConstruction']}, ef={HNSW_EF}",
    )

    def make(self) -> Any:
        import faiss

        ix = faiss.IndexHNSWFlat(EMBED_DIM, HNSW_BUILD["M"], faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efConstruction = HNSW_BUILD["efConstruction"]
        return ix

    def footprint(self) -> float:
        import faiss

        h = self.ix.hnsw
        links = h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        return (faiss.downcast_index(self.ix.storage).codes.size() + links) / 2**20

    def search(self, vec: np.ndarray, flt: Filter | None) -> list[int]:
        import faiss

        if flt is None:
            return self.ids(self.ix, vec, faiss.SearchParametersHNSW(efSearch=HNSW_EF))
        mask = flt.mask(self.c)
        bits = np.packbits(mask, bitorder="little")
        admitted = float(mask.mean())
        if admitted < BRUTE_FORCE_BELOW:
            storage = faiss.downcast_index(self.ix.storage)
            return self.ids(storage, vec, faiss.SearchParameters(sel=self.selector(bits)))
        ef = int(min(FILTERED_EF_MAX, max(HNSW_EF, HNSW_EF / admitted)))
        return self.ids(self.ix, vec, faiss.SearchParametersHNSW(sel=self.selector(bits), efSearch=ef))


class StoreSearch:
    """Searches through ``CaseStore`` (the service's adapter): neighbours' study keys back to row ids."""

    store: CaseStore

    def search(self, vec: np.ndarray, flt: Filter | None) -> list[int]:
        got = self.store.search(vec, K, flt.case_filter() if flt is not None else CaseFilter())
        return [int(n.record.study_key[1:]) for n in got]

    def close(self) -> None:
        self.store.close()


class MilvusLite(StoreSearch):
    """Milvus Lite (a ``*.db`` file: pymilvus runs the pure-Python Lite server in this process), FLAT, filled
    with ``CaseStore.upsert`` as the local mesh's search service fills it."""

    name, index = "Milvus Lite", "FLAT"

    def __init__(self, c: Corpus, work: Path) -> None:
        self.c, self.path = c, work / f"lite-{c.n}.db"

    def build(self) -> dict[str, float]:
        records = [self.c.record(i) for i in range(self.c.n)]
        t = time.perf_counter()
        self.store = CaseStore(str(self.path), collection="bench", timeout_s=300.0)
        self.store.ensure_collection()
        self.store.upsert(records, keep_known_labels=False)
        self.store._client().flush("bench")  # searches of unflushed Lite rows are ~20x slower
        return {"insert_s": time.perf_counter() - t}

    def rss(self) -> float:
        return rss_mib()


class ServerCollection:
    """One size's rows in the standalone server, indexed in turn as HNSW and IVF_FLAT."""

    def __init__(self, server: Any, c: Corpus, name: str) -> None:
        from pymilvus import MilvusClient

        self.server, self.c, self.name = server, c, name
        tls = server.tls.client_kwargs() if server.tls is not None else {}
        self.raw = MilvusClient(uri=server.uri, token=server.token, timeout=300, dedicated=True, **tls)
        self.filled = False
        self.idle_mib = 0.0  # the server's RSS before this size's rows

    def rss(self) -> float:
        proc = self.server.proc
        return sum(rss_mib(p) for p in tree_pids(proc.pid)) if proc is not None else 0.0

    def store(self, index: str, build: dict[str, int], search: dict[str, int]) -> CaseStore:
        s = self.server
        return CaseStore(
            s.uri, s.token, collection=self.name, index=index, tls=s.tls,
            build_params=build, search_params=search, timeout_s=300.0, ddl_timeout_s=600.0,
        )  # fmt: skip

    def fill(self, index: str, build: dict[str, int]) -> float:
        """Create the collection through the store (its schema and index), then insert every row while
        the collection is released (no growing-segment search structures to maintain)."""
        self.idle_mib = self.rss()
        with self.store(index, build, {}) as s:
            s.ensure_collection()
        self.raw.release_collection(self.name)
        t = time.perf_counter()
        with _orm_collection(self.server, self.name) as coll, ThreadPoolExecutor(1) as pool:
            order = [f.name for f in coll.schema.fields]
            pending: Future[Any] | None = None
            for lo in range(0, self.c.n, BULK_ROWS):  # the next batch is built while one is sent
                batch = _columns(self.c.rows(lo, min(self.c.n, lo + BULK_ROWS)), order)
                if pending is not None:
                    pending.result()
                pending = pool.submit(coll.insert, batch, timeout=300)
            if pending is not None:
                pending.result()
            coll.flush(timeout=300)
        self.filled = True
        return time.perf_counter() - t

    def reindex(self, index: str, build: dict[str, int]) -> None:
        from cxrmesh.search.schema import build_index_params

        self.raw.release_collection(self.name)
        for name in self.raw.list_indexes(self.name, field_name=VECTOR):
            self.raw.drop_index(self.name, name)
        self.raw.create_index(self.name, build_index_params(self.raw, index, build))

    def wait_indexed(self, timeout_s: float = 900.0) -> None:
        (name,) = self.raw.list_indexes(self.name, field_name=VECTOR)
        deadline = time.monotonic() + timeout_s
        while True:
            desc = self.raw.describe_index(self.name, name)
            if desc.get("indexed_rows") == self.c.n and desc.get("pending_index_rows") == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"milvus did not index {self.c.n} rows in {timeout_s:.0f} s: {desc}")
            time.sleep(0.2)

    def load(self, tries: int = 5) -> None:
        """Load, and check that every row is in a loaded segment that carries the index (until then the
        server would search a growing segment by brute force and the numbers would not be the index's).
        A compaction after the flush can swap segments under the load: then wait for its index, reload."""
        for _ in range(tries):
            self.raw.load_collection(self.name, timeout=600)
            segments = self.raw.list_loaded_segments(self.name)
            rows = sum(seg.num_rows for seg in segments)
            if rows == self.c.n and all(seg.index_name == VECTOR for seg in segments):
                return
            self.raw.release_collection(self.name)
            time.sleep(2.0)
            self.wait_indexed()
        raise RuntimeError(f"milvus loaded {len(segments)} segments without the index or rows missing")

    def drop(self) -> None:
        with contextlib.suppress(Exception):  # best effort: the server is stopped at the end anyway
            self.raw.drop_collection(self.name)
        self.raw.close()


@contextlib.contextmanager
def _orm_collection(server: Any, name: str) -> Iterator[Any]:
    """pymilvus' column-wise insert (the ORM ``Collection``, deprecated in pymilvus 3 but the only public
    column-wise path): 1.6x the row-wise ``MilvusClient.insert`` at 100k rows, a minute saved at 1M."""
    from pymilvus import Collection, connections

    alias = f"bench-{name}"
    tls = server.tls.client_kwargs() if server.tls is not None else {}
    connections.connect(alias, uri=server.uri, token=server.token, **tls)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield Collection(name, using=alias)
    finally:
        connections.disconnect(alias)


def _columns(rows: list[dict[str, Any]], order: list[str]) -> list[Any]:
    cols = {k: [r[k] for r in rows] for k in order if k != VECTOR}
    cols[VECTOR] = np.stack([r[VECTOR] for r in rows])
    return [cols[k] for k in order]


class MilvusServerIndex(StoreSearch):
    """The standalone server with one index type; the first index of a size pays for the insert."""

    name = "Milvus server"

    def __init__(self, coll: ServerCollection, kind: str, build: dict[str, int], search: dict[str, int]):
        self.coll, self.kind, self.build_params, self.search_params = coll, kind, build, search
        self.index = f"{kind} " + ", ".join(f"{k}={v}" for k, v in (build | search).items())

    def build(self) -> dict[str, float]:
        phases: dict[str, float] = {}
        if not self.coll.filled:
            phases["insert_s"] = self.coll.fill(self.kind, self.build_params)
        t = time.perf_counter()
        if "insert_s" not in phases:
            self.coll.reindex(self.kind, self.build_params)  # pymilvus' create_index waits for the build
        self.coll.wait_indexed()
        phases["index_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.coll.load()
        phases["load_s"] = time.perf_counter() - t
        self.store = self.coll.store(self.kind, self.build_params, self.search_params)
        return phases

    def rss(self) -> float:
        return self.coll.rss()

    def baseline(self, before: float) -> float:
        """Memory is counted from the idle server before the rows came (release does not give back all
        of it, so counting from just before a re-index would hide what the index holds)."""
        return self.coll.idle_mib


class MilvusServerIdsOnly(MilvusServerIndex):
    """The same loaded HNSW collection searched with pymilvus directly, asking for the ids only: the
    difference to the store's row is the fetch of the neighbours' fields (embeddings included). Without
    a filter only (``modes``): the filters' cost is read from the store's rows."""

    modes = ("none",)

    def __init__(self, coll: ServerCollection, kind: str, build: dict[str, int], search: dict[str, int]):
        super().__init__(coll, kind, build, search)
        self.name = "Milvus server, ids only"

    def build(self) -> dict[str, float]:
        self.store = self.coll.store(self.kind, self.build_params, self.search_params)  # closed by close()
        return {}  # built and loaded by the row above

    def baseline(self, before: float) -> float:
        return self.coll.idle_mib

    def search(self, vec: np.ndarray, flt: Filter | None) -> list[int]:
        hits = self.coll.raw.search(
            self.coll.name,
            data=[vec.tolist()],
            filter=filter_expression(flt.case_filter()) if flt is not None else "",
            limit=K,
            output_fields=[],
            search_params={"metric_type": "COSINE", "params": self.search_params},
            anns_field=VECTOR,
            consistency_level="Bounded",
        )
        return [int(h["id"][1:]) for h in hits[0]]
