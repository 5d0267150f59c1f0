"""The study view's record of each study: stage states and each stage's latest message (SQLite).

A stage is pending until its event arrives, done when it does, failed when a dead letter names it;
stages that depend on a failed one fail with "upstream" reasons. ``changed`` wakes WatchStudy streams.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cxrmesh.contracts import topics
from cxrmesh.runtime.tables import SqliteStore
from cxrmesh.v1 import studyview_pb2

# stage -> the topic whose event completes it
STAGES: dict[str, str] = {
    "ingested": topics.STUDY_INGESTED,
    "embedded": topics.STUDY_EMBEDDED,
    "segmented": topics.STUDY_SEGMENTED,
    "quantified": topics.STUDY_QUANTIFIED,
    "prognosis": topics.STUDY_PROGNOSIS,
}
# the service whose dead letters fail a stage, and what each stage needs first
FAILED_BY = {
    "embedding": "embedded",
    "segmentation": "segmented",
    "quantification": "quantified",
    "prognosis": "prognosis",
}
NEEDS = {
    "embedded": ("ingested",),
    "segmented": ("ingested",),
    "quantified": ("segmented",),
    "prognosis": ("embedded", "quantified"),
}
TOPIC_STAGE = {topic: stage for stage, topic in STAGES.items()}


class ViewStore(SqliteStore):
    """Stage states and the latest message of each stage, per study."""

    def __init__(self, path: Path):
        super().__init__(
            path,
            """
            CREATE TABLE IF NOT EXISTS stages (study_key TEXT, stage TEXT, state INTEGER, reason TEXT,
                updated_at REAL, PRIMARY KEY (study_key, stage));
            CREATE TABLE IF NOT EXISTS payloads (study_key TEXT, stage TEXT, message BLOB,
                PRIMARY KEY (study_key, stage));
            """,
        )
        self.changed = threading.Condition()

    def done(self, key: str, stage: str, message: bytes) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO payloads VALUES (?, ?, ?)", (key, stage, message))
            self._set(key, stage, studyview_pb2.STAGE_DONE, "")
            if stage == "ingested":
                for other in STAGES:
                    self._db.execute(
                        "INSERT OR IGNORE INTO stages VALUES (?, ?, ?, '', ?)",
                        (key, other, studyview_pb2.STAGE_PENDING, time.time()),
                    )
            self._db.execute("COMMIT")
        self._notify()

    def failed(self, key: str, stage: str, reason: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT state FROM stages WHERE study_key=? AND stage=?", (key, stage)
            ).fetchone()
            if not row or row[0] != studyview_pb2.STAGE_DONE:  # a later success wins over an old failure
                self._set(key, stage, studyview_pb2.STAGE_FAILED, reason)
                for later, needs in NEEDS.items():
                    if stage in needs:
                        self._set(key, later, studyview_pb2.STAGE_FAILED, f"upstream stage {stage} failed")
            self._db.execute("COMMIT")
        self._notify()

    def _set(self, key: str, stage: str, state: int, reason: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?)", (key, stage, state, reason, time.time())
        )

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def load(self, key: str) -> tuple[list[tuple[str, int, str, float]], dict[str, bytes]]:
        with self._lock:
            stages = self._db.execute(
                "SELECT stage, state, reason, updated_at FROM stages WHERE study_key = ?", (key,)
            ).fetchall()
            payloads = dict(
                self._db.execute("SELECT stage, message FROM payloads WHERE study_key = ?", (key,)).fetchall()
            )
        return stages, payloads
