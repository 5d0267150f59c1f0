"""The prognosis service's join table: per study, the latest embedding, quantification and clinical data.

The three inputs of the prognosis head arrive on three topics in any order; they meet here (SQLite).
"""

from __future__ import annotations

from pathlib import Path

from cxrmesh.runtime.tables import SqliteStore
from cxrmesh.v1 import common_pb2


class JoinTable(SqliteStore):
    """Per study: the latest embedding, quantification and merged clinical data (SQLite)."""

    def __init__(self, path: Path):
        super().__init__(
            path,
            "CREATE TABLE IF NOT EXISTS joined"
            " (study_key TEXT PRIMARY KEY, embedded BLOB, quantified BLOB, clinical BLOB);",
        )

    def update(self, key: str, column: str, value: bytes) -> tuple[bytes | None, bytes | None, bytes | None]:
        assert column in ("embedded", "quantified", "clinical")
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO joined (study_key) VALUES (?)", (key,))
            self._db.execute(f"UPDATE joined SET {column} = ? WHERE study_key = ?", (value, key))
            return self._db.execute(
                "SELECT embedded, quantified, clinical FROM joined WHERE study_key = ?", (key,)
            ).fetchone()

    def clinical(self, key: str) -> common_pb2.ClinicalData:
        with self._lock:
            row = self._db.execute("SELECT clinical FROM joined WHERE study_key = ?", (key,)).fetchone()
        return common_pb2.ClinicalData.FromString(row[0]) if row and row[0] else common_pb2.ClinicalData()
