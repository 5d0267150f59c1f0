"""pymilvus and gRPC failures as the store's typed errors: the one place that knows Milvus' codes.

Only :class:`StoreUnavailable` (timeouts, refused connections, rate limits, "not ready") is worth a
retry; a rejected request is :class:`InvalidQuery`; anything else is a :class:`StoreError`. Messages
are redacted (see ``redact``) and cut to one line.
"""

from __future__ import annotations

from typing import Any

import grpc
from pymilvus.client.types import Status
from pymilvus.exceptions import (
    CollectionNotExistException,
    ConnectError,
    DataNotMatchException,
    DataTypeNotMatchException,
    ErrorCode,
    MilvusException,
    MilvusUnavailableException,
    ParamError,
)
from pymilvus.grpc_gen import common_pb2

from cxrmesh.search.errors import InvalidQuery, StoreError, StoreUnavailable
from cxrmesh.search.redact import redact

_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


_REFUSED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def credentials_refused(exc: BaseException) -> bool:
    """Milvus refused the token. pymilvus raises a refused Connect as a CONNECT_FAILED MilvusException
    caused by the UNAUTHENTICATED RpcError: a wrong token, not an unavailable server, and no retry helps."""
    return any(isinstance(e, grpc.RpcError) and e.code() in _REFUSED_CODES for e in (exc, exc.__cause__))


def translate(operation: str, exc: Exception) -> StoreError:
    """Map a pymilvus / gRPC failure to the store's error classes (the only place that knows codes)."""
    if credentials_refused(exc):
        return StoreError(f"milvus {operation}: Milvus refused the credentials; check the token")
    if isinstance(exc, grpc.RpcError):
        code: Any = exc.code()
        message = exc.details() or ""
    elif isinstance(exc, MilvusException):
        code, message = exc.code, exc.message
    else:  # pragma: no cover - callers only pass the two above
        code, message = None, str(exc)
    detail = redact(str(message)).splitlines()[0][:300] if message else ""
    where = f"milvus {operation}"
    if isinstance(code, grpc.StatusCode):
        if code in _UNAVAILABLE_CODES:
            return StoreUnavailable(f"{where}: {code.name}: {detail}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidQuery(f"{where} rejected the request: {detail}")
    if isinstance(exc, MilvusException):
        if (
            isinstance(exc, (ConnectError, MilvusUnavailableException))
            or exc.code == Status.CONNECT_FAILED  # pymilvus could not (re)connect
            or exc.retriable  # the server says so (e.g. service not ready)
            or exc.code == ErrorCode.RATE_LIMIT
            or exc.compatible_code == common_pb2.RateLimit
        ):
            return StoreUnavailable(f"{where}: code {exc.code}: {detail}")
        if isinstance(exc, CollectionNotExistException) or exc.code == ErrorCode.COLLECTION_NOT_FOUND:
            return StoreError(f"{where}: the collection does not exist; call ensure_collection() first")
        if (
            isinstance(exc, (ParamError, DataTypeNotMatchException, DataNotMatchException))
            or exc.is_input_error
        ):
            return InvalidQuery(f"{where} rejected the request: {detail}")
        return StoreError(f"{where}: code {exc.code}: {detail}")
    return StoreError(f"{where}: {detail}")
