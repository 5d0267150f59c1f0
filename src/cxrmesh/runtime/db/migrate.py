"""Bring the database to the newest schema at process start, one process at a time.

Alembic runs the versioned migrations in ``migrations/versions`` (additive only, so a rolling upgrade
is safe: old replicas keep working on the new schema). Replicas start together: on PostgreSQL an
advisory lock serialises them; on SQLite an exclusive ``flock`` on a lock file beside the database
does (Alembic runs SQLite DDL outside one transaction, so ``BEGIN IMMEDIATE`` alone let two
processes apply the same step). The second one finds the schema at head and does nothing.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

log = logging.getLogger(__name__)
_LOCK = 0x6378726D65736801  # pg_advisory_lock key of the cxrmesh migrations ("cxrmesh\x01")
_IN_PROCESS = threading.Lock()  # Alembic's context is process-global: one migration per process at a time


def alembic_config() -> Config:
    """Alembic's config for the package's migrations (no alembic.ini: nothing to keep in step)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("cxrmesh.runtime.db") / "migrations"))
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def current(db: Any) -> str:  # a cxrmesh.runtime.db.Database (which imports this module)
    with db.read() as conn:
        return MigrationContext.configure(conn).get_current_revision() or ""


@contextmanager
def _sqlite_file_lock(db: Any) -> Iterator[None]:
    """Across processes on one machine: hold ``<database>.migrate.lock`` while migrating SQLite."""
    if db.is_postgres:
        yield
        return
    with open(f"{db.url.database}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(db: Any) -> None:
    """Migrate to head unless already there (the common case costs one read)."""
    target = head()
    if current(db) == target:
        return
    cfg = alembic_config()
    with _IN_PROCESS, _sqlite_file_lock(db), db.engine.connect() as conn:
        if db.is_postgres:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK})
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if db.is_postgres:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK})
                conn.commit()
    log.info("database schema migrated", extra={"revision": target})
