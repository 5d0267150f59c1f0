"""Typed errors of the case store, one class per gRPC status the search service will map them to.

Callers branch on the class, never on message text; messages say what to fix but never carry study or
patient keys (they end up in logs and gRPC status details).
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every case-store failure (maps to gRPC INTERNAL unless a subclass says otherwise)."""


class StoreUnavailable(StoreError):
    """Milvus did not answer in time or refused the connection; retrying later may succeed (UNAVAILABLE)."""


class InvalidQuery(StoreError):
    """The request itself is wrong (vector dim, non-finite values, filter value, k); retrying cannot help
    (INVALID_ARGUMENT)."""


class NotFound(StoreError):
    """A study key that the store does not hold (NOT_FOUND)."""


class SchemaMismatch(StoreError):
    """The existing collection has another dim, fields or metric; the service must refuse to start rather
    than write rows the collection cannot hold or compare embeddings that are not comparable."""
