"""Session fixture: one real standalone Milvus 2.3.5 per test worker, closed as in production.

The server runs with authorization on, a generated root password (``milvus_server.token``) and mutual TLS
from a throwaway local CA (``milvus_server.tls``), so tests take the code path of a real deployment that
Milvus Lite cannot (segments sealed and indexed, HNSW/IVF_FLAT, credentials, TLS). It starts only when a
test asks for it (~3 s, ~250 MB); give every test its own collection: the server lives for the session.
A missing ``milvus`` wheel is a failure, not a skip: CI installs it with the mesh-local extra.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cxrmesh.local.milvus import MilvusNotInstalledError, MilvusServer, MilvusServerError, find_milvus_package
from cxrmesh.local.pki import LocalCA


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """A standalone Milvus on loopback for this worker: ``uri``, ``token`` and ``tls`` for a CaseStore."""
    try:
        find_milvus_package()
    except MilvusNotInstalledError as exc:
        pytest.fail(f"{exc} (the server tests need it)", pytrace=False)
    home = tmp_path_factory.mktemp("milvus-server")
    server = MilvusServer(home / "data", home / "milvus.log", ca=LocalCA(home / "pki"))
    try:
        server.__enter__()
    except MilvusServerError as exc:
        tail = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
        pytest.fail(f"standalone Milvus did not start: {exc}\n{tail}", pytrace=False)
    try:
        yield server
    finally:
        server.stop(grace_s=3)  # with collections loaded it rarely stops by itself: then it is killed
