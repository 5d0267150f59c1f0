"""INSERT ... ON CONFLICT for both engines: the one write every idempotent store is built on.

SQLite and PostgreSQL spell the same statement through different SQLAlchemy dialect constructs; this
picks the connection's. Under a unique key a concurrent upsert waits for the other transaction and
then updates its row, so two replicas writing one study never lose either write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column, Connection, CursorResult, Table
from sqlalchemy.dialects import postgresql, sqlite


def upsert(
    conn: Connection,
    table: Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    update: Sequence[str] | None = None,
    returning: Sequence[Column] = (),
    increment: Sequence[str] = (),
) -> CursorResult:
    """Insert ``values``; on a ``key`` conflict set the ``update`` columns (default: all but the key
    and ``increment``; an empty list keeps the existing row) and add one to each ``increment``
    column (a counter such as deliveries). ``returning``: columns of the row as it is afterwards."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**values)
    columns = [c for c in values if c not in key and c not in increment] if update is None else list(update)
    set_: dict[str, Any] = {c: stmt.excluded[c] for c in columns}
    set_.update({c: table.c[c] + 1 for c in increment})
    if set_:
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=set_)
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    if returning:
        stmt = stmt.returning(*returning)
    return conn.execute(stmt)
