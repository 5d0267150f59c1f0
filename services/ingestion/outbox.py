"""The ingestion service's durable store and transactional outbox (the mesh database).

A study is acknowledged to the caller only after its row and its event row are committed here
(and its blobs fsynced); relays then publish pending events until Kafka confirms each one and mark
them sent. A crash between commit and publish only delays the event: nothing acknowledged is lost,
and consumers are idempotent for the rare duplicate.

Several ingestion replicas share the one outbox. A relay publishes only rows it has claimed under a
lease (``claim``): claims are serialised (an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite), a claimed row is skipped by the others until its lease expires, and a key with rows
claimed elsewhere waits, so one study's events still leave in order. A relay that dies holding a
lease delays its rows by one lease; only a relay that stalls past its lease and then publishes
anyway can duplicate a row (at-least-once, never on purpose).

Each row keeps the W3C trace context current when it was stored (the ``Ingest`` or ``SubmitClinical``
call's span, a re-drive's), and the relay publishes the record with it: the study's trace goes on
from the call that accepted it, however late the record leaves (``cxrmesh.runtime.tracing``).

A new study's sealed original identity (``cxrmesh.runtime.db.identities``) is written in that same
transaction too. In a transaction of its own, a crash between the two commits would leave a study
that is acknowledged and analysed but whose results can never be filed back under the original study
in the PACS (or an identity with no study); together, either both rows exist or neither does, and a
refused or duplicate upload writes none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry.context import Context
from sqlalchemy import Connection, func, insert, or_, select, text, update

from cxrmesh.runtime import tracing
from cxrmesh.runtime.db import Database, upsert
from cxrmesh.runtime.db.identities import add_identity
from cxrmesh.runtime.db.schema import outbox, studies

_CLAIM_LOCK = 0x6378726D65736802  # pg_advisory_xact_lock key of the outbox claims


@dataclass(frozen=True)
class PendingEvent:
    id: int
    topic: str
    key: str
    payload: bytes
    type_name: str
    traceparent: str | None = None
    tracestate: str | None = None

    def trace_headers(self) -> dict[str, str]:
        """The W3C headers the record is published with ({} for rows stored outside a trace)."""
        stored = {tracing.TRACEPARENT: self.traceparent, tracing.TRACESTATE: self.tracestate}
        return {name: value for name, value in stored.items() if value}


class Outbox:
    def __init__(self, db: Database):
        self.db = db

    def add_study(
        self,
        study_key: str,
        patient_key: str,
        topic: str,
        type_name: str,
        event: bytes,
        *,
        identity: bytes | None = None,
    ) -> bool:
        """Store a study, its event and its sealed ``identity`` atomically; False if the study was
        already there (then nothing is written)."""
        with self.db.transaction() as conn:
            row = {
                "study_key": study_key,
                "patient_key": patient_key,
                "ingested_at": time.time(),
                "event": event,
            }
            inserted = upsert(
                conn, studies, row, key=("study_key",), update=[], returning=[studies.c.study_key]
            )
            new = inserted.first() is not None  # nothing returned: the study was already there
            if new:
                self._enqueue(conn, topic, study_key, type_name, event)
                if identity is not None:
                    add_identity(conn, study_key, identity)
            return new

    def has_study(self, study_key: str) -> bool:
        with self.db.read() as conn:
            found = conn.execute(select(studies.c.study_key).where(studies.c.study_key == study_key))
            return found.first() is not None

    def add_event(self, topic: str, key: str, type_name: str, payload: bytes) -> None:
        with self.db.transaction() as conn:
            self._enqueue(conn, topic, key, type_name, payload)

    @staticmethod
    def _enqueue(conn: Connection, topic: str, key: str, type_name: str, payload: bytes) -> None:
        """One pending row, with the trace context of the call storing it."""
        conn.execute(
            insert(outbox).values(
                topic=topic,
                key=key,
                type_name=type_name,
                payload=payload,
                created_at=time.time(),
                **trace_columns(),
            )
        )

    def claim(self, owner: str, limit: int = 64, lease_s: float = 60.0) -> list[PendingEvent]:
        """Pending events for relay ``owner`` to publish, oldest first, leased to it for ``lease_s``."""
        t = outbox.c
        now = time.time()
        with self.db.transaction() as conn:
            if self.db.is_postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CLAIM_LOCK})
            held_elsewhere = select(t.key).where(
                t.sent_at.is_(None), t.lease_until >= now, t.claimed_by != owner
            )
            rows = conn.execute(
                select(t.id, t.topic, t.key, t.payload, t.type_name, t.traceparent, t.tracestate)
                .where(
                    t.sent_at.is_(None),
                    or_(t.lease_until.is_(None), t.lease_until < now, t.claimed_by == owner),
                    t.key.not_in(held_elsewhere),
                )
                .order_by(t.id)
                .limit(limit)
            ).all()
            if rows:
                conn.execute(
                    update(outbox)
                    .where(t.id.in_([r.id for r in rows]))
                    .values(claimed_by=owner, lease_until=now + lease_s)
                )
        return [PendingEvent(*row) for row in rows]

    def mark_sent(self, ids: list[int], owner: str) -> None:
        if not ids:
            return
        t = outbox.c
        with self.db.transaction() as conn:
            conn.execute(
                update(outbox)
                .where(t.id.in_(ids), t.sent_at.is_(None), t.claimed_by == owner)
                .values(sent_at=time.time(), lease_until=None)
            )

    def mark_failed(self, ids: list[int], owner: str) -> None:
        """Count the attempt and release the lease (this relay or another retries the rows)."""
        if not ids:
            return
        t = outbox.c
        with self.db.transaction() as conn:
            conn.execute(
                update(outbox)
                .where(t.id.in_(ids), t.claimed_by == owner)
                .values(attempts=t.attempts + 1, lease_until=None)
            )

    def backlog(self) -> int:
        with self.db.read() as conn:
            pending = select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
            return int(conn.execute(pending).scalar_one())

    def ping(self) -> bool:
        return self.db.ping()


def trace_columns(ctx: Context | None = None) -> dict[str, str | None]:
    """The outbox's trace columns for ``ctx`` (default: the current context); None outside a trace."""
    headers = tracing.w3c_headers(ctx)
    return {"traceparent": headers.get(tracing.TRACEPARENT), "tracestate": headers.get(tracing.TRACESTATE)}
