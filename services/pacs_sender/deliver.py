"""C-STORE of one study's results to every destination, with retries, metrics and one verdict.

Every destination gets its turn even when another fails: a PACS that is down must not keep the
results from the viewer next to it. The study fails (dead letter) when any destination failed after
its retries (or refused at once); the message then comes back only by an operator's replay, and
storing again to the destinations that took it is harmless: C-STORE of the same SOP instances is
idempotent. Log lines and metric labels name the destination (its configured short name) and the
outcome, never a UID or anything of the patient.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from pydicom import Dataset

from cxrmesh.dicom.scu import Peer, RetryPolicy, StoreError, store_with_retry
from cxrmesh.runtime.kafka import PermanentError
from cxrmesh.runtime.metrics import metric
from cxrmesh.services.pacs_sender.settings import Destination, PacsSenderSettings

log = logging.getLogger(__name__)

OUTCOMES = ("sent", "retried", "failed")
# one association with a handful of objects: a second on a LAN, minutes when retries wait out an outage
SEND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
MAX_WAIT_S = 60.0  # the longest wait between two attempts (the first is ``send_backoff_s``, doubling)
JITTER = 0.2


def sent_total() -> Counter:
    return metric(
        Counter,
        "cxrmesh_pacs_sent_total",
        "Studies' results stored to a destination (sent), attempts that were retried, destinations"
        " given up on (failed), by destination name.",
        ("destination", "outcome"),
    )


def send_seconds() -> Histogram:
    return metric(
        Histogram,
        "cxrmesh_pacs_send_seconds",
        "Time to store one study's results to one destination, retries included.",
        ("destination",),
        buckets=SEND_BUCKETS,
    )


class DeliveryFailed(PermanentError):
    """At least one destination did not take the results: dead-letter with the reasons (no UIDs)."""


@dataclass(frozen=True)
class Target:
    """A destination as the sender calls it: its metric name and its DICOM peer."""

    name: str
    peer: Peer


def destination_tls(settings: PacsSenderSettings) -> ssl.SSLContext:
    """DICOM TLS to a destination: its certificate verified against the CA file, ours presented."""
    if settings.tls_ca_file is None:
        raise ValueError("a destination with tls=true needs CXRMESH_TLS_CA_FILE (the CA to verify it)")
    context = ssl.create_default_context(cafile=str(settings.tls_ca_file))
    if settings.tls_cert_file and settings.tls_key_file:
        context.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return context


def targets(settings: PacsSenderSettings) -> list[Target]:
    """The configured destinations as peers (a TLS context each one that asks for DICOM TLS)."""

    def peer(d: Destination) -> Peer:
        return Peer(d.ae_title, d.host, d.port, ssl_context=destination_tls(settings) if d.tls else None)

    return [Target(d.name, peer(d)) for d in settings.destinations]


def retry_policy(settings: PacsSenderSettings) -> RetryPolicy:
    return RetryPolicy(
        attempts=settings.send_attempts,
        first_wait_s=settings.send_backoff_s,
        max_wait_s=max(MAX_WAIT_S, settings.send_backoff_s),
        jitter=JITTER,
    )


class Sender:
    """Stores a study's datasets to each target; metrics at 0 for each destination from the start."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        calling_ae: str,
        timeout_s: float,
        policy: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.targets = list(targets)
        self.calling_ae, self.timeout_s, self.policy, self.sleep = calling_ae, timeout_s, policy, sleep
        for t in self.targets:
            for outcome in OUTCOMES:
                sent_total().labels(t.name, outcome)
            send_seconds().labels(t.name)

    @classmethod
    def from_settings(cls, settings: PacsSenderSettings) -> Sender:
        return cls(
            targets(settings),
            calling_ae=settings.ae_title,
            timeout_s=settings.send_timeout_s,
            policy=retry_policy(settings),
        )

    def send(self, datasets: Sequence[Dataset]) -> None:
        """Store ``datasets`` to every target; ``DeliveryFailed`` naming those that failed, and why."""
        failed: list[str] = []
        for target in self.targets:
            reason = self._send_one(target, datasets)
            if reason is not None:
                failed.append(f"{target.name}: {reason}")
        if failed:
            raise DeliveryFailed("PACS destination(s) did not take the results: " + "; ".join(failed))

    def _send_one(self, target: Target, datasets: Sequence[Dataset]) -> str | None:
        """One destination, retries included; the reason it failed, or None when it took them all."""
        counter = sent_total()

        def retried(*_: object) -> None:
            counter.labels(target.name, "retried").inc()
            log.warning("PACS destination %s: store failed, retrying", target.name)

        start = time.monotonic()
        try:
            attempts = store_with_retry(
                target.peer,
                datasets,
                calling_ae=self.calling_ae,
                timeout_s=self.timeout_s,
                policy=self.policy,
                sleep=self.sleep,
                on_retry=retried,
            )
        except StoreError as exc:
            counter.labels(target.name, "failed").inc()
            log.error("PACS destination %s: failed (%s)", target.name, type(exc).__name__)
            return str(exc) or type(exc).__name__
        finally:
            send_seconds().labels(target.name).observe(time.monotonic() - start)
        counter.labels(target.name, "sent").inc()
        log.info("PACS destination %s: sent (%s attempt(s))", target.name, attempts)
        return None
