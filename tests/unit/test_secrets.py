"""Secrets reach the clients that need them and nothing else: no log line, metric, exception or CLI output.

Distinctive values are set for every secret the services take (the pseudonym key, the Kafka SASL
password, the Milvus token) and the code paths that print, log, raise and count are driven with them -
the settings' repr and dumps, a rejected setting, Kafka clients failing against the real local broker
(Tansu: a TLS client against its plaintext listener must fail fast, and a SASL login it cannot serve),
a Milvus store that cannot connect, and ``cxrmesh status``. Everything captured is searched for the
values. The same tests check that the values do reach kafka-python and pymilvus, so a pass is not
a secret silently dropped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from cxrmesh.local.broker import tansu_command
from cxrmesh.local.mesh import MeshState, Proc
from cxrmesh.local.pki import Identity, LocalCA, server_identity
from cxrmesh.runtime.kafka import (
    Consumer,
    EventProducer,
    KafkaConfig,
    KafkaConfigError,
    KafkaSecurity,
    KafkaUnavailableError,
)
from cxrmesh.runtime.kafka import consumer as consumer_module
from cxrmesh.runtime.kafka import producer as producer_module
from cxrmesh.runtime.log import JsonFormatter
from cxrmesh.search import store as store_module
from cxrmesh.search.errors import StoreError
from cxrmesh.search.retry import RetryPolicy
from cxrmesh.search.store import CaseStore
from cxrmesh.search.tls import MilvusTLS
from cxrmesh.services.ingestion.settings import IngestionSettings
from cxrmesh.services.search.settings import SearchSettings
from cxrmesh.v1 import events_pb2

DEID_SECRET = "deidKEY-5c1e9a7f3b2d4e6a8c0b1d3f5e7a9c2b"
KAFKA_PASSWORD = "kafkaPW-7d3a91c4e2b8f605"
MILVUS_TOKEN = "root:milvusTOKEN-2e8b4c6a1f9d"
SECRETS = (DEID_SECRET, KAFKA_PASSWORD, MILVUS_TOKEN)
ENV = {
    "CXRMESH_DEID_SECRET": DEID_SECRET,
    "CXRMESH_KAFKA_SASL_PASSWORD": KAFKA_PASSWORD,
    "CXRMESH_KAFKA_SASL_USERNAME": "cxrmesh-ingestion",
    "CXRMESH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "CXRMESH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "CXRMESH_MILVUS_TOKEN": MILVUS_TOKEN,
    "CXRMESH_INSECURE": "true",
}
FAST = RetryPolicy(attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02)


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret value appears in {where}"
        assert secret[-12:] not in text, f"part of a secret value appears in {where}"


class Captured(logging.Handler):
    """Every record of every logger, formatted as a service writes it (JSON, extras and tracebacks)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(record.getMessage())


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    """All logging at DEBUG (kafka-python and pymilvus included); checked for secrets, with the metrics."""
    handler = Captured()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "kafka", "pymilvus", "cxrmesh")}
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert handler.lines, "nothing was logged: the test drove no path that logs"
    assert_clean("\n".join(handler.lines), "the logs")
    assert_clean(prometheus_client.generate_latest().decode(), "the metrics")


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------------------------------ settings


@pytest.mark.usefixtures("secret_env")
@pytest.mark.parametrize("cls", [IngestionSettings, SearchSettings])
def test_settings_show_no_secret_but_hand_them_to_the_clients(cls: type[Any]) -> None:
    s = cls()
    for text, where in [
        (repr(s), "repr"),
        (str(s), "str"),
        (str(s.model_dump()), "model_dump"),
        (s.model_dump_json(), "model_dump_json"),
        (repr(s.kafka_config("group")), "KafkaConfig repr"),
    ]:
        assert_clean(text, where)
    assert s.deid_secret.get_secret_value() == DEID_SECRET
    kwargs = s.kafka_config("group").client_kwargs()
    assert kwargs["sasl_plain_password"] == KAFKA_PASSWORD and kwargs["security_protocol"] == "SASL_PLAINTEXT"
    if cls is SearchSettings:
        assert s.milvus_token.get_secret_value() == MILVUS_TOKEN


def test_rejected_settings_do_not_echo_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRMESH_DEID_SECRET", DEID_SECRET[:10])  # too short: refused
    with pytest.raises(ValidationError) as err:
        IngestionSettings(insecure=True)
    assert "deid_secret" in str(err.value)
    assert DEID_SECRET[:10] not in str(err.value)
    with pytest.raises(KafkaConfigError) as kafka_err:
        KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "user", SecretStr(KAFKA_PASSWORD))  # PLAIN in clear: refused
    assert "PLAIN" in str(kafka_err.value)
    assert_clean(str(kafka_err.value) + repr(kafka_err.value), "a Kafka settings error")


# --------------------------------------------------------------------------------------------- Kafka


def sasl_ssl(files: Any) -> KafkaSecurity:
    return KafkaSecurity(
        "SASL_SSL", "SCRAM-SHA-256", "svc", SecretStr(KAFKA_PASSWORD), files.ca, files.cert, files.key
    )


def test_kafka_client_kwargs_per_protocol(pki: LocalCA) -> None:
    files = pki.issue(Identity("kafka-client", ("mesh",)))
    assert KafkaSecurity().client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert sasl_ssl(files).client_kwargs() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "svc",
        "sasl_plain_password": KAFKA_PASSWORD,
        "ssl_cafile": str(files.ca),
        "ssl_certfile": str(files.cert),
        "ssl_keyfile": str(files.key),
        "ssl_check_hostname": True,
    }
    mtls = KafkaSecurity("SSL", ssl_cafile=files.ca, ssl_certfile=files.cert, ssl_keyfile=files.key)
    assert "sasl_plain_password" not in mtls.client_kwargs()
    assert mtls.client_kwargs()["ssl_certfile"] == str(files.cert)
    for bad in [
        dict(protocol="SASL_SSL"),  # no credentials
        dict(protocol="SSL", ssl_certfile=files.cert),  # a certificate without its key
        dict(protocol="PLAINTEXT", ssl_cafile=files.ca),  # TLS files a plaintext listener ignores
        dict(protocol="SSL", ssl_cafile=Path("/nonexistent/ca.pem")),
        dict(protocol="TLS"),
    ]:
        with pytest.raises(KafkaConfigError):
            KafkaSecurity(**bad)  # type: ignore[arg-type]


def test_every_kafka_client_receives_the_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin probe, the producer and the consumer all get the same security kwargs."""
    seen: dict[str, dict[str, Any]] = {}

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        def __call__(self, **kwargs: Any) -> Any:
            seen[self.name] = kwargs
            return self

        def api_versions(self) -> dict[int, Any]:
            return {}

        def close(self) -> None: ...

        def subscribe(self, **_: Any) -> None: ...

    monkeypatch.setattr(producer_module, "KafkaAdminClient", Fake("admin"))
    monkeypatch.setattr(producer_module, "KafkaProducer", Fake("producer"))
    monkeypatch.setattr(consumer_module, "KafkaConsumer", Fake("consumer"))
    security = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", "svc", SecretStr(KAFKA_PASSWORD))
    cfg = KafkaConfig(bootstrap="kafka:9092", client_id="svc", group_id="g", security=security)
    producer = EventProducer(cfg)
    topics = {"t": events_pb2.StudyIngested}
    consumer = Consumer(cfg, topics, lambda events: [None] * len(events), producer, "svc")
    consumer._connect()
    assert set(seen) == {"admin", "producer", "consumer"}
    for name, kwargs in seen.items():
        assert kwargs["bootstrap_servers"] == "kafka:9092", name
        assert {k: kwargs[k] for k in security.client_kwargs()} == security.client_kwargs(), name


def test_tls_against_the_plaintext_local_broker_fails_fast(
    kafka_bootstrap: str, pki: LocalCA, logs: Captured
) -> None:
    """kafka-python alone hangs on a TLS handshake a plaintext listener never answers; this fails in ~1 s."""
    files = pki.issue(Identity("kafka-client", ("mesh",)))
    cfg = KafkaConfig(
        bootstrap=kafka_bootstrap,
        client_id="secret-test",
        request_timeout_ms=1000,
        delivery_timeout_ms=120000,
        security=sasl_ssl(files),
    )
    start = time.monotonic()
    with pytest.raises(KafkaUnavailableError) as err:
        EventProducer(cfg)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "TLS" in message and "plaintext listener" in message and kafka_bootstrap in message
    assert_clean(message + repr(err.value), "the error")
    logging.getLogger("cxrmesh.test").warning("producer failed", exc_info=err.value)


def test_a_failed_sasl_login_leaks_nothing(kafka_bootstrap: str, logs: Captured) -> None:
    """Tansu cannot serve SCRAM: kafka-python's own retries and errors (logged at DEBUG) stay clean."""
    security = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", "svc", SecretStr(KAFKA_PASSWORD))
    cfg = KafkaConfig(bootstrap=kafka_bootstrap, client_id="secret-test", security=security)
    made: list[KafkaAdminClient] = []

    class Admin(KafkaAdminClient):  # keeps the half-made client, whose IO thread outlives the error
        def __init__(self, **kwargs: Any) -> None:
            made.append(self)
            super().__init__(**kwargs)

    with pytest.raises(KafkaError) as err:
        Admin(**cfg.client_kwargs(), bootstrap_timeout_ms=1500, request_timeout_ms=1500)
    with contextlib.suppress(Exception):
        made[0].close()
    assert_clean(str(err.value) + repr(err.value), "the error")


def test_local_broker_listens_on_loopback_only(kafka_broker: Any) -> None:
    argv = tansu_command(Path("tansu"), 9092, "cluster")
    urls = [argv[i + 1] for i, a in enumerate(argv) if a.endswith("listener-url")]
    assert urls == ["tcp://127.0.0.1:9092", "tcp://127.0.0.1:9092"]
    assert kafka_broker.bootstrap.startswith("127.0.0.1:")


# -------------------------------------------------------------------------------------------- Milvus


def dead_uri() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_milvus_tls_kwargs(pki: LocalCA, monkeypatch: pytest.MonkeyPatch) -> None:
    files = pki.issue(Identity("milvus-client", ("mesh",)))
    assert MilvusTLS(files.ca).client_kwargs() == {"secure": True, "server_pem_path": str(files.ca)}
    assert MilvusTLS(files.ca, files.cert, files.key, "milvus").client_kwargs() == {
        "secure": True,
        "ca_pem_path": str(files.ca),
        "client_pem_path": str(files.cert),
        "client_key_path": str(files.key),
        "server_name": "milvus",
    }
    with pytest.raises(ValueError, match="both"):
        MilvusTLS(files.ca, files.cert)
    with pytest.raises(ValueError, match="Milvus Lite"):
        CaseStore("/tmp/cases.db", tls=MilvusTLS(files.ca))
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CXRMESH_MILVUS_TLS_CA_FILE", str(files.ca))
    monkeypatch.setenv("CXRMESH_MILVUS_TLS_CERT_FILE", str(files.cert))
    monkeypatch.setenv("CXRMESH_MILVUS_TLS_KEY_FILE", str(files.key))
    assert SearchSettings().milvus_tls() == MilvusTLS(files.ca, files.cert, files.key)
    seen: dict[str, Any] = {}

    def fake_client(**kwargs: Any) -> Any:
        seen.update(kwargs)
        raise store_module.MilvusException(message="refused")

    monkeypatch.setattr(store_module, "MilvusClient", fake_client)
    store = CaseStore("https://milvus:19530", token=MILVUS_TOKEN, tls=MilvusTLS(files.ca), retry=FAST)
    assert not store.ping()
    assert seen["token"] == MILVUS_TOKEN and seen["server_pem_path"] == str(files.ca) and seen["secure"]


def test_a_failed_milvus_connection_leaks_nothing(pki: LocalCA, logs: Captured) -> None:
    files = pki.issue(server_identity("search"))
    tls = MilvusTLS(files.ca, files.cert, files.key)
    for store_tls in (None, tls):
        store = CaseStore(dead_uri(), token=MILVUS_TOKEN, dim=8, timeout_s=0.5, retry=FAST, tls=store_tls)
        assert_clean(repr(store), "the store's repr")
        assert not store.ping()
        with pytest.raises(StoreError) as err:
            store.count()
        assert_clean(str(err.value) + repr(err.value) + repr(err.value.__cause__), "the store's error")
        logging.getLogger("cxrmesh.test").error("store failed", exc_info=err.value)
        store.close()


# ------------------------------------------------------------------------------------ cxrmesh status


@pytest.mark.usefixtures("secret_env")
def test_cxrmesh_status_prints_no_secret(tmp_path: Path) -> None:
    from cxrmesh.cli import app

    (tmp_path / "deid.key").write_text(DEID_SECRET)
    state = MeshState(home=str(tmp_path), kafka="127.0.0.1:1", milvus="http://127.0.0.1:2")
    state.procs.append(Proc("ingestion", 2**22 + 7, str(tmp_path / "ingestion.log"), "127.0.0.1:3"))
    state.save()
    result = CliRunner().invoke(app, ["status", "--home", str(tmp_path)])
    assert "ingestion" in result.output
    assert_clean(result.output, "`cxrmesh status`")
