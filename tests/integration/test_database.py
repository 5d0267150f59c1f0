"""The mesh database on both engines: schema, migrations, and what replicas sharing it rely on.

Each test runs on SQLite and on a real PostgreSQL (the ``database`` fixture). A "replica" is a second
``Database`` on the same URL: its own connection pool, as another process would have.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from plugins.database import open_db
from plugins.postgres import DatabaseTarget
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from cxrmesh.contracts import convert
from cxrmesh.runtime.db import Database, DatabaseError
from cxrmesh.runtime.db.migrate import current, head
from cxrmesh.runtime.db.schema import metadata
from cxrmesh.runtime.tables import ResultTable
from cxrmesh.services.prognosis.joins import JoinTable
from cxrmesh.services.studyview.store import ViewStore
from cxrmesh.v1 import common_pb2, events_pb2, studyview_pb2


def test_migrations_build_exactly_the_declared_schema(db: Database) -> None:
    assert current(db) == head() != ""
    with db.read() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], f"schema.py and the migrations disagree: {diff}"


def test_replicas_starting_together_migrate_once(database: DatabaseTarget) -> None:
    """Four processes open a fresh database at the same moment: each ends at head, one version row."""
    code = (
        "import sys; from cxrmesh.runtime.db import Database; from cxrmesh.runtime.db.migrate import current;"
        "print(current(Database(sys.argv[1], sys.argv[2])))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, database.url, database.password], stdout=subprocess.PIPE
        )
        for _ in range(4)
    ]
    assert [p.communicate(timeout=120)[0].decode().strip() for p in procs] == [head()] * 4
    db = open_db(database)
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    db.close()


def test_the_password_stays_out_of_descriptions_and_errors(postgres_database: DatabaseTarget) -> None:
    good = open_db(postgres_database)
    assert postgres_database.password not in good.describe() + repr(good)
    assert good.ping()
    good.close()
    wrong = "not-the-password-4711"
    with pytest.raises(OperationalError) as caught:
        Database(postgres_database.url, wrong)
    assert wrong not in str(caught.value) and postgres_database.password not in str(caught.value)
    with pytest.raises(DatabaseError, match="unsupported database"):
        Database("mysql://u@h/db")
    with pytest.raises(DatabaseError, match="must be a file"):
        Database("sqlite://")


def test_a_result_written_on_one_replica_is_read_on_another(database: DatabaseTarget) -> None:
    a, b = open_db(database), open_db(database)
    first = events_pb2.StudyEmbedded(study_key="s1", embedding=[0.5] * 4)
    ResultTable(a, "embedding", events_pb2.StudyEmbedded).put("s1", first)
    on_b = ResultTable(b, "embedding", events_pb2.StudyEmbedded)
    assert on_b.get("s1") == first
    newer = events_pb2.StudyEmbedded(study_key="s1", embedding=[0.25] * 4)
    on_b.put("s1", newer)  # redelivery on the other replica: an overwrite, not a second row
    assert ResultTable(a, "embedding", events_pb2.StudyEmbedded).get("s1") == newer
    assert ResultTable(a, "segmentation", events_pb2.StudyEmbedded).get("s1") is None  # per service
    a.close(), b.close()


def test_inputs_arriving_at_two_replicas_at_once_are_joined(database: DatabaseTarget) -> None:
    """The prognosis race: the image on one replica, the other input on another, at the same moment."""
    replicas = [JoinTable(open_db(database)), JoinTable(open_db(database))]
    studies = [f"race-{i}" for i in range(40)]

    def write(replica: int, key: str, barrier: threading.Barrier) -> tuple:
        column = ("embedded", "quantified")[replica]
        barrier.wait()
        return replicas[replica].update(key, column, column.encode())

    with ThreadPoolExecutor(2) as pool:
        for key in studies:
            barrier = threading.Barrier(2)
            rows = list(pool.map(lambda r, k=key, b=barrier: write(r, k, b), (0, 1)))
            complete = [row for row in rows if row[0] and row[1]]
            assert complete, f"neither replica saw both inputs of {key}: {rows}"
    for r in replicas:
        r.db.close()


def test_clinical_updates_on_two_replicas_at_once_are_both_kept(database: DatabaseTarget) -> None:
    replicas = [JoinTable(open_db(database)), JoinTable(open_db(database))]
    parts = [common_pb2.ClinicalData(age=70), common_pb2.ClinicalData(sex_male=True)]

    def merge(i: int, key: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        replicas[i].merge_clinical(key, parts[i], convert.merge_clinical)

    with ThreadPoolExecutor(2) as pool:
        for n in range(20):
            barrier = threading.Barrier(2)
            list(pool.map(lambda i, k=f"c-{n}", b=barrier: merge(i, k, b), (0, 1)))
            merged = replicas[0].clinical(f"c-{n}")
            assert merged.age == 70 and merged.sex_male, f"a concurrent clinical update was lost: {merged}"
    for r in replicas:
        r.db.close()


def test_a_study_view_change_wakes_watchers_on_another_replica(database: DatabaseTarget) -> None:
    writer, watcher = ViewStore(open_db(database)), ViewStore(open_db(database))
    woke = threading.Event()
    time.sleep(0.5)  # both feeds listening

    def watch() -> None:
        watcher.feed.wait(timeout_s=10)
        woke.set()

    thread = threading.Thread(target=watch)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    writer.done("v1", "ingested", events_pb2.StudyIngested(study_key="v1").SerializeToString())
    assert woke.wait(5), "the other replica's watcher was not woken"
    assert time.monotonic() - started < 2.0
    thread.join()
    stages, payloads = watcher.load("v1")
    assert dict((s, st) for s, st, _, _ in stages)["ingested"] == studyview_pb2.STAGE_DONE
    assert "ingested" in payloads and watcher.keys() == ["v1"]
    for store in (writer, watcher):
        store.close()
        store.db.close()
