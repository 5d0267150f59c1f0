"""The ingestion service's durable store and transactional outbox (SQLite, WAL, synchronous=FULL).

A study is acknowledged to the caller only after its row and its event row are committed here
(and its blobs fsynced); a relay then publishes pending events until Kafka confirms each one and
marks it sent. A crash between commit and publish only delays the event: nothing acknowledged is
lost, and consumers are idempotent for the rare duplicate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cxrmesh.runtime.tables import SqliteStore


@dataclass(frozen=True)
class PendingEvent:
    id: int
    topic: str
    key: str
    payload: bytes
    type_name: str


class Outbox(SqliteStore):
    def __init__(self, path: Path):
        # synchronous=FULL: a committed study survives a power cut, which is what the ack promises
        super().__init__(
            path,
            """
            CREATE TABLE IF NOT EXISTS studies (
                study_key TEXT PRIMARY KEY, patient_key TEXT NOT NULL, ingested_at REAL NOT NULL,
                event BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key TEXT NOT NULL,
                type_name TEXT NOT NULL, payload BLOB NOT NULL, created_at REAL NOT NULL,
                sent_at REAL, attempts INTEGER NOT NULL DEFAULT 0);
            CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(sent_at) WHERE sent_at IS NULL;
            """,
            synchronous="FULL",
        )

    def add_study(self, study_key: str, patient_key: str, topic: str, type_name: str, event: bytes) -> bool:
        """Store a study and its event atomically; False if the study was already there."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO studies VALUES (?, ?, ?, ?)",
                    (study_key, patient_key, time.time(), event),
                )
                new = cur.rowcount == 1
                if new:
                    self._enqueue(topic, study_key, type_name, event)
                self._db.execute("COMMIT")
                return new
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def has_study(self, study_key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM studies WHERE study_key = ?", (study_key,)).fetchone()
        return row is not None

    def add_event(self, topic: str, key: str, type_name: str, payload: bytes) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._enqueue(topic, key, type_name, payload)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _enqueue(self, topic: str, key: str, type_name: str, payload: bytes) -> None:
        self._db.execute(
            "INSERT INTO outbox (topic, key, type_name, payload, created_at) VALUES (?, ?, ?, ?, ?)",
            (topic, key, type_name, payload, time.time()),
        )

    def pending(self, limit: int = 64) -> list[PendingEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, key, payload, type_name FROM outbox"
                " WHERE sent_at IS NULL ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [PendingEvent(*row) for row in rows]

    def mark_sent(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock:
            self._db.executemany(
                "UPDATE outbox SET sent_at = ? WHERE id = ?", [(time.time(), i) for i in ids]
            )

    def mark_failed(self, ids: list[int]) -> None:
        with self._lock:
            self._db.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in ids]
            )

    def backlog(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])
