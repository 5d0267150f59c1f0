"""The synthetic case corpus of the search benchmark: embeddings shaped like the embedder's, the case
store's scalar fields, the queries with their filters, and the exact top-k each filter admits.

Why the vectors look as they do: see ``benchmarks.suite.search``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.contracts.tensors import EMBED_DIM
from cxrmesh.search import CaseFilter, CaseRecord

K = 10
SITES = ("site-a", "site-b", "site-c", "site-d", "site-e")
SITE_WEIGHTS = (0.35, 0.25, 0.2, 0.12, 0.08)
FIRST_DAY, DAYS = np.datetime64("2019-01-01"), 6 * 365
MODEL = "embedder-v1"


@dataclass
class Corpus:
    """n stored studies: embeddings and the scalar columns the store filters on (codes, not strings)."""

    emb: np.ndarray  # (n, EMBED_DIM) float32, unit rows
    site: np.ndarray  # int8 index into SITES
    day: np.ndarray  # int32 yyyymmdd
    diagnosis: np.ndarray  # int8: 0 unknown, i + 1 for DIAGNOSES[i]
    patient: np.ndarray  # int32

    @property
    def n(self) -> int:
        return len(self.emb)

    def study_key(self, i: int) -> str:
        return f"S{i:08d}"

    def rows(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """Rows of [lo, hi) as the store writes them (its own validation and conversion)."""
        from cxrmesh.search.rows import to_row

        return [to_row(self.record(i), i, EMBED_DIM) for i in range(lo, hi)]

    def record(self, i: int) -> CaseRecord:
        d = str(self.day[i])
        return CaseRecord(
            study_key=self.study_key(i),
            patient_key=f"P{self.patient[i]:08d}",
            embedding=self.emb[i],
            model_version=MODEL,
            site=SITES[self.site[i]],
            diagnosis=("", *DIAGNOSES)[self.diagnosis[i]],
            study_date=f"{d[:4]}-{d[4:6]}-{d[6:]}",
        )


@dataclass(frozen=True)
class Filter:
    """A metadata filter as the service sends it (``CaseFilter``) and as a NumPy mask (the ground truth)."""

    sites: tuple[int, ...]
    day_from: int
    day_to: int
    diagnoses: tuple[int, ...]  # () with labelled_only: any known diagnosis
    labelled_only: bool
    patient: int  # the query's own patient, always excluded

    def case_filter(self) -> CaseFilter:
        def iso(d: int) -> str:
            return f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}"

        return CaseFilter(
            sites=tuple(SITES[s] for s in self.sites),
            diagnoses=tuple(DIAGNOSES[d - 1] for d in self.diagnoses),
            labelled_only=self.labelled_only,
            study_date_from=iso(self.day_from),
            study_date_to=iso(self.day_to),
            exclude_patient_key=f"P{self.patient:08d}",
            model_version=MODEL,
        )

    def mask(self, c: Corpus) -> np.ndarray:
        sites = np.zeros(len(SITES), bool)
        sites[list(self.sites)] = True
        diagnoses = np.zeros(len(DIAGNOSES) + 1, bool)
        diagnoses[list(self.diagnoses) if self.diagnoses else slice(1, None)] = True
        return (
            sites[c.site]  # a lookup table: np.isin sorts, 5x slower at 1M rows
            & diagnoses[c.diagnosis]
            & (c.day >= self.day_from)
            & (c.day <= self.day_to)
            & (c.patient != self.patient)
        )


# name -> (sites of the 5, years of the 6, diagnoses: 0 = any known one). "labelled": what the vote and
# prognosis ask (labelled neighbours), narrowed to a few sites and years (~1/3 of the rows, unrelated to
# where a query lies: the index does the work). "diagnosis": one diagnosis at one site in three years
# (~2.5 %, always under the 7 % at which Milvus' HNSW searches the admitted rows exactly), which cuts
# across the clusters: the neighbours it admits may lie in another class's region.
FILTERS = {"labelled": (3, 4, 0), "diagnosis": (1, 3, 1)}
MODES = ("none", *FILTERS)


@dataclass
class Query:
    vec: np.ndarray
    filters: dict[str, Filter]


class _Geometry:
    """The clusters, fixed across sizes: 3 diagnoses x 24 sub-clusters of uneven weight, each spread along
    16 directions of its own (learned embeddings vary along few directions: a low intrinsic dimension)
    plus a little isotropic noise, and a small shift per site (scanners)."""

    def __init__(self, seed: int = 21, directions: int = 16) -> None:
        rng = np.random.default_rng(seed)
        classes = _unit(rng.standard_normal((len(DIAGNOSES), EMBED_DIM)))
        self.sub_class = np.repeat(np.arange(len(DIAGNOSES)), 24)
        self.centres = _unit(classes[self.sub_class] + 0.8 * _unit(rng.standard_normal((72, EMBED_DIM))))
        self.weights = rng.dirichlet(np.full(72, 2.0))
        self.site_shift = 0.3 * _unit(rng.standard_normal((len(SITES), EMBED_DIM)))
        bases = [np.linalg.qr(rng.standard_normal((EMBED_DIM, directions)))[0].T for _ in range(72)]
        self.bases = np.stack(bases).astype(np.float32) / np.sqrt(directions)  # offsets of norm ~1

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings, class index, site index) of n studies, two per patient (close together)."""
        noise = 1.0 / np.sqrt(EMBED_DIM)
        pairs = (n + 1) // 2
        cluster = rng.choice(len(self.weights), size=pairs, p=self.weights)
        site = rng.choice(len(SITES), size=pairs, p=SITE_WEIGHTS).astype(np.int8)
        base = (
            self.centres[cluster]
            + self.site_shift[site]
            + 0.1 * noise * rng.standard_normal((pairs, EMBED_DIM))
        )
        coef = rng.standard_normal((pairs, self.bases.shape[1])).astype(np.float32)
        for k in np.unique(cluster):
            rows = cluster == k
            base[rows] += coef[rows] @ self.bases[k]
        emb = np.repeat(base, 2, axis=0)[:n]
        emb += 0.3 * noise * rng.standard_normal((n, EMBED_DIM))  # the patient's two studies
        return _unit(emb), np.repeat(self.sub_class[cluster], 2)[:n], np.repeat(site, 2)[:n]


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def make_corpus(n: int, seed: int = 1) -> Corpus:
    rng, geo = np.random.default_rng(seed), _Geometry()
    emb = np.empty((n, EMBED_DIM), np.float32)
    cls = np.empty(n, np.int8)
    site = np.empty(n, np.int8)
    for lo in range(0, n, 100_000):  # chunks: float64 temporaries of 1M x 128 would take 1 GiB
        hi = min(n, lo + 100_000)
        emb[lo:hi], cls[lo:hi], site[lo:hi] = geo.draw(rng, hi - lo)
    labelled = rng.random(n) < 0.75  # a quarter of the stored studies have no diagnosis yet
    days = FIRST_DAY + rng.integers(0, DAYS, n).astype("timedelta64[D]")
    day = np.char.replace(np.datetime_as_string(days), "-", "").astype(np.int32)
    patient = (np.arange(n) // 2).astype(np.int32)
    return Corpus(emb, site, day, np.where(labelled, cls + 1, 0).astype(np.int8), patient)


def make_queries(c: Corpus, nq: int, seed: int = 2) -> list[Query]:
    """New studies (not stored), each with a broad and a narrow filter over random sites, a date window
    and diagnoses, excluding the query's own patient (its nearest stored study's, as if a prior)."""
    rng, geo = np.random.default_rng(seed), _Geometry()
    vecs, _, _ = geo.draw(rng, 2 * nq)
    vecs = vecs[::2]  # one study per query patient
    (nearest,) = _topk(c.emb, vecs, [lambda j: None], 1)
    return [
        Query(
            vecs[j],
            {name: _filter(rng, spec, int(c.patient[nearest[j][0]])) for name, spec in FILTERS.items()},
        )
        for j in range(nq)
    ]


def _filter(rng: np.random.Generator, spec: tuple[int, int, int], patient: int) -> Filter:
    sites, years, diagnoses = spec
    start = int(rng.integers(0, DAYS - years * 365 + 1))
    lo, hi = (str(FIRST_DAY + np.timedelta64(start + d, "D")).replace("-", "") for d in (0, years * 365 - 1))
    return Filter(
        tuple(sorted(int(s) for s in rng.choice(len(SITES), sites, replace=False))),
        int(lo),
        int(hi),
        tuple(sorted(int(d) + 1 for d in rng.choice(len(DIAGNOSES), diagnoses, replace=False))),
        diagnoses == 0,
        patient,
    )


MaskOf = Callable[[int], np.ndarray | None]  # query index -> the rows its filter admits (None: all)


def _topk(emb: np.ndarray, vecs: np.ndarray, modes: list[MaskOf], k: int) -> list[list[np.ndarray]]:
    """Exact top-k row ids (inner product) per mode and query; one matrix product serves every mode."""
    out: list[list[np.ndarray]] = [[] for _ in modes]
    for lo in range(0, len(vecs), 32):
        sims = vecs[lo : lo + 32] @ emb.T  # (queries, rows): each query's similarities contiguous
        for j in range(sims.shape[0]):
            for m, mask_of in enumerate(modes):
                mask = mask_of(lo + j)
                rows = np.arange(len(emb)) if mask is None else np.flatnonzero(mask)
                s = sims[j] if mask is None else sims[j, rows]
                kk = min(k, len(rows))
                top = np.argpartition(-s, kk - 1)[:kk] if kk else np.empty(0, np.int64)
                out[m].append(rows[top[np.argsort(-s[top])]])
    return out


def ground_truth(c: Corpus, queries: list[Query]) -> dict[str, list[set[int]]]:
    """Per mode, each query's exact top-K row ids (brute force over the rows its filter admits)."""
    vecs = np.stack([q.vec for q in queries])
    modes: list[MaskOf] = [lambda j: None]
    modes += [lambda j, name=name: queries[j].filters[name].mask(c) for name in FILTERS]
    tops = _topk(c.emb, vecs, modes, K)
    return {mode: [set(t.tolist()) for t in top] for mode, top in zip(MODES, tops, strict=True)}
