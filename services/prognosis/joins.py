"""The prognosis service's join: per study, the latest embedding, quantification and clinical data.

The three inputs of the prognosis head arrive on three topics in any order, at any replica; they meet
in one row per study of the mesh database. Each write is one upsert that returns the row as it is
after the write, so when two inputs land on two replicas at once the later transaction sees both
(the database orders them under the unique key): a complete row is never missed.
Clinical data merge (read-modify-write) under a row lock, so concurrent updates are not lost.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from cxrmesh.runtime.db import Database, upsert
from cxrmesh.runtime.db.schema import prognosis_joins
from cxrmesh.v1 import common_pb2

Row = tuple[bytes | None, bytes | None, bytes | None]
_COLUMNS = ("embedded", "quantified", "clinical")
_t = prognosis_joins.c


class JoinTable:
    """Per study: the latest embedding, quantification and merged clinical data."""

    def __init__(self, db: Database):
        self.db = db

    def update(self, key: str, column: str, value: bytes) -> Row:
        """Set one input of a study; the study's (embedded, quantified, clinical) after the write."""
        if column not in _COLUMNS:
            raise ValueError(f"unknown join column {column!r}")
        with self.db.transaction() as conn:
            row = upsert(
                conn,
                prognosis_joins,
                {"study_key": key, column: value},
                key=("study_key",),
                returning=(_t.embedded, _t.quantified, _t.clinical),
            ).one()
        return tuple(row)  # type: ignore[return-value]

    def merge_clinical(
        self,
        key: str,
        new: common_pb2.ClinicalData,
        merge: Callable[[common_pb2.ClinicalData, common_pb2.ClinicalData], common_pb2.ClinicalData],
    ) -> tuple[common_pb2.ClinicalData, Row]:
        """Merge ``new`` into the study's clinical data atomically; the merged data and the row after."""
        with self.db.transaction() as conn:
            upsert(conn, prognosis_joins, {"study_key": key}, key=("study_key",), update=[])
            old = conn.execute(
                select(_t.clinical).where(_t.study_key == key).with_for_update()
            ).scalar_one_or_none()
            merged = merge(common_pb2.ClinicalData.FromString(old) if old else common_pb2.ClinicalData(), new)
            row = upsert(
                conn,
                prognosis_joins,
                {"study_key": key, "clinical": merged.SerializeToString()},
                key=("study_key",),
                returning=(_t.embedded, _t.quantified, _t.clinical),
            ).one()
        return merged, tuple(row)  # type: ignore[return-value]

    def clinical(self, key: str) -> common_pb2.ClinicalData:
        with self.db.read() as conn:
            row = conn.execute(select(_t.clinical).where(_t.study_key == key)).scalar_one_or_none()
        return common_pb2.ClinicalData.FromString(row) if row else common_pb2.ClinicalData()
