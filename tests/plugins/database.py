"""``db``: the mesh database opened (and migrated) on each engine the ``database`` fixture gives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from plugins.postgres import DatabaseTarget

from cxrmesh.runtime.db import Database


def open_db(target: DatabaseTarget) -> Database:
    """Another process's handle on the same database (a replica: its own pool)."""
    return Database(target.url, target.password, pool_size=4)


@pytest.fixture
def db(database: DatabaseTarget) -> Iterator[Database]:
    handle = open_db(database)
    yield handle
    handle.close()
