"""Durable tables of one service process (SQLite, WAL): the base every service's store builds on.

Each stage keeps its latest result per study in a ``ResultTable`` so its Get RPC answers without
re-running a model; the ingestion outbox, the prognosis joins and the study view derive their own
tables from ``SqliteStore``.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Generic, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


class SqliteStore:
    """A small SQLite database owned by one service process: WAL, one lock, safe across threads."""

    def __init__(self, path: Path, schema: str, synchronous: str = "NORMAL"):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(schema)

    def ping(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1").fetchone() == (1,)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ResultTable(SqliteStore, Generic[M]):
    """study_key -> latest result message of one type (idempotent overwrite on redelivery)."""

    def __init__(self, path: Path, message_type: type[M]):
        super().__init__(
            path, "CREATE TABLE IF NOT EXISTS results (study_key TEXT PRIMARY KEY, message BLOB NOT NULL);"
        )
        self.message_type = message_type

    def put(self, key: str, message: M) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?)", (key, message.SerializeToString())
            )

    def get(self, key: str) -> M | None:
        with self._lock:
            row = self._db.execute("SELECT message FROM results WHERE study_key = ?", (key,)).fetchone()
        return self.message_type.FromString(row[0]) if row else None
