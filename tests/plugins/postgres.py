"""Fixtures for tests of the mesh's store on SQLite and on a real PostgreSQL 15 (``LocalPostgres``).

One cluster per test session (per xdist worker), started on first use, with TLS from a throwaway CA
and a password, as closed as a deployment; every test gets its own database in it, dropped afterwards.
``database`` runs a test on both engines; ``postgres_database`` on PostgreSQL only. A machine without
PostgreSQL FAILS these tests rather than skipping them: CI installs it (``make test``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cxrmesh.local.pki import LocalCA, server_identity
from cxrmesh.local.postgres import LocalPostgres, PostgresNotFound, find_bindir


@dataclass(frozen=True)
class DatabaseTarget:
    """Where a test's store lives: engine ``sqlite`` or ``postgres``, a URL without secrets, the password."""

    engine: str
    url: str
    password: str


def cluster_home() -> Path:
    """A fresh directory the ``postgres`` user can enter (pytest's tmp root is 0700 to root: it cannot)."""
    home = Path(tempfile.mkdtemp(prefix="cxrmesh-pg-"))
    os.chmod(home, 0o711)  # enter only; everything inside is 0700/0600
    return home


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[LocalPostgres]:
    """A started cluster with TLS (verify-full against a throwaway CA) for this session or xdist worker."""
    try:
        find_bindir()
    except PostgresNotFound as exc:
        pytest.fail(str(exc), pytrace=False)
    home = cluster_home()
    try:
        tls = LocalCA(home / "pki").issue(server_identity("postgres"))  # SANs: localhost, 127.0.0.1, ::1
        with LocalPostgres(home / "data", tls=tls) as cluster:
            yield cluster
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _fresh_database(cluster: LocalPostgres) -> Iterator[DatabaseTarget]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = cluster.create_database(name)
    try:
        yield DatabaseTarget("postgres", url, cluster.password)
    finally:
        cluster.drop_database(name)  # WITH (FORCE): a leaked connection does not keep it alive


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseTarget]:
    """The test runs twice: on a SQLite file, and on its own database in the session's PostgreSQL."""
    if request.param == "sqlite":
        yield DatabaseTarget("sqlite", f"sqlite:///{tmp_path}/state.sqlite", "")
        return
    yield from _fresh_database(request.getfixturevalue("postgres_cluster"))


@pytest.fixture
def postgres_database(postgres_cluster: LocalPostgres) -> Iterator[DatabaseTarget]:
    """Its own database in the session's PostgreSQL, for tests that need PostgreSQL specifically."""
    yield from _fresh_database(postgres_cluster)
