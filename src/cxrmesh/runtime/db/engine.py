"""Open the mesh's database from settings: SQLite (one machine) or PostgreSQL (replicas), same code.

Why the engine options look as they do:

* PostgreSQL goes through psycopg 3 with SQLAlchemy's connection pool (``pool_size`` per process,
  ``pool_pre_ping`` so a failover or a restarted server costs one retry, not an error). The password
  comes apart from the URL (a Secret), and neither it nor the URL's is ever logged: ``describe()``.
* SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged study survives a power cut)
  and every write transaction starts ``BEGIN IMMEDIATE``: it takes the write lock first, so two
  processes (replicas on one machine) never deadlock upgrading a read lock, and a read-modify-write
  is atomic. Reads (``read()``) begin deferred and never wait for a writer.
* Migrations run when a process opens the database (``migrate``), serialised across replicas.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

log = logging.getLogger(__name__)

_READ = "cxrmesh_read"  # execution option: a read-only transaction (deferred BEGIN on SQLite)


class DatabaseError(RuntimeError):
    """The database cannot be opened or used; the message never contains a password."""


class Database:
    """One process's handle on the mesh database: a pooled engine, transactions, health, migrations."""

    def __init__(self, url: str, password: str = "", pool_size: int = 4, *, migrate: bool = True):
        self.url = _engine_url(url, password)
        self.engine: Engine = _create_engine(self.url, pool_size)
        self.dialect = self.engine.dialect.name
        if migrate:
            from cxrmesh.runtime.db.migrate import upgrade

            upgrade(self)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def describe(self) -> str:
        """The URL without its password, for logs and errors."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back when it raises."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (takes no write lock on SQLite)."""
        with self.engine.connect().execution_options(**{_READ: True}) as conn:
            try:
                yield conn
            finally:
                conn.rollback()

    def ping(self) -> bool:
        """True while the database answers (a health dependency)."""
        try:
            with self.read() as conn:
                return conn.execute(text("SELECT 1")).scalar() == 1
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.describe()!r})"


def open_database(settings: Any, *, migrate: bool = True) -> Database:
    """The database named by a service's settings: ``database_url``, else SQLite in ``data_dir``."""
    url = settings.database_url or sqlite_url(Path(settings.data_dir) / "state.sqlite")
    return Database(
        url, settings.database_password.get_secret_value(), settings.database_pool_size, migrate=migrate
    )


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _engine_url(url: str, password: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError("the database URL is malformed (postgresql://... or sqlite:///path)") from None
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        if password:
            parsed = parsed.set(password=password)
    elif parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise DatabaseError("a SQLite database must be a file (sqlite:///path), shared by the processes")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        raise DatabaseError(f"unsupported database {parsed.get_backend_name()!r}: use postgresql or sqlite")
    return parsed


def _enter_wal(cur: Any, attempts: int = 60) -> None:
    """Switch a fresh file to WAL even when other processes open it at the same moment.

    Changing the journal mode needs an exclusive lock and SQLite answers "database is locked" at
    once, without its busy handler, when another connection is doing the same (replicas starting
    together on a new file). The switch is idempotent, so wait and try again (about 30 s in all).
    """
    for attempt in range(attempts):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 + random.random() * 0.45)


def _create_engine(url: URL, pool_size: int) -> Engine:
    if url.get_backend_name() == "postgresql":
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={"connect_timeout": 10, "application_name": "cxrmesh"},
        )
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below issues BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        _enter_wal(cur)
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ) else "BEGIN IMMEDIATE")

    return engine
