"""Model-health and SLI metrics where the real parts matter: replicas sharing PostgreSQL, Milvus, TLS.

(Not ``test_model_health_metrics.py``: tests/unit has that name, and the suite's folders are not
packages, so pytest cannot collect two test modules of one name in one run.)

* Two study view replicas record a study's last two stages at the same moment, on SQLite and on
  PostgreSQL: each study's time to verdict is observed exactly once, and never again on re-delivery.
* The search service's FindSimilar on a real Milvus Lite index observes the cosine distance to the
  nearest case, and nothing when there is no hit.
* A ServiceRuntime serving mutual TLS sets the certificate-expiry gauge at start, its /metrics scrape
  (HTTPS with a client certificate) shows it with every model-health metric; plaintext sets none.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from plugins.database import open_db
from plugins.postgres import DatabaseTarget
from prometheus_client import REGISTRY

import cxrmesh.services.quantification.service  # noqa: F401  (creates its metrics, as the service does)
from cxrmesh.contracts import topics
from cxrmesh.contracts.tensors import EMBED_DIM
from cxrmesh.local.pki import OPERATOR, LocalCA, server_identity
from cxrmesh.runtime import metrics
from cxrmesh.runtime.grpc_server import ServiceRuntime
from cxrmesh.runtime.kafka import Event
from cxrmesh.runtime.settings import ServiceSettings
from cxrmesh.runtime.tls import TlsFiles, certificate_expiry, https_context
from cxrmesh.search.records import CaseRecord
from cxrmesh.search.store import CaseStore
from cxrmesh.services.search.servicer import SearchServicer
from cxrmesh.services.search.settings import SearchSettings
from cxrmesh.services.studyview.service import ViewWorker
from cxrmesh.services.studyview.store import ViewStore
from cxrmesh.v1 import events_pb2, search_pb2

COMPLETE = "cxrmesh_study_complete_seconds_count"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def stage_events(key: str, ingested_at: float) -> list[Event]:
    """ingested, embedded, segmented, quantified, prognosis: each stage's event for ``key``."""
    ts = events_pb2.StudyIngested().ingested_at
    ts.FromNanoseconds(int(ingested_at * 1e9))
    msgs = [
        (topics.STUDY_INGESTED, events_pb2.StudyIngested(study_key=key, ingested_at=ts)),
        (topics.STUDY_EMBEDDED, events_pb2.StudyEmbedded(study_key=key, ingested_at=ts)),
        (topics.STUDY_SEGMENTED, events_pb2.StudySegmented(study_key=key, ingested_at=ts)),
        (topics.STUDY_QUANTIFIED, events_pb2.StudyQuantified(study_key=key, ingested_at=ts)),
        (topics.STUDY_PROGNOSIS, events_pb2.PrognosisResult(study_key=key)),
    ]
    return [Event(topic, 0, i, key, m, {}) for i, (topic, m) in enumerate(msgs)]


# ----------------------------------------------------------------------------- two view replicas


def test_two_replicas_settling_studies_together_observe_each_once(database: DatabaseTarget) -> None:
    stores = [ViewStore(open_db(database)), ViewStore(open_db(database))]
    workers = [ViewWorker(s) for s in stores]
    n = 15
    studies = [stage_events(f"race-{i}", time.time() - 3.0) for i in range(n)]
    before = sample(COMPLETE, outcome="complete")
    try:
        for evs in studies:
            assert workers[0](evs[:3]) == [None] * 3
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def last_stage(worker: ViewWorker, index: int) -> None:
            try:
                for evs in studies:
                    start.wait(timeout=30)
                    assert worker([evs[index]]) == [None]
            except BaseException as exc:  # surfaced below: a thread's assert does not fail the test
                errors.append(exc)

        threads = [
            threading.Thread(target=last_stage, args=(workers[0], 3)),  # quantified on one replica
            threading.Thread(target=last_stage, args=(workers[1], 4)),  # prognosis on the other
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert sample(COMPLETE, outcome="complete") == before + n  # none missed, none twice

        for worker in workers:  # everything re-delivered to both replicas
            for evs in studies:
                assert worker(evs) == [None] * len(evs)
        assert sample(COMPLETE, outcome="complete") == before + n
    finally:
        for s in stores:
            s.close()
            s.db.close()


# ----------------------------------------------------------------------------- search


@pytest.fixture
def search(tmp_path: Path) -> Iterator[tuple[SearchServicer, CaseStore]]:
    from milvus_lite.server_manager import server_manager_instance

    settings = SearchSettings(data_dir=tmp_path, deid_secret="integration-pseudonym-key-0123456789abcd")
    db = tmp_path / "cases.db"
    store = CaseStore(str(db), dim=EMBED_DIM, consistency="Strong")
    store.ensure_collection()
    yield SearchServicer(settings, store, triton=None), store  # type: ignore[arg-type]  # by key: no Triton
    store.close()
    server_manager_instance.release_server(str(db))


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_find_similar_observes_the_cosine_distance_to_the_nearest_case(search) -> None:
    servicer, store = search
    base = np.zeros(EMBED_DIM, np.float32)
    base[0] = 1.0
    near, far = base.copy(), base.copy()
    near[1], far[0], far[2] = 0.5, 0.2, 1.0
    store.upsert(
        [
            CaseRecord("q", "p-q", unit(base), "7"),
            CaseRecord("near", "p-near", unit(near), "7"),
            CaseRecord("far", "p-far", unit(far), "7"),
            CaseRecord("alone", "p-alone", unit(base), "8"),  # the only case of its model version
        ]
    )
    name = "cxrmesh_neighbour_distance"
    count, total = sample(f"{name}_count"), sample(f"{name}_sum")
    reply = servicer.FindSimilar(search_pb2.FindSimilarRequest(study_key="q", k=2), None)
    assert [c.study_key for c in reply.cases] == ["near", "far"]
    expected = 1.0 - float(unit(base) @ unit(near))
    assert sample(f"{name}_count") == count + 1
    assert sample(f"{name}_sum") - total == pytest.approx(expected, abs=1e-4)
    assert sample(f"{name}_bucket", le="0.15") - sample(f"{name}_bucket", le="0.1") >= 1  # 0.106

    empty = servicer.FindSimilar(search_pb2.FindSimilarRequest(study_key="alone", k=2), None)
    assert not empty.cases and sample(f"{name}_count") == count + 1  # no hit: nothing to observe


# ----------------------------------------------------------------------------- TLS expiry and the scrape


def runtime_settings(tmp_path: Path, files: TlsFiles | None) -> ServiceSettings:
    tls = {"tls_cert_file": files.cert, "tls_key_file": files.key, "tls_ca_file": files.ca} if files else {}
    return ServiceSettings(
        service="metrics-test",
        grpc_port=0,
        metrics_port=0,
        log_format="text",
        data_dir=tmp_path,
        insecure=files is None,
        **tls,
    )


def test_certificate_expiry_is_set_at_start_with_tls_only(tmp_path: Path) -> None:
    gauge = "cxrmesh_tls_certificate_expiry_timestamp_seconds"
    metrics.tls_certificate_expiry().clear()
    for make in (metrics.study_complete_seconds, metrics.lung_area_fraction, metrics.embedding_norm):
        make()  # created by their services at import or start; here, without those services
    metrics.neighbour_distance(), metrics.ingest_accepted()
    plain = ServiceRuntime(runtime_settings(tmp_path, None))
    plain.start()
    plain.stop()
    assert REGISTRY.get_sample_value(gauge, {"certificate": "server"}) is None  # plaintext: no certificate

    ca = LocalCA(tmp_path / "pki")
    files = ca.issue(server_identity("metrics-test"))
    served = ServiceRuntime(runtime_settings(tmp_path, TlsFiles(files.cert, files.key, files.ca)))
    served.start()
    try:
        expected = certificate_expiry(TlsFiles(files.cert, files.key, files.ca))
        assert expected["server"] == ca.expiry("metrics-test").timestamp()
        assert {c: sample(gauge, certificate=c) for c in ("server", "ca")} == expected
        client = ca.issue(OPERATOR)
        url = f"https://127.0.0.1:{served.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5, context=https_context(client)).read().decode()
    finally:
        served.stop()
    for line in (
        f'{gauge}{{certificate="server"}}',
        f'{gauge}{{certificate="ca"}}',
        "# TYPE cxrmesh_study_complete_seconds histogram",
        'cxrmesh_study_complete_seconds_count{outcome="failed"}',
        'cxrmesh_lung_area_fraction_bucket{le="0.5",side="left"}',
        'cxrmesh_landmark_confidence_count{landmark="left_hilum"}',
        'cxrmesh_landmark_implausible_total{problem="carina_not_above_hilum"}',
        'cxrmesh_landmark_implausible_total{problem="other"}',
        "# TYPE cxrmesh_embedding_norm histogram",
        "# HELP cxrmesh_neighbour_distance Cosine distance",
        "# TYPE cxrmesh_ingest_accepted_total counter",
    ):
        assert line in text, line
