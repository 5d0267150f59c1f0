"""Upsert throughput and search latency of the case store (a benchmark, not a test).

Fills a collection with random unit embeddings, then times k-NN searches without a filter and with a
typical one (labelled only, one site, the query patient excluded), and the recall of the filtered
search against exact numpy search (it shows what an approximate index loses under a filter). Example:

    python benchmarks/milvus_store.py --n 20000                       # embedded Milvus Lite, FLAT
    python benchmarks/milvus_store.py --n 100000 --index IVF_FLAT
    python benchmarks/milvus_store.py --uri http://127.0.0.1:19530    # a running server
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrmesh.search import DIAGNOSES, CaseFilter, CaseRecord, CaseStore
from cxrmesh.search.schema import INDEX_TYPES


def _records(n: int, dim: int, rng: np.random.Generator) -> tuple[list[CaseRecord], np.ndarray]:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    recs = [
        CaseRecord(
            study_key=f"S{i:07d}",
            patient_key=f"P{i // 3:07d}",
            embedding=x[i],
            model_version="bench",
            site=("site-a", "site-b", "site-c")[i % 3],
            diagnosis=("", *DIAGNOSES)[i % 4],
        )
        for i in range(n)
    ]
    return recs, x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="stored studies")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--index", choices=INDEX_TYPES, default="FLAT")
    ap.add_argument("--uri", default="", help="Milvus address; default: a temporary Milvus Lite .db")
    ap.add_argument("--collection", default="bench_cases")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    recs, x = _records(args.n, args.dim, rng)
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.uri or str(Path(tmp) / "bench.db")
        store = CaseStore(
            uri,
            collection=args.collection,
            dim=args.dim,
            index=args.index,
            consistency="Strong",  # recall against what was just written
            timeout_s=60.0,  # bulk upserts
        )
        store.ensure_collection()
        t0 = time.perf_counter()
        for start in range(0, len(recs), 2048):
            store.upsert(recs[start : start + 2048], keep_known_labels=False)
        upsert_s = time.perf_counter() - t0
        rate = args.n / upsert_s
        print(f"upsert: {args.n} rows in {upsert_s:.1f} s ({rate:.0f} rows/s); count={store.count()}")

        qi = rng.choice(args.n, size=args.queries, replace=False)
        for name, make in (
            ("no filter", lambda i: CaseFilter()),
            (
                "filtered",
                lambda i: CaseFilter(
                    sites=("site-a",), labelled_only=True, exclude_patient_key=recs[i].patient_key
                ),
            ),
        ):
            lat, recall = [], []
            for i in qi:
                flt = make(int(i))
                t = time.perf_counter()
                got = store.search(x[i], args.k, flt)
                lat.append(time.perf_counter() - t)
                keep = np.array(
                    [
                        (not flt.sites or r.site in flt.sites)
                        and (not flt.labelled_only or r.diagnosis != "")
                        and r.patient_key != flt.exclude_patient_key
                        for r in recs
                    ]
                )
                sims = np.where(keep, x @ x[i], -np.inf)
                exact = {recs[j].study_key for j in np.argsort(-sims)[: args.k]}
                recall.append(len(exact & {n.record.study_key for n in got}) / args.k)
            ms = np.array(lat) * 1000
            print(
                f"search {name:9s}: p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, "
                f"recall@{args.k} {np.mean(recall):.3f}"
            )
        store.close()


if __name__ == "__main__":
    main()
