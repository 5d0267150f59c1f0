"""Similar-case search: the Milvus case store and the similarity-weighted diagnosis vote.

``records`` (CaseRecord, CaseFilter, Neighbour), ``filters`` (the expression compiler and value checks),
``rows`` (records as Milvus rows), ``schema``, ``retry`` (RetryPolicy), ``translate`` (pymilvus errors as
the typed tree of ``errors``), ``redact``, ``store`` (CaseStore) and ``vote`` (pure, no Milvus).
"""

from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.search.errors import InvalidQuery, NotFound, SchemaMismatch, StoreError, StoreUnavailable
from cxrmesh.search.filters import filter_expression
from cxrmesh.search.records import CaseFilter, CaseRecord, Neighbour
from cxrmesh.search.retry import RetryPolicy
from cxrmesh.search.store import CaseStore
from cxrmesh.search.vote import Vote, weighted_vote

__all__ = [
    "DIAGNOSES",
    "CaseFilter",
    "CaseRecord",
    "CaseStore",
    "InvalidQuery",
    "Neighbour",
    "NotFound",
    "RetryPolicy",
    "SchemaMismatch",
    "StoreError",
    "StoreUnavailable",
    "Vote",
    "filter_expression",
    "weighted_vote",
]
