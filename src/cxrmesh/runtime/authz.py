"""Per-method authorization: who is calling, may they call this method, and the audit record of the call.

Every RPC passes :class:`Authorizer` (a ``grpc.ServerInterceptor`` that ``ServiceRuntime`` installs)
before its handler runs:

1. **Who.** The caller is the client certificate that mutual TLS verified (``context.auth_context()``):
   its subject CN is the name, each subject OU a role (the convention of ``cxrmesh.local.pki`` and the
   cert-manager Certificates). A bearer token (metadata ``authorization: Bearer <JWT>``), when the
   settings name an issuer, is verified with PyJWT (signature, ``exp``, ``iss``, ``aud``) and its
   ``roles`` claim *adds* roles to the certificate's: a token alone identifies no one unless
   ``auth_jwt_standalone`` says so, so a stolen token is useless without a mesh certificate. A token that
   is sent but fails verification refuses the call (it is never silently ignored).
2. **May they.** ``cxrmesh/contracts/access_policy.toml`` names the roles of every method; the caller
   needs one of them. Health checking is open to any caller the transport let in; a method without an
   entry is refused.
3. **Refusals** use the project's error mapping: UNAUTHENTICATED or PERMISSION_DENIED with an
   ``ErrorInfo`` reason and a message that says what to do (which role the method needs), counted in
   ``cxrmesh_authz_denied_total{service,method,reason}`` (never a study or patient label).
4. **Audit.** Every call of a cxrmesh.v1 method leaves one record (``cxrmesh.runtime.audit``) with its
   outcome, refused calls included.

Plaintext (``insecure=True``) carries no certificate, so every call is refused as unauthenticated; only
``auth_mode="off"`` lets callers through without identity, for debugging, with a WARNING at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import Counter

from cxrmesh.contracts.access import AccessPolicy, load_policy
from cxrmesh.contracts.errors import PermissionDenied, ServiceError, Unauthenticated
from cxrmesh.runtime import metrics
from cxrmesh.runtime.audit import AuditTrail
from cxrmesh.runtime.grpc_wrap import split_method, wrap_handler
from cxrmesh.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

Abort = Callable[[grpc.ServicerContext, ServiceError], None]
AUTH_OFF_WARNING = "authorization OFF (auth_mode=off): every caller may call every method; debugging only"
PKI_HINT = "present a client certificate signed by the mesh's CA (mutual TLS; `cxrmesh up` issues them)"


def denied_total() -> Counter:
    doc = "RPCs refused by the authorization interceptor, by method and reason."
    return metrics.metric(Counter, "cxrmesh_authz_denied_total", doc, ("service", "method", "reason"))


@dataclass(frozen=True)
class Caller:
    """Who is calling: the certificate's CN, the roles (certificate OUs + token roles), the token's sub."""

    name: str = ""
    roles: frozenset[str] = frozenset()
    token_subject: str = ""


@lru_cache(maxsize=256)
def caller_from_certificate(pem: bytes) -> Caller:
    """The caller a (verified) client certificate names: CN and one role per subject OU."""
    subject = x509.load_pem_x509_certificate(pem).subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    roles = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return Caller(str(names[0].value) if names else "", frozenset(str(r.value) for r in roles))


class TokenVerifier:
    """Verifies bearer tokens (JWT) of one issuer with PyJWT; the ``roles`` claim lists the roles."""

    def __init__(
        self, issuer: str, audience: str, algorithms: tuple[str, ...], key: str = "", jwks_url: str = ""
    ):
        if not audience or not (key or jwks_url):
            raise ValueError(
                "bearer tokens need CXRMESH_AUTH_JWT_AUDIENCE and one of CXRMESH_AUTH_JWT_KEY_FILE or "
                "CXRMESH_AUTH_JWT_JWKS_URL besides CXRMESH_AUTH_JWT_ISSUER"
            )
        self.issuer, self.audience, self.algorithms = issuer, audience, list(algorithms)
        self._key = key
        self._jwks = jwt.PyJWKClient(jwks_url) if jwks_url else None

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> TokenVerifier | None:
        """None when no issuer is configured: then any bearer token is refused."""
        if not settings.auth_jwt_issuer:
            return None
        key = Path(settings.auth_jwt_key_file).read_text() if settings.auth_jwt_key_file else ""
        return cls(
            settings.auth_jwt_issuer,
            settings.auth_jwt_audience,
            settings.auth_jwt_algorithms,
            key,
            settings.auth_jwt_jwks_url,
        )

    def verify(self, token: str) -> Caller:
        """The token's subject and roles; raises ``jwt.PyJWTError`` when it is not valid."""
        key: Any = self._jwks.get_signing_key_from_jwt(token).key if self._jwks else self._key
        claims = jwt.decode(
            token,
            key,
            algorithms=self.algorithms,
            audience=self.audience,
            issuer=self.issuer,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise jwt.InvalidTokenError("the roles claim must be a list of strings")
        return Caller(roles=frozenset(roles), token_subject=str(claims["sub"]))


def _bearer(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
            return value[7:].strip()
    return None


def _study_key(message: Any) -> str:
    """The study pseudonym a request or reply names ('' when it has no ``study_key`` field)."""
    fields = getattr(getattr(message, "DESCRIPTOR", None), "fields_by_name", {})
    return str(message.study_key) if "study_key" in fields else ""


def _code_of(exc: BaseException | None, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str]:
    """The status a call ends with (and its reason), from what the handler raised or set."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.reason
    code = context.code()
    if code not in (None, grpc.StatusCode.OK):
        return code, ""
    if exc is None:
        return grpc.StatusCode.OK, ""
    return (grpc.StatusCode.CANCELLED if isinstance(exc, GeneratorExit) else grpc.StatusCode.INTERNAL), ""


class Authorizer(grpc.ServerInterceptor):
    """Identifies the caller, checks the method's roles, refuses or audits; see the module docstring."""

    def __init__(
        self,
        settings: ServiceSettings,
        audit: AuditTrail | None,
        abort: Abort,
        policy: AccessPolicy | None = None,
    ):
        self.policy = policy or load_policy()
        self.audit = audit
        self.abort = abort
        self.tokens = TokenVerifier.from_settings(settings)
        self.standalone = settings.auth_jwt_standalone
        self.enforce = settings.auth_mode == "enforce"
        if not self.enforce:
            log.warning(AUTH_OFF_WARNING)

    # ------------------------------------------------------------------ who and may they
    def identify(self, context: grpc.ServicerContext) -> Caller:
        """The caller of this RPC; raises :class:`Unauthenticated` with what to present instead."""
        pem = (context.auth_context() or {}).get("x509_pem_cert")
        cert = caller_from_certificate(bytes(pem[0])) if pem else None
        token = _bearer(context)
        if token is None:
            if cert is None:
                raise Unauthenticated("no_client_certificate", f"no client certificate: {PKI_HINT}")
            return cert
        if self.tokens is None:
            raise Unauthenticated(
                "bearer_token_not_accepted",
                "a bearer token was sent but this service verifies none (set CXRMESH_AUTH_JWT_ISSUER); "
                "send no authorization header",
            )
        try:
            claims = self.tokens.verify(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("bad_bearer_token", f"the bearer token was refused: {exc}") from exc
        if cert is None and not self.standalone:
            raise Unauthenticated("certificate_required", f"a bearer token only adds roles: {PKI_HINT}")
        base = cert or Caller(name=claims.token_subject)
        return Caller(base.name, base.roles | claims.roles, claims.token_subject)

    def check(self, caller: Caller, service: str, method: str) -> None:
        """Raise :class:`PermissionDenied` unless ``caller`` holds a role the policy gives the method."""
        allowed = self.policy.roles_for(service, method)
        if allowed is None:
            raise PermissionDenied(
                "no_policy_entry", f"{service}/{method} has no entry in access_policy.toml: refused"
            )
        if not caller.roles & allowed:
            held = ", ".join(sorted(caller.roles)) or "none"
            raise PermissionDenied(
                "missing_role",
                f"{service}/{method} needs one of the roles {', '.join(sorted(allowed))}; "
                f"caller {caller.name or caller.token_subject!r} holds {held}",
            )

    def admit(self, service: str, method: str, request: Any, context: grpc.ServicerContext) -> Caller:
        """The caller when the call may go on; otherwise count, audit and abort the call."""
        caller = Caller()
        try:
            caller = self.identify(context)
            if self.enforce:
                self.check(caller, service, method)
            return caller
        except ServiceError as err:
            if not self.enforce:
                return caller
            denied_total().labels(service, method, err.reason).inc()
            fields = {"grpc_service": service, "grpc_method": method, "reason": err.reason}
            log.info("rpc denied", extra=fields)
            self.record(caller, service, method, _study_key(request), err.code, err.reason)
            self.abort(context, err)
            raise  # abort raised already; this keeps type checkers and odd contexts honest

    def record(
        self, caller: Caller, service: str, method: str, study_key: str, code: grpc.StatusCode, reason: str
    ) -> None:
        if self.audit is not None and self.policy.audited(service):
            self.audit.record(
                caller=caller.name,
                roles=caller.roles,
                token_subject=caller.token_subject,
                grpc_service=service,
                method=method,
                study_key=study_key,
                outcome=code.name,
                reason=reason,
            )

    # ------------------------------------------------------------------ the interceptor
    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        service, method = split_method(handler_call_details.method)
        if handler is None or self.policy.is_open(service):
            return handler
        return wrap_handler(
            handler,
            lambda fn: self._guard(fn, service, method),
            lambda fn: self._guard_stream(fn, service, method),
        )

    def _guard(self, fn: Callable, service: str, method: str) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            audited = _AuditedCall(self, service, method, request, context)
            try:
                return audited.saw(fn(request, context))
            except BaseException as exc:
                audited.failure = exc
                raise
            finally:
                audited.done()

        return call

    def _guard_stream(self, fn: Callable, service: str, method: str) -> Callable:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            audited = _AuditedCall(self, service, method, request, context)
            try:
                yield from map(audited.saw, fn(request, context))
            except BaseException as exc:
                audited.failure = exc
                raise
            finally:
                audited.done()

        return call


class _AuditedCall:
    """One admitted call: its caller, the study it names (request or reply) and, at the end, its record."""

    def __init__(
        self, authz: Authorizer, service: str, method: str, request: Any, context: grpc.ServicerContext
    ):
        self.caller = authz.admit(service, method, request, context)
        self.authz, self.service, self.method, self.context = authz, service, method, context
        self.study_key = _study_key(request)
        self.failure: BaseException | None = None

    def saw(self, reply: Any) -> Any:
        self.study_key = self.study_key or _study_key(reply)
        return reply

    def done(self) -> None:
        code, reason = _code_of(self.failure, self.context)
        self.authz.record(self.caller, self.service, self.method, self.study_key, code, reason)
