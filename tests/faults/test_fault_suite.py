"""`make test-faults`: the local mesh of real processes loses nothing acknowledged whatever is killed.

One mesh for the module: PostgreSQL (so the database can be killed), the standalone Milvus server,
the durable broker (Tansu on S3 storage), tritonserver, and every service, the embedding service
with two replicas (so one replica of a replicated service is killed too). In order:

1. the broker is SIGKILLed with messages in flight between stages: every study still completes;
2. Triton is down for 30 s: the studies sent meanwhile complete after it returns, none is
   dead-lettered, and a caller that needs Triton gets UNAVAILABLE at once, not a hang;
3. 500 studies (``CXRMESH_FAULT_STUDIES``) flow while the seeded driver kills each process once;
   every acknowledged study ends complete or failed with a reason, none lost, no duplicate row,
   none twice in Milvus; the table goes to out/faults and docs/reliability.md.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from faults.driver import FaultDriver, Sender, remake, retrying, settled
from faults.report import write
from plugins.postgres import cluster_home

from cxrmesh.client import manifest_headers
from cxrmesh.local.mesh import SERVICES, Mesh, MeshState
from cxrmesh.search.store import CaseStore
from cxrmesh.services.studyview.store import study_keys
from cxrmesh.v1 import search_pb2, search_pb2_grpc

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
STUDIES = int(os.environ.get("CXRMESH_FAULT_STUDIES", "500"))
SEED = int(os.environ.get("CXRMESH_FAULT_SEED", str(int(time.time()) % 100_000)))
REPLICATED = "embedding"
ENV = {
    # a killed consumer's partitions move on within seconds, not the default 10 s
    "CXRMESH_KAFKA_SESSION_TIMEOUT_MS": "3000",
    "CXRMESH_KAFKA_HEARTBEAT_MS": "500",
    # the safety net: a study with no verdict two minutes after ingestion is re-driven from the outbox
    # (above this machine's usual backlog, so that queued studies are rarely re-driven; 300 s by default)
    "CXRMESH_RECONCILE_AFTER_S": "120",
    "CXRMESH_RECONCILE_INTERVAL_S": "10",
}


@pytest.fixture(scope="module")
def corpus_files(corpus: Path) -> list[tuple[bytes, object]]:
    return [(Path(p).read_bytes(), h) for p, h in sorted(manifest_headers(corpus / "manifest.jsonl").items())]


def studies(files: list[tuple[bytes, object]], n: int) -> list[tuple[bytes, object]]:
    return [(remake(files[i % len(files)][0]), files[i % len(files)][1]) for i in range(n)]


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[Mesh, MeshState]]:
    home = cluster_home()  # PostgreSQL runs as its own user: pytest's tmp root is closed to it
    m = Mesh(
        home,
        database="postgres",
        milvus="server",
        broker_storage="s3",
        service_replicas={REPLICATED: 2},
        env=ENV,
    )
    state = m.up(timeout_s=300)
    try:
        yield m, state
    finally:
        m.down()
        # the processes' logs outlive the mesh, for a failed run's post-mortem (out/ is not committed)
        kept = ROOT / "out" / "faults" / "logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(Path(home) / "logs", kept, dirs_exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)


def _all_view_keys(state: MeshState) -> list[str]:
    db = state.database()
    try:
        return study_keys(db)
    finally:
        db.close()


def wait_settled(state: MeshState, keys: list[str], timeout_s: float) -> tuple[set[str], dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        done, failed = retrying(lambda: settled(state, keys))  # type: ignore[misc]
        if len(done) + len(failed) >= len(keys) or time.monotonic() > deadline:
            return done, failed
        time.sleep(1)


def send_all(state: MeshState, batch: list[tuple[bytes, object]], interval_s: float = 0.1) -> Sender:
    sender = Sender(state, batch, interval_s)
    sender.start()
    return sender


def test_broker_killed_with_messages_in_flight(mesh, corpus_files):
    m, state = mesh
    sender = send_all(state, studies(corpus_files, 30), interval_s=0.2)
    while len(sender.acked_keys()) < 10:  # the first studies are between stages now
        time.sleep(0.1)
    m.kill("broker")
    time.sleep(2)
    m.restart("broker")
    assert sender.done.wait(300)
    keys = sender.acked_keys()
    assert len(keys) == 30, sender.refused
    done, failed = wait_settled(state, keys, 420)
    assert not failed, failed
    assert done == set(keys), f"{len(set(keys) - done)} studies never completed after the broker restart"


def test_triton_down_for_30_s(mesh, corpus_files):
    m, state = mesh
    m.kill("triton")
    down_at = time.monotonic()
    sender = send_all(state, studies(corpus_files, 20), interval_s=0.5)

    # a caller that needs Triton now: a fast, clear refusal, not a hang
    stub = search_pb2_grpc.SearchServiceStub(state.channel("search"))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.FindSimilar(search_pb2.FindSimilarRequest(dicom=corpus_files[0][0], k=3), timeout=60)
    waited = time.monotonic() - started
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "triton" in (err.value.details() or "").lower() or "model server" in (err.value.details() or "")
    assert waited < 20, f"the caller waited {waited:.0f} s for a refusal"

    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    m.restart("triton")
    assert sender.done.wait(300)
    keys = sender.acked_keys()
    assert len(keys) == 20, sender.refused
    done, failed = wait_settled(state, keys, 420)
    assert not failed, f"dead-lettered while Triton was down: {failed}"
    assert done == set(keys)


def test_every_component_killed_under_load(mesh, corpus_files):
    m, state = mesh
    targets = [(name, 0) for name in SERVICES] + [(REPLICATED, 1)]
    targets += [("triton", 0), ("broker", 0), ("s3", 0), ("milvus", 0), ("postgres", 0)]
    driver = FaultDriver(m, state, targets, seed=SEED)
    print(f"fault suite seed {SEED}: replay with CXRMESH_FAULT_SEED={SEED}")
    batch = studies(corpus_files, STUDIES)
    out = driver.run(batch, interval_s=float(os.environ.get("CXRMESH_FAULT_INTERVAL_S", "0.9")))

    keys = [a.key for a in out.acked]
    every = retrying(lambda: _all_view_keys(state))  # this run's studies and the tests' before it
    with CaseStore(state.milvus, token=state.milvus_token(), index="HNSW", tls=state.milvus_tls()) as store:
        found = store.get(every)  # one record per distinct study key
        out.milvus_entities = store.count()
    complete_keys = retrying(lambda: settled(state, keys))[0]  # type: ignore[index]
    extra = {
        "mesh": "PostgreSQL, Milvus server (HNSW), Tansu on S3 storage (moto), tritonserver CPU, "
        f"every service once and {REPLICATED} twice; "
        f"reconciler re-drives after {ENV['CXRMESH_RECONCILE_AFTER_S']} s",
        "Milvus": f"{out.milvus_entities} entities for {len(found)} distinct studies indexed "
        f"(this run and the two tests before it): {out.milvus_entities - len(found)} duplicates; "
        f"{len(set(complete_keys) - set(found))} complete studies missing from the index",
    }
    text = write(out, extra, ROOT / "out" / "faults", ROOT / "docs" / "reliability.md")
    print(text)

    assert len(keys) == len(set(keys)), "ingestion acknowledged one study under two keys"
    assert not out.lost, f"{len(out.lost)} acknowledged studies neither complete nor failed (seed {SEED})"
    assert out.duplicate_rows == 0
    assert all(reason for reason in out.failed.values()), "a failed study without a reason"
    assert set(complete_keys) <= set(found), "complete in the study view but not in Milvus"
    assert out.milvus_entities == len(found), "a study indexed twice in Milvus"
    assert not any(k.error for k in out.kills), [k.error for k in out.kills if k.error]
