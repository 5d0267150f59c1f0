"""Each stage's latest result per study, in the mesh database, so any replica's Get RPC answers it.

A replica writes the result it produced (idempotent overwrite on redelivery) before publishing it;
whichever replica a Get lands on reads the same row. ``deliveries`` counts the writes of a row: more
than one means the study's event was handled again (an at-least-once redelivery or a re-drive),
which the fault suite reports.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

from google.protobuf.message import Message
from sqlalchemy import select

from cxrmesh.runtime.db import Database, upsert
from cxrmesh.runtime.db.schema import stage_results

M = TypeVar("M", bound=Message)


class ResultTable(Generic[M]):
    """study_key -> the latest result message of one service (rows of ``stage_results``)."""

    def __init__(self, db: Database, service: str, message_type: type[M]):
        self.db, self.service, self.message_type = db, service, message_type

    def put(self, key: str, message: M) -> None:
        with self.db.transaction() as conn:
            upsert(
                conn,
                stage_results,
                {
                    "service": self.service,
                    "study_key": key,
                    "message": message.SerializeToString(),
                    "updated_at": time.time(),
                    "deliveries": 1,
                },
                key=("service", "study_key"),
                increment=("deliveries",),
            )

    def get(self, key: str) -> M | None:
        t = stage_results.c
        with self.db.read() as conn:
            row = conn.execute(
                select(t.message).where(t.service == self.service, t.study_key == key)
            ).scalar_one_or_none()
        return self.message_type.FromString(row) if row is not None else None
