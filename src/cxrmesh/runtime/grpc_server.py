"""gRPC serving for every service: health, reflection, metrics, error mapping, graceful stop.

``ServiceRuntime`` owns the process: it configures logging, starts the metrics endpoint, serves
the service's gRPC API together with ``grpc.health.v1`` and reflection, runs background workers
(Kafka consumers, outbox relays) and stops all of it on SIGTERM within ``grace_s``. Health is
SERVING only while every registered dependency check passes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from cxrmesh.contracts.errors import ServiceError
from cxrmesh.runtime import metrics, tracing
from cxrmesh.runtime.audit import AuditTrail
from cxrmesh.runtime.authz import Authorizer
from cxrmesh.runtime.grpc_wrap import split_method, wrap_handler
from cxrmesh.runtime.log import configure_logging
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tls import PLAINTEXT_WARNING, certificate_expiry, server_credentials

log = logging.getLogger(__name__)
DOMAIN = "cxrmesh"


def abort_with(context: grpc.ServicerContext, err: ServiceError) -> None:
    """Abort the RPC with ``err``'s code, its message as details and its reason as ErrorInfo."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=getattr(code_pb2, err.code.name), message=err.message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


def error_reason(exc: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call ('' if none): for clients and tests."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is None:
        return ""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


class _Observed(grpc.ServerInterceptor):
    """Counts and times every RPC and maps ServiceError / unexpected exceptions to statuses."""

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        service, method = split_method(handler_call_details.method)
        if service.startswith(("grpc.health", "grpc.reflection")):
            return handler
        return wrap_handler(
            handler, lambda fn: _observe(fn, service, method), lambda fn: _observe_stream(fn, service, method)
        )


class _Outcome:
    """Bookkeeping of one RPC: its status code, recorded once when it ends."""

    def __init__(self, service: str, method: str):
        self.service, self.method = service, method
        self.start = time.perf_counter()
        self.code = grpc.StatusCode.OK

    def fail(self, exc: BaseException, context: grpc.ServicerContext) -> None:
        """Turn ``exc`` into the RPC's status (re-raises aborts that already carry one)."""
        if isinstance(exc, ServiceError):
            self.code = exc.code
            fields = {"method": self.method, "code": exc.code.name, "reason": exc.reason}
            log.info("rpc refused", extra=fields)
            abort_with(context, exc)
        if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
            raise exc
        if context.code() not in (None, grpc.StatusCode.OK):  # context.abort(): its status stands
            raise exc
        self.code = grpc.StatusCode.INTERNAL
        log.error("rpc failed", extra={"method": self.method}, exc_info=exc)
        abort_with(context, ServiceError("internal", "internal error; see the service log"))

    def done(self, context: grpc.ServicerContext) -> None:
        code = context.code()
        if code not in (None, grpc.StatusCode.OK):
            self.code = code
        metrics.grpc_handled().labels(self.service, self.method, self.code.name).inc()
        metrics.grpc_latency().labels(self.service, self.method).observe(time.perf_counter() - self.start)


def _observe(fn: Callable, service: str, method: str) -> Callable:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        outcome = _Outcome(service, method)
        try:
            return fn(request, context)
        except Exception as exc:
            outcome.fail(exc, context)
        finally:
            outcome.done(context)

    return call


def _observe_stream(fn: Callable, service: str, method: str) -> Callable:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        outcome = _Outcome(service, method)
        try:
            yield from fn(request, context)
        except Exception as exc:
            outcome.fail(exc, context)
        finally:
            outcome.done(context)

    return call


Worker = Callable[[threading.Event], None]


class ServiceRuntime:
    """One service process: gRPC server + health + reflection + metrics + workers + shutdown."""

    def __init__(self, settings: ServiceSettings, max_workers: int = 16):
        self.settings = settings
        configure_logging(settings.service, settings.log_level, settings.log_format, settings.log_file)
        tracing.setup(settings.service, settings.trace_export())
        self.tls = settings.tls()  # refuses to go on without TLS files unless insecure was asked for
        self.stop_event = threading.Event()
        self.audit = AuditTrail.from_settings(settings)
        opts = [
            ("grpc.max_receive_message_length", settings.max_message_mb * 1024 * 1024),
            ("grpc.max_send_message_length", settings.max_message_mb * 1024 * 1024),
        ]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
            # tracing first, so refused calls are traced too; then authorization: a refused call never
            # reaches _Observed or a handler
            interceptors=[
                tracing.server_interceptor(),
                Authorizer(settings, self.audit, abort_with),
                _Observed(),
            ],
            options=opts,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._services: list[str] = []
        self._checks: dict[str, Callable[[], bool]] = {}
        self._workers: list[tuple[str, Worker]] = []
        self._threads: list[threading.Thread] = []
        # run last, after in-flight calls: the audit log, then the spans still buffered
        self._closers: list[Callable[[], None]] = [tracing.flush, self.audit.close]
        self.port = 0
        self.metrics_port = 0

    # ------------------------------------------------------------------ wiring
    def add_service(self, full_name: str, add_fn: Callable[[Any, grpc.Server], None], servicer: Any) -> None:
        add_fn(servicer, self.server)
        self._services.append(full_name)

    def add_dependency(self, name: str, check: Callable[[], bool]) -> None:
        """Health is SERVING only while ``check()`` is true (it must be quick and not raise)."""
        self._checks[name] = check

    def add_worker(self, name: str, worker: Worker) -> None:
        """A background loop that runs until the stop event is set (Kafka consumer, outbox relay)."""
        self._workers.append((name, worker))

    def on_close(self, fn: Callable[[], None]) -> None:
        self._closers.append(fn)

    # ------------------------------------------------------------------ lifecycle
    def healthy(self) -> bool:
        ok = True
        for name, check in self._checks.items():
            try:
                up = bool(check())
            except Exception:  # a health probe must never take the service down
                log.warning("health check raised", extra={"dependency": name}, exc_info=True)
                up = False
            metrics.dependency_up().labels(self.settings.service, name).set(1 if up else 0)
            ok &= up
        return ok

    def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._services]:
            self.health.set(name, status)

    def _watch_health(self) -> None:
        last = None
        while not self.stop_event.is_set():
            now = self.healthy()
            if now != last:
                log.info("health changed", extra={"serving": now})
                self._set_health(now)
                last = now
            self.stop_event.wait(self.settings.health_interval_s)

    def start(self) -> int:
        names = [*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], self.server)
        self._set_health(False)
        self.port = self._bind(f"{self.settings.grpc_host}:{self.settings.grpc_port}")
        if self.tls is not None:  # plaintext has no certificate to expire
            for name, not_after in certificate_expiry(self.tls).items():
                metrics.tls_certificate_expiry().labels(name).set(not_after)
        self.metrics_port = metrics.start_metrics_server(
            self.settings.metrics_port, self.settings.grpc_host, self.tls
        )
        self.server.start()
        for name, worker in [("health", lambda _stop: self._watch_health()), *self._workers]:
            t = threading.Thread(target=self._guard, args=(name, worker), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("serving", extra={"grpc_port": self.port, "metrics_port": self.metrics_port})
        return self.port

    def _bind(self, address: str) -> int:
        """Bind the gRPC port: mutual TLS, or plaintext (loudly) when the settings say ``insecure``."""
        if self.tls is None:
            log.warning(PLAINTEXT_WARNING, extra={"address": address})
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, server_credentials(self.tls))
        if port == 0:
            raise RuntimeError(f"cannot bind gRPC port {address}")
        return port

    def _guard(self, name: str, worker: Worker) -> None:
        """A worker that dies takes the service's health with it, rather than failing silently."""
        try:
            worker(self.stop_event)
        except Exception:
            log.exception("worker crashed", extra={"worker": name})
            self._checks[f"worker:{name}"] = lambda: False

    def stop(self) -> None:
        if self.stop_event.is_set():
            return
        log.info("stopping", extra={"grace_s": self.settings.grace_s})
        self._set_health(False)
        self.stop_event.set()
        self.server.stop(self.settings.grace_s).wait()
        deadline = time.monotonic() + self.settings.grace_s
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception:
                log.warning("close failed", exc_info=True)
        log.info("stopped")

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then stop gracefully (the process entry point)."""
        signalled = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: signalled.set())
        self.start()
        while not signalled.wait(0.5):
            pass
        self.stop()
