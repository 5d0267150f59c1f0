"""How a Kafka client proves itself to the broker: protocol, SASL/SCRAM credentials, TLS files.

One value (:class:`KafkaSecurity`) that every producer, consumer and admin client of the runtime
receives as keyword arguments (``client_kwargs``), so no client can be created without it. The
password is a ``SecretStr``: it leaves this object only inside ``client_kwargs``, and there as a
string that prints masked, so it is never in a repr, a log line (kafka-python logs its configuration
at DEBUG) or an error message.

kafka-python (3.0) does not bound a TLS handshake that the broker never answers (a plaintext
listener reads the ClientHello as the start of a huge request and waits): the client would hang far
past its bootstrap timeout. ``check_tls_listener`` shakes hands first, with a deadline, so a TLS
setting against a plaintext listener fails at start-up with a reason instead.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from cxrmesh.runtime.kafka.errors import KafkaConfigError, KafkaUnavailableError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
_TLS = ("SSL", "SASL_SSL")
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class KafkaSecurity:
    """The broker's listener type and this client's credentials; the default is a plaintext listener."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: SecretStr = field(default_factory=lambda: SecretStr(""))
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"security protocol must be one of {PROTOCOLS}")
        if self.sasl and self.sasl_mechanism not in SASL_MECHANISMS:
            problems.append(f"SASL mechanism must be one of {SASL_MECHANISMS}")
        if self.sasl and not (self.sasl_username and self.sasl_password.get_secret_value()):
            problems.append(f"{self.protocol} needs a SASL username and password")
        if self.sasl_mechanism == "PLAIN" and self.protocol == "SASL_PLAINTEXT":
            problems.append("SASL PLAIN over a plaintext listener would send the password in clear")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            problems.append("a TLS client certificate needs both its certificate and its key file")
        if not self.tls and any((self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)):
            problems.append(f"TLS files are set but the security protocol {self.protocol} does not use TLS")
        for path in (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not Path(path).is_file():
                problems.append(f"TLS file {path} does not exist")
        if problems:
            raise KafkaConfigError("invalid Kafka security settings: " + "; ".join(problems))

    @property
    def tls(self) -> bool:
        return self.protocol in _TLS

    @property
    def sasl(self) -> bool:
        return self.protocol in _SASL

    def client_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": _MaskedStr(self.sasl_password.get_secret_value()),
            }
        if self.tls:
            kwargs |= {
                "ssl_cafile": _text(self.ssl_cafile),
                "ssl_certfile": _text(self.ssl_certfile),
                "ssl_keyfile": _text(self.ssl_keyfile),
                "ssl_check_hostname": self.ssl_check_hostname,
            }
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context the clients use (the same files), for the listener check."""
        context = ssl.create_default_context(cafile=_text(self.ssl_cafile))
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None and self.ssl_keyfile is not None:
            context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile))
        return context


class _MaskedStr(str):
    """The password as kafka-python needs it (a str it encodes), but masked when printed: kafka-python
    logs its whole configuration at DEBUG ("Starting KafkaAdminClient with configuration: {...}")."""

    def __repr__(self) -> str:
        return "'**********'"

    __str__ = __repr__


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def check_tls_listener(bootstrap: str, security: KafkaSecurity, timeout_s: float) -> None:
    """With a TLS protocol: one TLS handshake with a bootstrap server within ``timeout_s``, else
    :class:`KafkaUnavailableError` saying why (plaintext listener, wrong CA, nothing listening)."""
    if not security.tls:
        return
    context = security.ssl_context()
    reasons = []
    for server in (s.strip() for s in bootstrap.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            with (
                socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return
        except TimeoutError:
            reasons.append(f"{server}: no TLS answer within {timeout_s:g}s (a plaintext listener?)")
        except ssl.SSLError as exc:
            reasons.append(f"{server}: TLS handshake failed ({exc.reason or type(exc).__name__})")
        except (OSError, ValueError) as exc:
            reasons.append(f"{server}: {type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}")
    raise KafkaUnavailableError(
        f"no Kafka bootstrap server completed a TLS handshake ({security.protocol}): " + "; ".join(reasons)
    )
