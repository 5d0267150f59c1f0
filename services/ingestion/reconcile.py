"""The reconciler: re-drive accepted studies that made no progress, from the outbox's durable state.

The outbox guarantees an acknowledged study's StudyIngested event reaches the broker once; it cannot
help if the broker then loses messages between stages (a broker restarted on memory storage, a
topic deleted by hand). Every stage re-processes and re-publishes an event it sees again, so
publishing the study's stored event once more re-drives the whole pipeline for that study.

A study is *stalled* when it was ingested more than ``after_s`` ago, none of its outbox rows is
pending (those are the relay's job), and the study view has no verdict on it: neither complete
(every stage known and settled) nor failed (a dead letter marked a stage). A stalled study gets a
new outbox row with its stored StudyIngested event, and one per distinct ClinicalUpdated event it
had (in their original order: prognosis merges them field by field and search keeps the latest, so
replaying all of them rebuilds what a lost one would have carried), then waits twice as long as
before. After ``max_redrives`` the reconciler leaves it alone and counts it as stuck
(``cxrmesh_reconciler_stuck_studies``, for an operator's alert) until the view has a verdict.

State lives in three columns of ``studies`` (migration 0002): ``redrives``, ``redrive_after`` (when
the study may next be looked at; NULL once the view settled it or the reconciler gave up) and
``stuck_since``. Several ingestion replicas reconcile at once: a round holds the same kind of
serialisation as ``Outbox.claim`` (its own advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite), and each re-drive is a compare-and-set ``UPDATE ... WHERE redrive_after <= now AND
redrives = n RETURNING``, so two replicas never re-drive one study in the same round.

Each re-drive starts a new trace (root span "study re-drive", linked to the trace the study's first
StudyIngested row was stored in), and the re-driven rows carry it: a re-drive comes hours later, and a
trace per pipeline run keeps traces short while the link still leads to the original.

The view's verdict is read straight from ``view_stages`` here (``view_finished``) rather than
through the study view's store, which has no query over many studies; the stage list is the view's.
Logs carry counts only, never a study key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link
from sqlalchemy import ColumnElement, Connection, exists, func, insert, or_, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from cxrmesh.contracts import topics
from cxrmesh.runtime import metrics, tracing
from cxrmesh.runtime.db import Database
from cxrmesh.runtime.db.schema import outbox, studies, view_stages
from cxrmesh.services.ingestion.outbox import trace_columns
from cxrmesh.services.studyview.store import STAGES
from cxrmesh.v1 import events_pb2, studyview_pb2

log = logging.getLogger(__name__)

_RECONCILE_LOCK = 0x6378726D65736803  # pg_advisory_xact_lock key of the reconciler's rounds ("cxrmesh\x03")
_INGESTED_TYPE = events_pb2.StudyIngested.DESCRIPTOR.full_name
_SETTLED = (studyview_pb2.STAGE_DONE, studyview_pb2.STAGE_FAILED)


def redriven_total() -> metrics.Counter:
    return metrics.metric(
        metrics.Counter,
        "cxrmesh_reconciler_redriven_total",
        "Stalled studies whose stored events the reconciler enqueued again.",
    )


def stuck_studies() -> metrics.Gauge:
    return metrics.metric(
        metrics.Gauge,
        "cxrmesh_reconciler_stuck_studies",
        "Studies still without a verdict after the reconciler's last allowed re-drive.",
    )


@dataclass(frozen=True)
class Redriven:
    """One round's outcome. ``keys`` are for callers and tests only: never log them."""

    keys: tuple[str, ...] = ()  # studies re-driven this round
    settled: int = 0  # found complete or failed: no longer watched
    gave_up: int = 0  # reached the re-drive limit this round
    stuck: int = 0  # given up on and still without a verdict (the gauge's value)
    full: bool = False  # the round took a whole batch: more may be due already


def view_finished(study_key: ColumnElement[str]) -> ColumnElement[bool]:
    """The study view has a verdict on ``study_key``: failed (a dead letter marked a stage), or
    complete (every stage known and settled, as ``StudyViewServicer.view`` computes ``complete``)."""
    v = view_stages.c
    settled = (
        select(func.count())
        .where(v.study_key == study_key, v.stage.in_(list(STAGES)), v.state.in_(_SETTLED))
        .scalar_subquery()
    )
    failed = exists().where(v.study_key == study_key, v.state == studyview_pb2.STAGE_FAILED)
    return or_(failed, settled >= len(STAGES))


class Reconciler:
    def __init__(self, db: Database, *, after_s: float = 300, max_redrives: int = 3, batch: int = 100):
        if after_s <= 0 or max_redrives < 0 or batch < 1:
            raise ValueError("after_s > 0, max_redrives >= 0 and batch >= 1 are required")
        self.db, self.after_s, self.max_redrives, self.batch = db, after_s, max_redrives, batch

    def run_once(self, now: float | None = None) -> Redriven:
        """One round at time ``now``: settle, re-drive or give up on every study due, then count the stuck."""
        now = time.time() if now is None else now
        s = studies.c
        with self.db.transaction() as conn:
            if self.db.is_postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _RECONCILE_LOCK})
            due = self._due(conn, now)
            finished = [key for key, _, done in due if done]
            stalled = [(key, n) for key, n, done in due if not done]
            settled = self._set(conn, finished, now, redrive_after=None)
            keys = self._redrive(conn, [(k, n) for k, n in stalled if n < self.max_redrives], now)
            spent = [k for k, n in stalled if n >= self.max_redrives]
            gave_up = self._set(conn, spent, now, redrive_after=None, stuck_since=now)
            # a stuck study the view has since settled leaves the count (and the partial index)
            conn.execute(
                update(studies)
                .where(s.stuck_since.is_not(None), view_finished(s.study_key))
                .values(stuck_since=None)
            )
            stuck = conn.execute(
                select(func.count()).select_from(studies).where(s.stuck_since.is_not(None))
            ).scalar_one()
        redriven_total().inc(len(keys))
        stuck_studies().set(stuck)
        if keys:
            log.warning("stalled studies re-driven", extra={"studies": len(keys)})
        if gave_up:
            log.error(
                "studies left stuck after the last re-drive",
                extra={"studies": gave_up, "stuck": stuck, "max_redrives": self.max_redrives},
            )
        return Redriven(tuple(keys), settled, gave_up, int(stuck), len(due) == self.batch)

    def _due(self, conn: Connection, now: float) -> list[tuple[str, int, bool]]:
        """(study_key, redrives, view has a verdict) of the studies past their deadline, oldest first."""
        s, o = studies.c, outbox.c
        pending = exists().where(o.key == s.study_key, o.sent_at.is_(None))
        rows = conn.execute(
            select(s.study_key, s.redrives, view_finished(s.study_key).label("finished"))
            .where(
                s.redrive_after.is_not(None),
                s.redrive_after <= now,
                s.ingested_at <= now - self.after_s,
                ~pending,
            )
            .order_by(s.redrive_after, s.ingested_at)
            .limit(self.batch)
        ).all()
        return [(key, int(n), bool(done)) for key, n, done in rows]

    @staticmethod
    def _set(conn: Connection, keys: Sequence[str], now: float, **values: float | None) -> int:
        """Update the studies among ``keys`` still due at ``now``; how many there were."""
        if not keys:
            return 0
        s = studies.c
        done = conn.execute(
            update(studies).where(s.study_key.in_(keys), s.redrive_after <= now).values(**values)
        )
        return int(done.rowcount)

    def _redrive(self, conn: Connection, due: Sequence[tuple[str, int]], now: float) -> list[str]:
        """Claim each study (compare-and-set on its count and deadline), then enqueue its events."""
        s = studies.c
        by_count: dict[int, list[str]] = defaultdict(list)
        for key, n in due:
            by_count[n].append(key)
        claimed: list[tuple[str, bytes, int]] = []
        for n, keys in sorted(by_count.items()):
            claimed += [
                (key, event, n + 1)
                for key, event in conn.execute(
                    update(studies)
                    .where(s.study_key.in_(keys), s.redrives == n, s.redrive_after <= now)
                    .values(redrives=n + 1, redrive_after=now + self.after_s * 2 ** (n + 1))
                    .returning(s.study_key, s.event)
                )
            ]
        if not claimed:
            return []
        keys = [key for key, _, _ in claimed]
        clinical = _clinical_events(conn, keys)
        origins = _origins(conn, keys)
        created = time.time()
        rows = []
        for key, event, redrive in claimed:
            traced = _redrive_trace(origins.get(key), redrive)
            rows.append(_row(topics.STUDY_INGESTED, key, _INGESTED_TYPE, event, created, traced))
            rows += [
                _row(topics.STUDY_CLINICAL, key, t, payload, created, traced) for t, payload in clinical[key]
            ]
        conn.execute(insert(outbox), rows)
        return keys


def _clinical_events(conn: Connection, keys: Sequence[str]) -> dict[str, list[tuple[str, bytes]]]:
    """Each study's distinct ClinicalUpdated events (type, payload), first enqueued first; earlier
    re-drives' copies are the same bytes and count once."""
    o = outbox.c
    found: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for key, type_name, payload in conn.execute(
        select(o.key, o.type_name, o.payload)
        .where(o.key.in_(keys), o.topic == topics.STUDY_CLINICAL)
        .order_by(o.id)
    ):
        if all(payload != seen for _, seen in found[key]):
            found[key].append((type_name, payload))
    return found


def _origins(conn: Connection, keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """The W3C headers each study's first StudyIngested row was stored with (its original trace)."""
    o = outbox.c
    first = select(func.min(o.id)).where(o.key.in_(keys), o.topic == topics.STUDY_INGESTED).group_by(o.key)
    found: dict[str, dict[str, str]] = {}
    for key, parent, state in conn.execute(select(o.key, o.traceparent, o.tracestate).where(o.id.in_(first))):
        if parent:
            found[key] = {tracing.TRACEPARENT: parent, **({tracing.TRACESTATE: state} if state else {})}
    return found


def _redrive_trace(origin: dict[str, str] | None, redrive: int) -> dict[str, str | None]:
    """A new trace for one study's re-drive, its root linked to ``origin``; the rows' trace columns."""
    original = trace.get_current_span(tracing.context_from(origin or {})).get_span_context()
    links = [Link(original)] if original.is_valid else []
    span = tracing.tracer().start_span(
        "study re-drive", context=Context(), links=links, attributes={"cxrmesh.redrive": redrive}
    )
    span.end()
    return trace_columns(trace.set_span_in_context(span))


def _row(
    topic: str, key: str, type_name: str, payload: bytes, created: float, traced: dict[str, str | None]
) -> dict[str, object]:
    return {
        "topic": topic,
        "key": key,
        "type_name": type_name,
        "payload": payload,
        "created_at": created,
        **traced,
    }


def reconcile(reconciler: Reconciler, stop: threading.Event, interval_s: float) -> None:
    """The worker loop (``ServiceRuntime.add_worker``): a round every ``interval_s``, at once again
    while rounds come back full; a database outage costs a round, not the worker."""
    while not stop.is_set():
        try:
            full = reconciler.run_once().full
        except SQLAlchemyError as exc:
            log.warning("reconciler round failed", extra={"error_type": type(exc).__name__})
            full = False
        if not full:
            stop.wait(interval_s)
