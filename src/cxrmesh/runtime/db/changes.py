"""A change feed across replicas: wake this process's waiters when any process commits a change.

The study view's WatchStudy streams live on whichever replica the client reached, while the event
that changes the study may be consumed by another. Writers ``announce`` inside their transaction;
every replica's feed wakes its waiters, who re-read what they follow:

* PostgreSQL: ``NOTIFY`` (delivered at commit, to every listening session), read by one ``LISTEN``
  connection per process; after a lost connection the feed reconnects and wakes everyone once, so a
  change missed meanwhile is still seen.
* SQLite (one machine): ``PRAGMA data_version``, which changes whenever another connection commits,
  polled every ``poll_s``.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading

import psycopg
from sqlalchemy import Connection, text

from cxrmesh.runtime.db.engine import Database

log = logging.getLogger(__name__)
_CHANNEL = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class ChangeFeed:
    """``changed`` is notified whenever any process announced on ``channel`` (or may have)."""

    def __init__(self, db: Database, channel: str, poll_s: float = 0.25):
        if not _CHANNEL.fullmatch(channel):
            raise ValueError(f"channel must match {_CHANNEL.pattern}")
        self.db, self.channel, self.poll_s = db, channel, poll_s
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"changes-{channel}", daemon=True)
        self._thread.start()

    def announce(self, conn: Connection) -> None:
        """Within a write transaction: tell every replica at commit (PostgreSQL; SQLite needs nothing)."""
        if self.db.is_postgres:
            conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": self.channel})

    def wake(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait(self, timeout_s: float) -> None:
        with self.changed:
            self.changed.wait(timeout_s)

    def close(self) -> None:
        self._stop.set()
        self.wake()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen() if self.db.is_postgres else self._poll()
            except (psycopg.Error, sqlite3.Error) as exc:
                log.warning(
                    "change feed lost its connection; reconnecting", extra={"error_type": type(exc).__name__}
                )
                self.wake()  # anything may have changed meanwhile
                self._stop.wait(1.0)

    def _listen(self) -> None:
        args, kwargs = self.db.engine.dialect.create_connect_args(self.db.engine.url)
        with psycopg.connect(*args, **kwargs, autocommit=True) as conn:
            conn.execute(f"LISTEN {self.channel}")  # validated identifier
            self.wake()
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=1.0):
                    self.wake()

    def _poll(self) -> None:
        path = self.db.url.database
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            last = None
            while not self._stop.wait(self.poll_s):
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != last:
                    last = version
                    self.wake()
        finally:
            conn.close()
