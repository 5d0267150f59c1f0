"""The fault driver: studies flow into a running local mesh while its processes are SIGKILLed one at
a time, at seeded random moments, and started again; then it checks that nothing acknowledged was lost
or doubled and measures how long the mesh took to be whole again after each kill.

Why a driver and not a test per component: the faults that lose data are the ones that land while
work is in flight somewhere else, so the load never stops while a component is down. Every choice
(kill order, the moment of each kill, how long the process stays down) comes from one seed, printed
with the results, so a failing run can be replayed (``CXRMESH_FAULT_SEED``).
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from cxrmesh.client import ingest_bytes
from cxrmesh.local.mesh import Mesh, MeshState, grpc_health
from cxrmesh.runtime.db.schema import stage_results, studies, view_stages
from cxrmesh.v1 import ingestion_pb2_grpc, studyview_pb2

STAGE_COUNT = 5  # ingested, embedded, segmented, quantified, prognosis (services/studyview/store.py)
RESULT_SERVICES = ("embedding", "segmentation", "quantification", "prognosis")


def remake(data: bytes) -> bytes:
    """The same image as a new study (new study, series and instance UIDs)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class Ack:
    key: str
    at: float  # monotonic time of the acknowledgement
    tries: int  # ingest calls until one was acknowledged


@dataclass
class KillRecord:
    component: str  # e.g. "broker", "embedding[1]"
    at: float
    down_s: float
    healthy_s: float = float("nan")  # kill -> every process healthy again
    drained_s: float = float("nan")  # kill -> the last study in flight at the kill settled
    acked_before: int = 0
    in_flight: int = 0  # acknowledged before the kill, settled after it
    wall: float = 0.0  # time.time() of the kill (the study view's clock)
    acked_keys: tuple[str, ...] = ()
    error: str = ""


@dataclass
class Outcome:
    seed: int
    sent: int = 0
    acked: list[Ack] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)  # gRPC codes of non-retryable ingest errors
    kills: list[KillRecord] = field(default_factory=list)
    complete: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # key -> first reason
    lost: list[str] = field(default_factory=list)
    duplicate_rows: int = 0
    milvus_entities: int = 0
    redelivered: dict[str, int] = field(default_factory=dict)  # service -> result writes beyond one a study
    redriven: int = 0  # re-drives by the reconciler (studies.redrives, summed)
    wall_s: float = 0.0


class Sender:
    """Sends studies at a steady pace through ingestion, retrying a refused or unanswered call the way
    a modality does (ingestion is idempotent on the study UID, so a retry after a lost reply is safe)."""

    def __init__(self, state: MeshState, studies: Sequence[tuple[bytes, object]], interval_s: float):
        self.state, self.studies, self.interval_s = state, studies, interval_s
        self.acks: list[Ack] = []
        self.refused: Counter = Counter()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sender", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def acked_keys(self) -> list[str]:
        with self.lock:
            return [a.key for a in self.acks]

    def _run(self) -> None:
        endpoints = self.state.endpoints("ingestion")
        channels = [self.state.channel("ingestion", r) for r in range(len(endpoints))]
        try:
            for i, (data, header) in enumerate(self.studies):
                started = time.monotonic()
                ack = self._send(channels, i, data, header)
                if ack is not None:
                    with self.lock:
                        self.acks.append(ack)
                time.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))
        finally:
            for ch in channels:
                ch.close()
            self.done.set()

    def _send(self, channels: list[grpc.Channel], i: int, data: bytes, header: object) -> Ack | None:
        tries, wait = 0, 0.5
        while True:
            tries += 1
            stub = ingestion_pb2_grpc.IngestionServiceStub(channels[(i + tries) % len(channels)])
            try:
                reply = ingest_bytes(stub, data, header, timeout_s=30)
                return Ack(reply.study_key, time.monotonic(), tries)
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    with self.lock:
                        self.refused[exc.code().name] += 1
                    return None
            time.sleep(wait)
            wait = min(5.0, wait * 2)


def settled(state: MeshState, keys: Sequence[str]) -> tuple[set[str], dict[str, str]]:
    """(complete keys, failed key -> reason) among ``keys``, read from the study view's table.

    Complete: all five stages done. Failed: every stage settled and at least one failed."""
    s = view_stages.c
    done, failed = set(), {}
    db = state.database()
    try:
        with db.read() as conn:
            rows = conn.execute(select(s.study_key, s.stage, s.state, s.reason)).all()
    finally:
        db.close()
    by_key: dict[str, list[tuple[int, str]]] = {}
    for key, _stage, st, reason in rows:
        by_key.setdefault(key, []).append((st, reason))
    wanted = set(keys)
    for key, stages in by_key.items():
        if key not in wanted or len(stages) < STAGE_COUNT:
            continue
        states = {st for st, _ in stages}
        if states == {studyview_pb2.STAGE_DONE}:
            done.add(key)
        elif states <= {studyview_pb2.STAGE_DONE, studyview_pb2.STAGE_FAILED}:
            failed[key] = next(r for st, r in stages if st == studyview_pb2.STAGE_FAILED)
    return done, failed


def retrying(what: Callable[[], object], timeout_s: float = 120) -> object:
    """``what()``, again while the database it reads is restarting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return what()
        except SQLAlchemyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def unhealthy(mesh: Mesh) -> list[str]:
    """The processes of the mesh not serving (stopped, or a service's health NOT_SERVING)."""
    return [
        f"{row['name']} {row['health']}"
        for row in mesh.status()
        if row["health"] not in ("SERVING", "RUNNING")
    ]


class FaultDriver:
    """Kills each of ``targets`` once, in a seeded order at seeded moments, while a Sender runs."""

    def __init__(self, mesh: Mesh, state: MeshState, targets: Sequence[tuple[str, int]], seed: int):
        self.mesh, self.state, self.seed = mesh, state, seed
        self.random = random.Random(seed)
        self.targets = list(targets)
        self.random.shuffle(self.targets)

    def run(
        self,
        studies: Sequence[tuple[bytes, object]],
        interval_s: float,
        gap_s: tuple[float, float] = (5, 15),
        down_s: tuple[float, float] = (1, 5),
        drain_timeout_s: float = 600,
        log: Callable[[str], None] = print,
    ) -> Outcome:
        start = time.monotonic()
        out = Outcome(seed=self.seed, sent=len(studies))
        sender = Sender(self.state, studies, interval_s)
        sender.start()
        for name, replica in self.targets:
            time.sleep(self.random.uniform(*gap_s))
            label = name if replica == 0 and not self._replicated(name) else f"{name}[{replica}]"
            rec = KillRecord(label, time.monotonic() - start, self.random.uniform(*down_s))
            rec.acked_keys = tuple(sender.acked_keys())
            rec.acked_before, rec.wall = len(rec.acked_keys), time.time()
            killed = time.monotonic()
            log(f"t={rec.at:6.1f}s kill -9 {label} ({rec.acked_before} acknowledged so far)")
            self.mesh.kill(name, replica)
            time.sleep(rec.down_s)
            try:
                self.mesh.restart(name, replica, timeout_s=300)
                while bad := unhealthy(self.mesh):
                    time.sleep(0.5)
                    if time.monotonic() - killed > 180:
                        raise TimeoutError(f"not healthy 180 s after the restart: {', '.join(bad)}")
                rec.healthy_s = time.monotonic() - killed
            except Exception as exc:  # recorded and reported; the checks at the end decide
                rec.error = f"{type(exc).__name__}: {exc}"
            log(f"         {label}: healthy after {rec.healthy_s:.1f} s")
            out.kills.append(rec)
        sender.done.wait()
        keys = sender.acked_keys()
        self._drain(keys, time.monotonic() + drain_timeout_s)
        out.acked, out.refused = list(sender.acks), sender.refused
        self._account(out, keys)
        out.wall_s = time.monotonic() - start
        return out

    def _replicated(self, name: str) -> bool:
        return len([p for p in self.state.procs if p.name == name]) > 1

    def _drain(self, keys: Sequence[str], deadline: float) -> None:
        while True:
            done, failed = retrying(lambda: settled(self.state, keys))  # type: ignore[misc]
            if len(done) + len(failed) >= len(set(keys)) or time.monotonic() > deadline:
                return
            time.sleep(1)

    def _account(self, out: Outcome, keys: Sequence[str]) -> None:
        done, failed = retrying(lambda: settled(self.state, keys))  # type: ignore[misc]
        out.complete, out.failed = len(done), failed
        out.lost = sorted(set(keys) - done - set(failed))
        db = self.state.database()
        try:
            with db.read() as conn:
                r, s, v = stage_results.c, studies.c, view_stages.c
                mine = r.study_key.in_(keys)
                rows = conn.execute(
                    select(
                        r.service, func.count(), func.count(r.study_key.distinct()), func.sum(r.deliveries)
                    )
                    .where(mine)
                    .group_by(r.service)
                ).all()
                out.duplicate_rows = sum(n - distinct for _, n, distinct, _ in rows)
                out.redelivered = {service: int(writes) - int(n) for service, n, _, writes in rows}
                out.redriven = int(
                    conn.execute(
                        select(func.coalesce(func.sum(s.redrives), 0)).where(s.study_key.in_(keys))
                    ).scalar_one()
                )
                settled_at = dict(
                    conn.execute(
                        select(v.study_key, func.max(v.updated_at))
                        .where(v.study_key.in_(keys))
                        .group_by(v.study_key)
                    ).all()
                )
        finally:
            db.close()
        for rec in out.kills:  # in flight at the kill: acknowledged before it, settled after it
            after = [settled_at[k] for k in rec.acked_keys if settled_at.get(k, 0) > rec.wall]
            rec.in_flight = len(after)
            rec.drained_s = max(after) - rec.wall if after else 0.0


def health_of(state: MeshState, name: str, replica: int = 0) -> str:
    return grpc_health(state.endpoint(name, replica), 2.0, state.tls())
