"""Errors a service raises on purpose, each mapped to one gRPC status code with a reason.

Handlers raise these; the server interceptor turns them into a status whose details say what to
fix and whose ``google.rpc.ErrorInfo.reason`` is a stable machine-readable code. Anything else
becomes INTERNAL with a generic message (the exception goes to the log, not to the caller).
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServiceError):
    """A dependency (Triton, Milvus, Kafka, storage) does not answer; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServiceError):
    """The caller could not be identified (no client certificate, a refused bearer token)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """The caller is known but holds none of the roles the method needs."""

    code = grpc.StatusCode.PERMISSION_DENIED
