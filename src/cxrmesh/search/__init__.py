"""Similar-case search: the Milvus case store and the similarity-weighted diagnosis vote."""

from cxrmesh.contracts.labels import DIAGNOSES
from cxrmesh.search.errors import InvalidQuery, NotFound, SchemaMismatch, StoreError, StoreUnavailable
from cxrmesh.search.store import CaseFilter, CaseRecord, CaseStore, Neighbour, RetryPolicy, filter_expression
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
