"""Diagnosis by a similarity-weighted vote of the nearest labelled prior cases.

The rule is the one ``retrieval_metrics`` in ``cxrmesh.ml.metrics`` reports as ``vote_accuracy_at_10``
(the number a model is accepted on), so what the service answers is what training measured:

* the top-k neighbours by cosine similarity (there: the whole gallery is labelled, so "top-k" and "top-k
  labelled" coincide; here unlabelled cases are skipped, not counted against k);
* each adds ``max(similarity, 0)`` to its diagnosis;
* the label is the arg-max, ties (including the all-zero case) going to the first in ``DIAGNOSES`` order as
  ``numpy.argmax`` does there.

Pure: no Milvus import, so it can be tested and reused without a store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cxrmesh.contracts.labels import DIAGNOSES  # the order decides ties
from cxrmesh.search.errors import InvalidQuery
from cxrmesh.search.records import Neighbour


@dataclass(frozen=True)
class Vote:
    """Outcome of a vote; ``label`` is "" when no neighbour had a known diagnosis."""

    label: str
    scores: dict[str, float]
    neighbours_used: int


def weighted_vote(neighbours: Sequence[Neighbour], k: int = 10) -> Vote:
    """Similarity-weighted vote over the top-k labelled neighbours (weights ``max(sim, 0)``).

    ``scores`` has one entry per diagnosis and sums to 1. When every used neighbour has a weight of 0
    (all similarities <= 0) the scores are uniform and the label is ``DIAGNOSES[0]``, which is what the
    training metric's arg-max of an all-zero row gives. ``neighbours_used`` counts the labelled neighbours
    taken (at most k), zero-weight ones included.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidQuery(f"vote k must be a positive integer, got {k!r}")
    labelled = []
    for n in neighbours:
        if not math.isfinite(n.similarity):
            raise InvalidQuery("a neighbour has a non-finite similarity; the vote would be meaningless")
        if n.record.diagnosis in DIAGNOSES:
            labelled.append(n)
    # Stable sort: equal similarities keep the store's order, as argsort over a gallery would.
    labelled.sort(key=lambda n: -n.similarity)
    used = labelled[:k]
    if not used:
        return Vote(label="", scores={d: 0.0 for d in DIAGNOSES}, neighbours_used=0)

    totals = {d: 0.0 for d in DIAGNOSES}
    for n in used:
        totals[n.record.diagnosis] += max(float(n.similarity), 0.0)
    mass = sum(totals.values())
    if mass > 0.0:
        scores = {d: totals[d] / mass for d in DIAGNOSES}
    else:
        scores = {d: 1.0 / len(DIAGNOSES) for d in DIAGNOSES}
    # max() returns the first maximal item, i.e. the DIAGNOSES-order tie-break of numpy.argmax.
    label = max(DIAGNOSES, key=lambda d: totals[d])
    return Vote(label=label, scores=scores, neighbours_used=len(used))
