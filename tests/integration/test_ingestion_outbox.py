"""An acknowledged study is never lost: acked while Kafka is away, published after a restart.

Real parts: the ingestion service in-process on loopback gRPC, Tansu brokers on one port, the
outbox in the mesh database (SQLite on disk, and PostgreSQL). The broker is stopped before the
upload, the service is stopped (as if it crashed) before the event could go out, and a new service
instance on the same database publishes it once a broker is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from plugins.kafka_broker import unique
from plugins.postgres import DatabaseTarget
from pydicom.data import get_testdata_file
from sqlalchemy import make_url, select

from cxrmesh.client import ingest_bytes
from cxrmesh.contracts import topics
from cxrmesh.local.broker import LocalBroker, ensure_topics
from cxrmesh.local.pki import OPERATOR, LocalCA, server_identity
from cxrmesh.local.postgres import LocalPostgres
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db.schema import outbox as outbox_table
from cxrmesh.runtime.kafka import EventProducer, KafkaConfig
from cxrmesh.runtime.tls import open_channel
from cxrmesh.services.ingestion.outbox import Outbox
from cxrmesh.services.ingestion.relay import relay
from cxrmesh.services.ingestion.service import build
from cxrmesh.services.ingestion.settings import IngestionSettings
from cxrmesh.v1 import events_pb2, ingestion_pb2_grpc


def _settings(tmp: Path, bootstrap: str, database: DatabaseTarget) -> IngestionSettings:
    tls = LocalCA(tmp / "pki").issue(server_identity("ingestion"))  # the service serves mutual TLS only
    return IngestionSettings(
        tls_cert_file=tls.cert,
        tls_key_file=tls.key,
        tls_ca_file=tls.ca,
        grpc_port=0,
        metrics_port=0,
        data_dir=tmp,
        database_url=database.url,
        database_password=database.password,
        kafka_bootstrap=bootstrap,
        kafka_request_timeout_ms=2000,
        deid_secret="test-secret-of-32-bytes-for-hmac-00",
        outbox_interval_s=0.1,
        grace_s=2,
        log_format="text",
    )


def _events(bootstrap: str, topic: str) -> list[events_pb2.StudyIngested]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = [events_pb2.StudyIngested.FromString(m.value) for m in consumer]
    consumer.close()
    return out


def test_acknowledged_study_survives_kafka_outage_and_restart(
    tmp_path: Path, database: DatabaseTarget
) -> None:
    first = LocalBroker(cluster_id="outbox-1", log_path=tmp_path / "tansu-1.log")
    first.start()
    port = first.port
    runtime = build(_settings(tmp_path, first.bootstrap, database))
    grpc_port = runtime.start()
    try:
        first.stop()  # Kafka goes away before the study arrives
        with open_channel(f"127.0.0.1:{grpc_port}", LocalCA(tmp_path / "pki").issue(OPERATOR)) as ch:
            stub = ingestion_pb2_grpc.IngestionServiceStub(ch)
            reply = ingest_bytes(stub, Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes())
        assert reply.study_key and not reply.duplicate  # acknowledged without Kafka
    finally:
        runtime.stop()  # "crash" before the event could be published
    pending = Outbox(Database(database.url, database.password))
    assert pending.backlog() == 1, "the acknowledged study's event must be waiting in the outbox"
    pending.db.close()

    with LocalBroker(port=port, cluster_id="outbox-2", log_path=tmp_path / "tansu-2.log") as second:
        ensure_topics(second.bootstrap, topics.all_topics())
        again = build(_settings(tmp_path, second.bootstrap, database))
        again.start()
        try:
            deadline = time.monotonic() + 60
            events: list[events_pb2.StudyIngested] = []
            while not events:
                assert time.monotonic() < deadline, "the outbox never published the acknowledged study"
                events = _events(second.bootstrap, topics.STUDY_INGESTED)
            assert [e.study_key for e in events] == [reply.study_key]
        finally:
            again.stop()
    done = Outbox(Database(database.url, database.password))
    assert done.backlog() == 0
    done.db.close()


def test_relays_on_three_replicas_publish_every_row_once_in_key_order(
    database: DatabaseTarget, kafka_bootstrap: str
) -> None:
    """Three ingestion replicas' relays drain one shared outbox: each row once, each key in order."""
    topic = unique("outbox-relays")
    ensure_topics(kafka_bootstrap, {topic: 4})
    writer = Outbox(Database(database.url, database.password))
    for i in range(240):  # 120 studies, 2 events each, interleaved as ingestion would add them
        writer.add_event(topic, f"study-{i % 120}", "cxrmesh.v1.DeadLetter", f"{i % 120}:{i // 120}".encode())
    stop = threading.Event()
    replicas = []
    for n in range(3):
        outbox = Outbox(Database(database.url, database.password))
        producer = EventProducer(KafkaConfig(bootstrap=kafka_bootstrap, client_id=f"relay-{n}"))
        thread = threading.Thread(target=relay, args=(outbox, producer, stop, 0.05, 10))
        thread.start()
        replicas.append((outbox, producer, thread))
    deadline = time.monotonic() + 60
    while writer.backlog():
        assert time.monotonic() < deadline, f"{writer.backlog()} rows never published"
        time.sleep(0.1)
    stop.set()
    for outbox, producer, thread in replicas:
        thread.join(timeout=20)
        producer.close()
        outbox.db.close()
    with writer.db.read() as conn:
        owners = set(conn.execute(select(outbox_table.c.claimed_by)).scalars())
    writer.db.close()

    payloads = [m.decode() for m in _values(kafka_bootstrap, topic)]
    assert len(payloads) == 240 and len(set(payloads)) == 240, "a row was published twice or lost"
    by_key: dict[str, list[int]] = {}
    for p in payloads:
        key, seq = p.split(":")
        by_key.setdefault(key, []).append(int(seq))
    assert all(seqs == sorted(seqs) for seqs in by_key.values()), "a study's events left out of order"
    assert len(owners) > 1, "only one relay did the work: the test did not exercise sharing"


def test_a_dead_relays_rows_wait_for_its_lease_then_go_to_another(database: DatabaseTarget) -> None:
    outbox = Outbox(Database(database.url, database.password))
    outbox.add_event("t", "k1", "x", b"1")
    outbox.add_event("t", "k1", "x", b"2")
    outbox.add_event("t", "k2", "x", b"3")
    dead = outbox.claim("relay-a", limit=1, lease_s=1.0)  # takes k1's first row, then "dies"
    assert [e.payload for e in dead] == [b"1"]
    assert [e.payload for e in outbox.claim("relay-b", lease_s=30)] == [b"3"]  # k1 waits: order
    time.sleep(1.1)
    taken = outbox.claim("relay-b", lease_s=30)
    assert [e.payload for e in taken] == [b"1", b"2", b"3"], "the expired lease was not taken over"
    outbox.mark_sent([e.id for e in dead], "relay-a")  # the late relay's confirmation changes nothing
    outbox.mark_sent([e.id for e in taken], "relay-b")
    assert outbox.backlog() == 0
    assert outbox.claim("relay-a") == []
    outbox.db.close()


def test_the_relay_outlives_a_database_outage(
    postgres_cluster: LocalPostgres, postgres_database: DatabaseTarget, kafka_bootstrap: str
) -> None:
    """The database goes away under a running relay (its sessions ended, new ones refused): the relay
    waits instead of dying, and publishes what was stored before and after once it is back."""
    topic = unique("outbox-outage")
    ensure_topics(kafka_bootstrap, {topic: 1})
    name = make_url(postgres_database.url).database
    writer = Outbox(Database(postgres_database.url, postgres_database.password))
    outbox = Outbox(Database(postgres_database.url, postgres_database.password))
    producer = EventProducer(KafkaConfig(bootstrap=kafka_bootstrap, client_id="relay-outage"))
    stop = threading.Event()
    thread = threading.Thread(target=relay, args=(outbox, producer, stop, 0.05, 10))
    thread.start()
    try:
        writer.add_event(topic, "k", "x", b"before")
        wait_until(lambda: writer.backlog() == 0, "the first event published")
        with postgres_cluster.admin() as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
        time.sleep(2)  # rounds fail meanwhile
        assert thread.is_alive(), "the relay died with the database"
        with postgres_cluster.admin() as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        writer.add_event(topic, "k", "x", b"after")
        wait_until(lambda: writer.backlog() == 0, "the event stored after the outage published")
    finally:
        stop.set()
        thread.join(timeout=20)
        producer.close()
        outbox.db.close()
        writer.db.close()
    assert _values(kafka_bootstrap, topic) == [b"before", b"after"]


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _values(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=3000, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out = [m.value for m in consumer]
    consumer.close()
    return out
