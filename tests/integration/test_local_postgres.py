"""The throwaway PostgreSQL (cxrmesh.local.postgres): who gets in, who is refused, what survives a restart.

Runs a real PostgreSQL 15 on loopback: the session cluster of tests/plugins/postgres.py (TLS, password),
and for the restart checks a cluster of its own without TLS (the ``host`` + SCRAM configuration).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from plugins.postgres import DatabaseTarget, cluster_home

from cxrmesh.local.postgres import LocalPostgres


def _connect(url: str, password: str, **kw: object) -> psycopg.Connection:
    return psycopg.connect(url, password=password, connect_timeout=5, **kw)


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket LISTENing on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                raw = bytes.fromhex(addr)
                # /proc prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                found.add(socket.inet_ntop(family, words))
    return found


def test_cluster_starts_and_serves_tls_with_verify_full(postgres_cluster: LocalPostgres) -> None:
    assert postgres_cluster.ready()
    url = postgres_cluster.url()
    assert "sslmode=verify-full" in url and "sslrootcert=" in url
    with _connect(url, postgres_cluster.password) as conn:
        ssl_on, version = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("cxrmesh", "cxrmesh")
        assert conn.execute("SHOW max_connections").fetchone() == ("200",)
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
    assert ssl_on and version.startswith("TLSv1.")


def test_plaintext_is_refused(postgres_cluster: LocalPostgres) -> None:
    url = postgres_cluster.url().split("?")[0]
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        _connect(url, postgres_cluster.password, sslmode="disable")


def test_wrong_or_missing_password_is_refused(postgres_cluster: LocalPostgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(postgres_cluster.url(), "not-the-password")
    with pytest.raises(psycopg.OperationalError):
        _connect(postgres_cluster.url(), "")


def test_other_roles_and_admin_databases_are_refused(postgres_cluster: LocalPostgres) -> None:
    password = postgres_cluster.password
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        _connect(postgres_cluster.url().replace("cxrmesh@", "postgres@", 1), password)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        _connect(postgres_cluster.url("postgres"), password)


def test_the_password_stays_secret(postgres_cluster: LocalPostgres) -> None:
    password = postgres_cluster.password
    assert len(password) >= 32
    assert stat.S_IMODE(postgres_cluster.password_file.stat().st_mode) == 0o600
    assert password not in postgres_cluster.url()
    assert not any(password in arg for arg in postgres_cluster.command())
    with _connect(postgres_cluster.url(), password):
        pass
    assert password not in postgres_cluster.log.read_text()


def test_it_listens_on_loopback_only(postgres_cluster: LocalPostgres) -> None:
    assert _listening(postgres_cluster.port) == {"127.0.0.1"}


def test_create_and_drop_database(postgres_cluster: LocalPostgres) -> None:
    started = time.monotonic()
    url = postgres_cluster.create_database("cxr_created")
    took = time.monotonic() - started
    try:
        conn = _connect(url, postgres_cluster.password, autocommit=True)
        conn.execute("CREATE TABLE t (n int)")  # the cxrmesh role owns it, schema public included
        assert conn.execute("SELECT current_database()").fetchone() == ("cxr_created",)
        postgres_cluster.drop_database("cxr_created")  # WITH (FORCE): ends the session still open
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
    finally:
        postgres_cluster.drop_database("cxr_created")
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        _connect(url, postgres_cluster.password)
    assert took < 5


BAD_NAMES = ["", "Upper", "1st", "a-b", 'x"; DROP DATABASE cxrmesh; --', "postgres", "template1", "a" * 64]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_database_names_are_refused(postgres_cluster: LocalPostgres, bad: str) -> None:
    with pytest.raises(ValueError, match="not an allowed database name"):
        postgres_cluster.create_database(bad)
    with pytest.raises(ValueError, match="not an allowed database name"):
        postgres_cluster.drop_database(bad)


@pytest.fixture
def plain_cluster() -> Iterator[LocalPostgres]:
    """A cluster of this test's own, without TLS, so it can be stopped and started again."""
    home = cluster_home()
    cluster = LocalPostgres(home / "data", log=home / "pg.log")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_rows_survive_stop_and_a_sigint_of_the_mesh_spawned_command(plain_cluster: LocalPostgres) -> None:
    plain_cluster.start()
    assert plain_cluster.url().endswith(f":{plain_cluster.port}/cxrmesh")  # no TLS: no sslmode query
    with _connect(plain_cluster.url(), plain_cluster.password) as conn:
        conn.execute("CREATE TABLE kept (n int)")
        conn.execute("INSERT INTO kept VALUES (1), (2), (3)")
    plain_cluster.stop()
    assert not plain_cluster.ready()

    plain_cluster.init()  # idempotent: no second initdb, same password
    with plain_cluster.log.open("ab") as log:  # as `cxrmesh up` runs it: its own session, SIGINT to stop
        proc = subprocess.Popen(plain_cluster.command(), stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not plain_cluster.ready():
            assert proc.poll() is None and time.monotonic() < deadline, plain_cluster.log.read_text()[-2000:]
            time.sleep(0.05)
        with _connect(plain_cluster.url(), plain_cluster.password) as conn:
            assert conn.execute("SELECT sum(n) FROM kept").fetchone() == (6,)
            conn.execute("INSERT INTO kept VALUES (4)")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0  # the pid is the postmaster itself: SIGINT is a fast shutdown
    assert "database system is shut down" in plain_cluster.log.read_text()[-1000:]

    with plain_cluster, _connect(plain_cluster.url(), plain_cluster.password) as conn:
        assert conn.execute("SELECT sum(n) FROM kept").fetchone() == (10,)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data dir to the postgres user")
def test_a_data_dir_postgres_cannot_reach_is_named() -> None:
    home = Path(tempfile.mkdtemp(prefix="cxrmesh-pg-closed-"))  # 0700, owned by root
    try:
        with pytest.raises(PermissionError, match=str(home)):
            LocalPostgres(home / "deep" / "data").init()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_database_fixture_gives_a_working_store(database: DatabaseTarget) -> None:
    if database.engine == "sqlite":
        path = database.url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (n int)")
        return
    assert database.password and database.password not in database.url
    with _connect(database.url, database.password) as conn:
        conn.execute("CREATE TABLE t (n int)")
        assert conn.execute("SELECT current_database()").fetchone()[0].startswith("t_")
