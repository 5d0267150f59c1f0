"""The durable local broker: real Tansu on ``s3://`` storage in the real journalled moto server.

A broker SIGKILLed and started again on the same port and storage must serve every acknowledged
message and every committed offset of a consumer group; the memory broker, killed the same way,
loses both (the control that shows the checks can fail). The S3 server itself, SIGKILLed, must
come back with every object it acknowledged. Each test starts its own processes in tmp_path.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from plugins.kafka_broker import unique
from plugins.kafka_clients import config
from prometheus_client import REGISTRY

from cxrmesh.local.broker import BrokerStartError, LocalBroker, TansuNotFoundError, ensure_topics, find_tansu
from cxrmesh.local.ports import free_port
from cxrmesh.local.s3 import CREDENTIALS, LocalS3, S3Target
from cxrmesh.runtime.kafka import EventProducer, PublishError
from cxrmesh.v1 import events_pb2

pytestmark = pytest.mark.slow

PARTITIONS = 4
MESSAGES = 120
SESSION = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}  # Tansu's JoinGroup waits half


@pytest.fixture(autouse=True)
def _needs_tansu_and_moto() -> None:
    try:
        find_tansu()
    except TansuNotFoundError as exc:
        pytest.skip(str(exc))
    pytest.importorskip("moto", reason="moto[server] (the mesh-local extra) is not installed")


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[LocalS3]:
    with LocalS3(tmp_path / "s3") as server:
        yield server


Record = tuple[int, int, bytes, bytes]  # partition, offset, key, value


def produce(bootstrap: str, topic: str, n: int) -> list[Record]:
    """n keyed messages, each acknowledged by the broker (acks=all) before this returns."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=0, linger_ms=5)
    try:
        sent = [(f"study-{i:04d}".encode(), f"event {i}".encode()) for i in range(n)]
        futures = [producer.send(topic, key=k, value=v) for k, v in sent]
        meta = [f.get(timeout=30) for f in futures]
    finally:
        producer.close()
    return sorted((m.partition, m.offset, k, v) for m, (k, v) in zip(meta, sent, strict=True))


def read(consumer: KafkaConsumer, want: int, timeout_s: float = 30) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            got += [(r.partition, r.offset, r.key, r.value) for r in records]
    # a short extra poll: anything beyond ``want`` (a duplicate) shows up too
    for records in consumer.poll(timeout_ms=500).values():
        got += [(r.partition, r.offset, r.key, r.value) for r in records]
    return sorted(got)


def group_consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **SESSION,
    )
    consumer.subscribe([topic])
    return consumer


def consume_and_commit_half(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """Read everything as ``group``, commit about half of each partition; the committed offsets."""
    consumer = group_consumer(bootstrap, topic, group)
    try:
        seen = read(consumer, MESSAGES)
        assert len(seen) == MESSAGES
        ends: dict[int, int] = {}
        for partition, offset, _, _ in seen:
            ends[partition] = max(ends.get(partition, 0), offset + 1)
        committed = {p: end // 2 for p, end in ends.items()}
        consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in committed.items()}
        )
        for p, o in committed.items():
            assert consumer.committed(TopicPartition(topic, p)) == o
    finally:
        consumer.close(autocommit=False)
    return committed


def kill_and_restart(broker: LocalBroker) -> None:
    """SIGKILL the broker's process group, check it is gone, start it again on the same port."""
    port, pid = broker.port, broker.pid
    assert pid is not None
    broker.kill()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broker.start()
    assert broker.port == port and broker.pid != pid


def test_sigkilled_broker_on_s3_keeps_every_message_and_committed_offset(s3: LocalS3, tmp_path: Path) -> None:
    topic, group = unique("durable"), unique("durable-group")
    with LocalBroker(storage=s3.target, log_path=tmp_path / "tansu.log") as broker:
        ensure_topics(broker.bootstrap, {topic: PARTITIONS})
        sent = produce(broker.bootstrap, topic, MESSAGES)
        assert len({p for p, *_ in sent}) > 1, "the keys should spread over several partitions"
        committed = consume_and_commit_half(broker.bootstrap, topic, group)

        kill_and_restart(broker)

        # every acknowledged message is there, once, at its offset
        everything = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        try:
            everything.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
            everything.seek_to_beginning()
            assert read(everything, MESSAGES) == sent
        finally:
            everything.close()

        # the group resumes after what it committed: nothing before it again, nothing after it lost
        resumed = group_consumer(broker.bootstrap, topic, group)
        try:
            rest = read(resumed, sum(1 for p, o, *_ in sent if o >= committed[p]))
            for p, o in committed.items():
                assert resumed.committed(TopicPartition(topic, p)) == o
        finally:
            resumed.close(autocommit=False)
        assert rest == [r for r in sent if r[1] >= committed[r[0]]]


def test_sigkilled_memory_broker_loses_messages_and_offsets(tmp_path: Path) -> None:
    """The control: the same checks against memory storage see everything gone."""
    topic, group = unique("volatile"), unique("volatile-group")
    with LocalBroker(log_path=tmp_path / "tansu.log") as broker:
        ensure_topics(broker.bootstrap, {topic: PARTITIONS})
        produce(broker.bootstrap, topic, MESSAGES)
        consume_and_commit_half(broker.bootstrap, topic, group)

        kill_and_restart(broker)

        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            assert topic not in consumer.topics()
            assert consumer.committed(TopicPartition(topic, 0)) is None
        finally:
            consumer.close(autocommit=False)


def test_broker_keeps_serving_across_a_sigkilled_s3(s3: LocalS3, tmp_path: Path) -> None:
    """The store killed under a running broker: what it acknowledged survives, and the broker
    (which keeps running meanwhile) writes and reads on once the store is back on its port."""
    topic = unique("store-killed")
    with LocalBroker(storage=s3.target, log_path=tmp_path / "tansu.log") as broker:
        ensure_topics(broker.bootstrap, {topic: PARTITIONS})
        before = produce(broker.bootstrap, topic, MESSAGES // 2)
        s3.kill()
        s3.start()
        after = produce(broker.bootstrap, topic, MESSAGES // 2)
        kill_and_restart(broker)  # and the broker too: all of it must come from the store
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
            consumer.seek_to_beginning()
            got = read(consumer, MESSAGES)
        finally:
            consumer.close()
    assert len(got) == MESSAGES
    assert {(k, v) for *_, k, v in got} == {(k, v) for *_, k, v in before + after}


def test_broker_start_fails_clearly_when_s3_is_unreachable(tmp_path: Path) -> None:
    secret = "never-in-an-error-" + unique("s")
    target = S3Target(f"http://127.0.0.1:{free_port()}", "AKIANOTHING", secret)  # nothing listens
    broker = LocalBroker(storage=target, log_path=tmp_path / "tansu.log")
    with pytest.raises(BrokerStartError, match="not reachable") as failed:  # not "did not answer"
        broker.start(timeout_s=20)
    assert target.endpoint in str(failed.value)
    assert secret not in str(failed.value)
    assert not broker.running


def test_broker_start_fails_clearly_when_the_bucket_is_missing(s3: LocalS3, tmp_path: Path) -> None:
    t = s3.target
    target = S3Target(t.endpoint, t.access_key_id, t.secret_access_key, bucket="no-such-bucket")
    with pytest.raises(BrokerStartError, match="no bucket 'no-such-bucket'"):
        LocalBroker(storage=target, log_path=tmp_path / "tansu.log").start(timeout_s=20)


def test_sigkilled_s3_keeps_every_acknowledged_write(s3: LocalS3) -> None:
    """Objects written, overwritten and deleted (one by one and in a batch) are as they were."""
    import boto3
    from botocore.exceptions import ClientError

    t = s3.target
    client = boto3.client(
        "s3",
        endpoint_url=t.endpoint,
        aws_access_key_id=t.access_key_id,
        aws_secret_access_key=t.secret_access_key,
        region_name=t.region,
    )
    client.put_object(Bucket=t.bucket, Key="a/kept.json", Body=b"first", ContentType="application/json")
    client.put_object(Bucket=t.bucket, Key="a/kept.json", Body=b"second", ContentType="application/json")
    client.put_object(Bucket=t.bucket, Key="b/binary.batch", Body=bytes(range(256)) * 40)
    for key in ("c/gone", "d/gone-1", "d/gone-2"):
        client.put_object(Bucket=t.bucket, Key=key, Body=b"x")
    client.delete_object(Bucket=t.bucket, Key="c/gone")
    client.delete_objects(Bucket=t.bucket, Delete={"Objects": [{"Key": "d/gone-1"}, {"Key": "d/gone-2"}]})
    etag = client.head_object(Bucket=t.bucket, Key="a/kept.json")["ETag"]

    port = s3.port
    s3.kill()
    s3.start()
    assert s3.port == port

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=t.bucket).get("Contents", []))
    assert keys == ["a/kept.json", "b/binary.batch"]
    kept = client.get_object(Bucket=t.bucket, Key="a/kept.json")
    assert kept["Body"].read() == b"second"
    assert kept["ContentType"] == "application/json"
    assert kept["ETag"] == etag  # Tansu's conditional writes (If-Match) go on after a restart
    assert client.get_object(Bucket=t.bucket, Key="b/binary.batch")["Body"].read() == bytes(range(256)) * 40

    stranger = boto3.client(
        "s3",
        endpoint_url=t.endpoint,
        aws_access_key_id="AKIASTRANGER",
        aws_secret_access_key="x",
        region_name=t.region,
    )
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        stranger.list_objects_v2(Bucket=t.bucket)

    credentials = s3.data_dir / CREDENTIALS
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert t.secret_access_key not in s3.log_path.read_text()
    assert t.secret_access_key not in repr(t)


def test_producer_renews_a_client_in_its_fatal_state(s3: LocalS3, tmp_path: Path) -> None:
    """The mesh's own long-lived producer across an outage of the broker's store.

    While the store is down the broker answers produce requests with UNKNOWN_SERVER_ERROR, which
    puts kafka-python's idempotent client in its fatal state: every later send would fail, for
    ever (the fault suite lost 292 studies that way: the outbox relay and the stages kept
    retrying through a dead client). ``EventProducer`` replaces such a client, so once the store
    is back the same producer publishes again.
    """
    topic = unique("fatal-client")
    with LocalBroker(storage=s3.target, log_path=tmp_path / "tansu.log") as broker:
        ensure_topics(broker.bootstrap, {topic: 1})
        renewed = REGISTRY.get_sample_value("cxrmesh_kafka_producer_renewed_total") or 0.0
        with EventProducer(config(broker.bootstrap, delivery_timeout_ms=20_000)) as producer:
            assert producer.idempotent
            producer.publish_sync(topic, "before", events_pb2.StudyIngested(study_key="before"))
            s3.kill()
            with pytest.raises(PublishError):
                producer.publish_sync(topic, "during", events_pb2.StudyIngested(study_key="during"))
            s3.start()
            deadline = time.monotonic() + 60
            while True:  # what the outbox relay does: send again until the broker acknowledges
                try:
                    producer.publish_sync(topic, "after", events_pb2.StudyIngested(study_key="after"))
                    break
                except PublishError:
                    assert time.monotonic() < deadline, "the producer never published again"
                    time.sleep(1)
        assert (REGISTRY.get_sample_value("cxrmesh_kafka_producer_renewed_total") or 0.0) >= renewed + 1
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        try:
            consumer.assign([TopicPartition(topic, 0)])
            consumer.seek_to_beginning()
            keys = {k for *_, k, _ in read(consumer, 2)}
        finally:
            consumer.close()
    assert {b"before", b"after"} <= keys
