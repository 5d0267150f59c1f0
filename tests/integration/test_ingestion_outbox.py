"""An acknowledged study is never lost: acked while Kafka is away, published after a restart.

Real parts: the ingestion service in-process on loopback gRPC, Tansu brokers on one port, the
SQLite outbox on disk. The broker is stopped before the upload, the service is stopped (as if it
crashed) before the event could go out, and a new service instance on the same data directory
publishes it once a broker is back.
"""

from __future__ import annotations

import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from pydicom.data import get_testdata_file

from cxrmesh.client import ingest_bytes
from cxrmesh.contracts import topics
from cxrmesh.local.broker import LocalBroker, ensure_topics
from cxrmesh.local.pki import OPERATOR, LocalCA, server_identity
from cxrmesh.runtime.tls import open_channel
from cxrmesh.services.ingestion.outbox import Outbox
from cxrmesh.services.ingestion.service import build
from cxrmesh.services.ingestion.settings import IngestionSettings
from cxrmesh.v1 import events_pb2, ingestion_pb2_grpc


def _settings(tmp: Path, bootstrap: str) -> IngestionSettings:
    tls = LocalCA(tmp / "pki").issue(server_identity("ingestion"))  # the service serves mutual TLS only
    return IngestionSettings(
        tls_cert_file=tls.cert,
        tls_key_file=tls.key,
        tls_ca_file=tls.ca,
        grpc_port=0,
        metrics_port=0,
        data_dir=tmp,
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


def test_acknowledged_study_survives_kafka_outage_and_restart(tmp_path: Path) -> None:
    first = LocalBroker(cluster_id="outbox-1", log_path=tmp_path / "tansu-1.log")
    first.start()
    port = first.port
    runtime = build(_settings(tmp_path, first.bootstrap))
    grpc_port = runtime.start()
    try:
        first.stop()  # Kafka goes away before the study arrives
        with open_channel(f"127.0.0.1:{grpc_port}", LocalCA(tmp_path / "pki").issue(OPERATOR)) as ch:
            stub = ingestion_pb2_grpc.IngestionServiceStub(ch)
            reply = ingest_bytes(stub, Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes())
        assert reply.study_key and not reply.duplicate  # acknowledged without Kafka
    finally:
        runtime.stop()  # "crash" before the event could be published
    pending = Outbox(tmp_path / "ingestion" / "outbox.sqlite")
    assert pending.backlog() == 1, "the acknowledged study's event must be waiting in the outbox"
    pending.close()

    with LocalBroker(port=port, cluster_id="outbox-2", log_path=tmp_path / "tansu-2.log") as second:
        ensure_topics(second.bootstrap, topics.all_topics())
        again = build(_settings(tmp_path, second.bootstrap))
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
    done = Outbox(tmp_path / "ingestion" / "outbox.sqlite")
    assert done.backlog() == 0
    done.close()
