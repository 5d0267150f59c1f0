"""Putting code around a gRPC method handler: the one way the server's interceptors do it.

Both interceptors of ``ServiceRuntime`` (authorization and audit in ``authz``; metrics and error mapping in
``grpc_server``) wrap the handler of every call the same way: find its kind (unary or streaming request and
reply), wrap the function, rebuild a handler of the same kind with the same (de)serializers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Wrap = Callable[[Callable], Callable]

_HANDLER_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def split_method(full: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full.lstrip("/").partition("/")
    return service, method


def wrap_handler(handler: Any, unary: Wrap, streaming: Wrap) -> Any:
    """``handler`` with its function wrapped by ``unary``, or by ``streaming`` when the reply streams."""
    for attr, make in _HANDLER_KINDS.items():
        fn = getattr(handler, attr)
        if fn is not None:
            wrapped = streaming(fn) if handler.response_streaming else unary(fn)
            return make(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
