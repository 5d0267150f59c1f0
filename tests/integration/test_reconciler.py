"""The reconciler re-drives stalled studies from the outbox's durable state, once per deadline.

Each test runs on SQLite and on a real PostgreSQL (``database``/``db``). Studies are stored through
the real ``Outbox``, the relay's part is played by ``claim``/``mark_sent``, and the study view's
verdicts are written by the real ``ViewStore``. Time is injected (``run_once(now)``) so deadlines
hours away are crossed without waiting. A "replica" is a second ``Database`` on the same URL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from plugins.database import open_db
from plugins.postgres import DatabaseTarget
from prometheus_client import REGISTRY
from sqlalchemy import select, text

from cxrmesh.contracts import topics
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db.migrate import alembic_config, current, head
from cxrmesh.runtime.db.schema import outbox as outbox_table
from cxrmesh.runtime.db.schema import studies
from cxrmesh.services.ingestion.outbox import Outbox
from cxrmesh.services.ingestion.reconcile import Reconciler, reconcile
from cxrmesh.services.studyview.store import STAGES, ViewStore
from cxrmesh.v1 import events_pb2

AFTER = 300.0
INGESTED = events_pb2.StudyIngested.DESCRIPTOR.full_name
CLINICAL = events_pb2.ClinicalUpdated.DESCRIPTOR.full_name


@pytest.fixture
def view(db: Database) -> Iterator[ViewStore]:
    store = ViewStore(db)
    yield store
    store.close()


def ingest(box: Outbox, key: str) -> float:
    """Store a study as ingestion does and let the relay publish it; its ``ingested_at``."""
    payload = events_pb2.StudyIngested(study_key=key, patient_key=f"p-{key}").SerializeToString()
    assert box.add_study(key, f"p-{key}", topics.STUDY_INGESTED, INGESTED, payload)
    publish(box)
    with box.db.read() as conn:
        return float(
            conn.execute(select(studies.c.ingested_at).where(studies.c.study_key == key)).scalar_one()
        )


def clinical(box: Outbox, key: str, age: float) -> bytes:
    event = events_pb2.ClinicalUpdated(study_key=key)
    event.clinical.age = age
    event.updated_at.FromSeconds(int(age))
    box.add_event(topics.STUDY_CLINICAL, key, CLINICAL, event.SerializeToString())
    return event.SerializeToString()


def publish(box: Outbox) -> None:
    """The relay's part: every pending row claimed and confirmed."""
    while pending := box.claim("relay-test", limit=1000):
        box.mark_sent([e.id for e in pending], "relay-test")


def pending_rows(db: Database) -> list[tuple[str, str, str, bytes]]:
    o = outbox_table.c
    with db.read() as conn:
        rows = conn.execute(
            select(o.topic, o.key, o.type_name, o.payload).where(o.sent_at.is_(None)).order_by(o.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def stored_event(db: Database, key: str) -> bytes:
    with db.read() as conn:
        return bytes(conn.execute(select(studies.c.event).where(studies.c.study_key == key)).scalar_one())


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_stalled_study_is_redriven_with_backoff_then_left_stuck(db: Database, view: ViewStore) -> None:
    box = Outbox(db)
    t0 = ingest(box, "s1")
    first = clinical(box, "s1", 70)
    second = clinical(box, "s1", 71)
    publish(box)
    rec = Reconciler(db, after_s=AFTER, max_redrives=3)
    counted = sample("cxrmesh_reconciler_redriven_total")

    assert rec.run_once(t0 + AFTER - 1).keys == (), "re-driven before its deadline"
    expected = [
        (topics.STUDY_INGESTED, "s1", INGESTED, stored_event(db, "s1")),
        (topics.STUDY_CLINICAL, "s1", CLINICAL, first),
        (topics.STUDY_CLINICAL, "s1", CLINICAL, second),
    ]
    now = t0 + AFTER + 1
    for n in (1, 2, 3):
        assert rec.run_once(now).keys == ("s1",), f"re-drive {n} did not happen"
        # the stored events again, each once (not the earlier re-drives' copies as well)
        assert pending_rows(db) == expected
        publish(box)
        deadline = now + AFTER * 2**n
        assert rec.run_once(deadline - 1).keys == (), f"re-driven again before deadline {n}"
        now = deadline
    assert sample("cxrmesh_reconciler_redriven_total") - counted == 3

    spent = rec.run_once(now)
    assert (spent.keys, spent.gave_up, spent.stuck) == ((), 1, 1)
    assert pending_rows(db) == [], "re-driven past the limit"
    assert sample("cxrmesh_reconciler_stuck_studies") == 1
    later = rec.run_once(now + 10 * AFTER * 2**3)
    assert (later.keys, later.gave_up, later.stuck) == ((), 0, 1), "a stuck study was touched again"

    for stage in STAGES:  # the study completes after all (a late event)
        view.done("s1", stage, b"")
    assert rec.run_once(now + 20 * AFTER * 2**3).stuck == 0
    assert sample("cxrmesh_reconciler_stuck_studies") == 0


def test_complete_and_failed_studies_are_never_redriven(db: Database, view: ViewStore) -> None:
    box = Outbox(db)
    t0 = min(ingest(box, key) for key in ("complete", "failed", "early-failure", "partial"))
    for stage in STAGES:
        view.done("complete", stage, b"")
    view.done("failed", "ingested", b"")
    view.done("failed", "segmented", b"")
    view.failed("failed", "quantified", "quantification: bad image")  # prognosis fails with it
    view.failed("early-failure", "embedded", "embedding: bad image")  # before its ingested event
    view.done("partial", "ingested", b"")
    view.done("partial", "embedded", b"")
    rec = Reconciler(db, after_s=AFTER)

    round_ = rec.run_once(t0 + AFTER + 10)
    assert (round_.keys, round_.settled) == (("partial",), 3)
    assert [key for _, key, _, _ in pending_rows(db)] == ["partial"]
    publish(box)
    for hours in (1, 10, 100):
        assert rec.run_once(t0 + 3600 * hours).keys in ((), ("partial",))
    assert {key for _, key, _, _ in pending_rows(db)} <= {"partial"}, "a settled study was re-driven"


def test_a_study_with_a_pending_outbox_row_is_left_to_the_relay(db: Database) -> None:
    box = Outbox(db)
    t0 = ingest(box, "s1")
    clinical(box, "s1", 70)  # not yet published
    box.add_study("s2", "p-s2", topics.STUDY_INGESTED, INGESTED, b"never published")
    rec = Reconciler(db, after_s=AFTER)

    assert rec.run_once(t0 + 10 * AFTER).keys == ()
    assert len(pending_rows(db)) == 2, "the reconciler enqueued beside a pending row"
    publish(box)
    assert sorted(rec.run_once(t0 + 10 * AFTER).keys) == ["s1", "s2"]


def test_two_reconcilers_racing_redrive_each_stalled_study_once(database: DatabaseTarget) -> None:
    writer = Outbox(open_db(database))
    keys = [f"race-{i:02d}" for i in range(40)]
    t0 = max(ingest(writer, key) for key in keys)
    replicas = [Reconciler(open_db(database), after_s=AFTER, batch=7) for _ in range(2)]
    now = t0 + AFTER + 1

    def rounds(rec: Reconciler, barrier: threading.Barrier) -> list[str]:
        barrier.wait()
        done: list[str] = []
        for _ in range(10):  # more rounds than 40 studies need in batches of 7
            done += rec.run_once(now).keys
        return done

    barrier = threading.Barrier(2)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda rec: rounds(rec, barrier), replicas)
    assert not set(a) & set(b), "two replicas re-drove one study in the same round"
    assert sorted(a + b) == keys, "a study was re-driven twice or missed"
    assert sorted(key for _, key, _, _ in pending_rows(writer.db)) == keys
    for rec in replicas:
        rec.db.close()
    writer.db.close()


def test_studies_stored_before_the_migration_are_reconciled(database: DatabaseTarget) -> None:
    """Migration 0002 on a database with studies in it: each is looked at once it is old enough."""
    old = Database(database.url, database.password, migrate=False)
    cfg = alembic_config()
    with old.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO studies (study_key, patient_key, ingested_at, event) VALUES ('old', 'p', 1, :e)"
            ),
            {"e": b"stored"},
        )
        conn.commit()
    old.close()
    db = open_db(database)  # migrates to head, as a new replica would
    assert current(db) == head()
    round_ = Reconciler(db, after_s=AFTER).run_once(1 + AFTER + 1)
    assert round_.keys == ("old",)
    assert pending_rows(db) == [(topics.STUDY_INGESTED, "old", INGESTED, b"stored")]
    db.close()


def test_the_worker_loop_redrives_until_stopped(db: Database) -> None:
    """``reconcile`` as ``ServiceRuntime.add_worker`` runs it, on the real clock with a short deadline."""
    box = Outbox(db)
    ingest(box, "s1")
    stop = threading.Event()
    worker = threading.Thread(target=reconcile, args=(Reconciler(db, after_s=0.2), stop, 0.05))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not pending_rows(db):
            assert time.monotonic() < deadline, "the worker never re-drove the stalled study"
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive(), "the worker did not stop"
    assert [key for _, key, _, _ in pending_rows(db)] == ["s1"]
