"""The study view's record of each study: stage states and each stage's latest message (mesh database).

A stage is pending until its event arrives, done when it does, failed when a dead letter names it;
stages that depend on a failed one fail with "upstream" reasons. Its change feed wakes WatchStudy
streams on every replica.

Verdict. The view has one on a study once a stage failed (``failed``) or every stage is done
(``complete``), as the reconciler reads it. The update that first gives a study its verdict returns
it (``done``/``failed``), once per study across replicas and re-deliveries: the update locks the
study's stage rows (replicas recording two of its stages take turns), and the first verdict claims a
``verdict`` row in ``view_payloads`` (its primary key admits one). The study view observes the
end-to-end time from ingestion on that return only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, select

from cxrmesh.contracts import topics
from cxrmesh.runtime.db import Database, upsert
from cxrmesh.runtime.db.changes import ChangeFeed
from cxrmesh.runtime.db.schema import view_payloads, view_stages
from cxrmesh.v1 import events_pb2, studyview_pb2

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
VERDICT_ROW = "verdict"  # view_payloads' pseudo stage that records the first verdict (not a stage)


def verdict(states: Mapping[str, int]) -> str | None:
    """``failed`` once any stage failed, ``complete`` once every stage is done, else None (no verdict)."""
    if studyview_pb2.STAGE_FAILED in states.values():
        return "failed"
    if all(states.get(stage) == studyview_pb2.STAGE_DONE for stage in STAGES):
        return "complete"
    return None


@dataclass(frozen=True)
class Verdict:
    """The first verdict on a study, returned by the one update that gave it."""

    outcome: str  # complete | failed
    ingested_at: float | None  # from the stored StudyIngested (None before it arrived)


class ViewStore:
    """Stage states and the latest message of each stage, per study, shared by every replica.

    ``feed.changed`` wakes WatchStudy streams on every replica when any replica records a change.
    """

    def __init__(self, db: Database):
        self.db = db
        self.feed = ChangeFeed(db, "cxrmesh_study_views")

    def done(self, key: str, stage: str, message: bytes) -> Verdict | None:
        """Record ``stage`` done; the study's first verdict when this update gave it."""
        with self.db.transaction() as conn:
            before = self._lock(conn, key)
            upsert(conn, view_payloads, {"study_key": key, "stage": stage, "message": message}, _KEY)
            self._set(conn, key, stage, studyview_pb2.STAGE_DONE, "")
            if stage == "ingested":
                for other in STAGES:
                    row = _row(key, other, studyview_pb2.STAGE_PENDING, "")
                    upsert(conn, view_stages, row, _KEY, update=[])
            first = self._first_verdict(conn, key, before)
            self.feed.announce(conn)
        self.feed.wake()
        return first

    def failed(self, key: str, stage: str, reason: str) -> Verdict | None:
        """Record ``stage`` (and the stages that need it) failed, unless it is done; the study's first
        verdict when this update gave it."""
        with self.db.transaction() as conn:
            before = self._lock(conn, key)
            if before.get(stage) == studyview_pb2.STAGE_DONE:  # a later success wins over an old failure
                return None
            self._set(conn, key, stage, studyview_pb2.STAGE_FAILED, reason)
            for later, needs in NEEDS.items():
                if stage in needs:
                    self._set(conn, key, later, studyview_pb2.STAGE_FAILED, f"upstream stage {stage} failed")
            first = self._first_verdict(conn, key, before)
            self.feed.announce(conn)
        self.feed.wake()
        return first

    @staticmethod
    def _lock(conn: Connection, key: str) -> dict[str, int]:
        """Lock the study's stage rows (an update of another replica waits for this one), then read
        them afresh: on PostgreSQL a statement after the wait sees what the other committed."""
        t = view_stages.c
        conn.execute(select(t.stage).where(t.study_key == key).with_for_update()).all()
        return _states(conn, key)

    @staticmethod
    def _first_verdict(conn: Connection, key: str, before: Mapping[str, int]) -> Verdict | None:
        """The verdict this transaction gave the study: none before, one now, and the verdict row
        still free (a verdict lost and regained, by a failure undone, is not a first one)."""
        outcome = verdict(_states(conn, key))
        if verdict(before) is not None or outcome is None:
            return None
        p = view_payloads.c
        row = {"study_key": key, "stage": VERDICT_ROW, "message": outcome.encode()}
        if upsert(conn, view_payloads, row, _KEY, update=[], returning=[p.stage]).first() is None:
            return None  # the row was there: not the first verdict (RETURNING: rowcount is -1 on psycopg)
        ingested = conn.execute(
            select(p.message).where(p.study_key == key, p.stage == "ingested")
        ).scalar_one_or_none()
        at = events_pb2.StudyIngested.FromString(ingested).ingested_at if ingested else None
        return Verdict(outcome, at.seconds + at.nanos / 1e9 if at and at.seconds else None)

    @staticmethod
    def _set(conn: Connection, key: str, stage: str, state: int, reason: str) -> None:
        upsert(conn, view_stages, _row(key, stage, state, reason), _KEY)

    def load(self, key: str) -> tuple[list[tuple[str, int, str, float]], dict[str, bytes]]:
        s, p = view_stages.c, view_payloads.c
        with self.db.read() as conn:
            stages = conn.execute(
                select(s.stage, s.state, s.reason, s.updated_at).where(s.study_key == key)
            ).all()
            payloads = conn.execute(
                select(p.stage, p.message).where(p.study_key == key, p.stage.in_(list(STAGES)))
            ).all()
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


def _states(conn: Connection, key: str) -> dict[str, int]:
    s = view_stages.c
    return dict(conn.execute(select(s.stage, s.state).where(s.study_key == key)).all())  # type: ignore[arg-type]


def _row(key: str, stage: str, state: int, reason: str) -> dict[str, object]:
    return {"study_key": key, "stage": stage, "state": state, "reason": reason, "updated_at": time.time()}
