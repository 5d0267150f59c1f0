"""The study view's record of each study: stage states and each stage's latest message (mesh database).

A stage is pending until its event arrives, done when it does, failed when a dead letter names it;
stages that depend on a failed one fail with "upstream" reasons. Its change feed wakes WatchStudy
streams on every replica.
"""

from __future__ import annotations

import time

from sqlalchemy import Connection, select

from cxrmesh.contracts import topics
from cxrmesh.runtime.db import Database, upsert
from cxrmesh.runtime.db.changes import ChangeFeed
from cxrmesh.runtime.db.schema import view_payloads, view_stages
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


class ViewStore:
    """Stage states and the latest message of each stage, per study, shared by every replica.

    ``feed.changed`` wakes WatchStudy streams on every replica when any replica records a change.
    """

    def __init__(self, db: Database):
        self.db = db
        self.feed = ChangeFeed(db, "cxrmesh_study_views")

    def done(self, key: str, stage: str, message: bytes) -> None:
        with self.db.transaction() as conn:
            upsert(conn, view_payloads, {"study_key": key, "stage": stage, "message": message}, _KEY)
            self._set(conn, key, stage, studyview_pb2.STAGE_DONE, "")
            if stage == "ingested":
                for other in STAGES:
                    row = _row(key, other, studyview_pb2.STAGE_PENDING, "")
                    upsert(conn, view_stages, row, _KEY, update=[])
            self.feed.announce(conn)
        self.feed.wake()

    def failed(self, key: str, stage: str, reason: str) -> None:
        t = view_stages.c
        with self.db.transaction() as conn:
            state = conn.execute(
                select(t.state).where(t.study_key == key, t.stage == stage).with_for_update()
            ).scalar_one_or_none()
            if state != studyview_pb2.STAGE_DONE:  # a later success wins over an old failure
                self._set(conn, key, stage, studyview_pb2.STAGE_FAILED, reason)
                for later, needs in NEEDS.items():
                    if stage in needs:
                        self._set(
                            conn, key, later, studyview_pb2.STAGE_FAILED, f"upstream stage {stage} failed"
                        )
                self.feed.announce(conn)
        self.feed.wake()

    @staticmethod
    def _set(conn: Connection, key: str, stage: str, state: int, reason: str) -> None:
        upsert(conn, view_stages, _row(key, stage, state, reason), _KEY)

    def load(self, key: str) -> tuple[list[tuple[str, int, str, float]], dict[str, bytes]]:
        s, p = view_stages.c, view_payloads.c
        with self.db.read() as conn:
            stages = conn.execute(
                select(s.stage, s.state, s.reason, s.updated_at).where(s.study_key == key)
            ).all()
            payloads = conn.execute(select(p.stage, p.message).where(p.study_key == key)).all()
        return [tuple(r) for r in stages], dict(payloads)  # type: ignore[misc]

    def keys(self) -> list[str]:
        return study_keys(self.db)

    def ping(self) -> bool:
        return self.db.ping()

    def close(self) -> None:
        self.feed.close()


_KEY = ("study_key", "stage")


def study_keys(db: Database) -> list[str]:
    """Every study the view has seen (for local tools such as ``cxrmesh report --all``; the API has
    no listing call)."""
    s = view_stages.c
    with db.read() as conn:
        return list(conn.execute(select(s.study_key).distinct().order_by(s.study_key)).scalars())


def _row(key: str, stage: str, state: int, reason: str) -> dict[str, object]:
    return {"study_key": key, "stage": stage, "state": state, "reason": reason, "updated_at": time.time()}
