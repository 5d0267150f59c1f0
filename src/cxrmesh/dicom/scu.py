"""Storage SCU: C-STORE a few datasets to one Storage SCP (a PACS), with bounded retries.

Why its own module: the PACS sender (results back to the hospital) and the tests store the same way,
and the one decision that matters, whether a failure is worth another attempt, is made here once:

* transient (retry): the peer cannot be reached, times out, aborts, rejects the association as
  transient, answers "out of resources" (0xA7xx) or does not answer;
* permanent (dead letter at once): the peer rejects the association as permanent (e.g. our AE title
  is unknown to it, or its called AE title is not the one we called), accepts no presentation context
  for a dataset's SOP class and transfer syntax, or answers any other failure status.

Re-sending a whole batch after a transient failure is safe: a C-STORE of the same SOP instance
is idempotent at the PACS. Warning statuses (0xB000...) mean the instance was stored.

Logs name AE titles and outcomes only: no UIDs, no identifiers (pynetdicom itself logs UIDs at
DEBUG level only).
"""

from __future__ import annotations

import copy
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts in one association request
_REJECTED_PERMANENT = 0x01
_REJECTED_TRANSIENT = 0x02


@dataclass(frozen=True)
class Peer:
    """One Storage SCP: its AE title (the Called AE), address, and TLS context (None: plain TCP)."""

    ae_title: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded, exponential, jittered waits between attempts.

    The i-th wait is ``min(max_wait_s, first_wait_s * 2**i)`` shortened by up to ``jitter`` of itself
    (at random), so it never exceeds ``max_wait_s`` and senders that failed together spread out."""

    attempts: int = 5
    first_wait_s: float = 1.0
    max_wait_s: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.first_wait_s < 0 or self.max_wait_s < self.first_wait_s:
            raise ValueError("need 0 <= first_wait_s <= max_wait_s")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def waits(self, rng: random.Random | None = None) -> list[float]:
        """The ``attempts - 1`` waits, in seconds, before attempts 2, 3, ..."""
        rng = rng or random.Random()
        out = []
        for i in range(self.attempts - 1):
            base = min(self.max_wait_s, self.first_wait_s * 2.0**i)
            out.append(base * (1.0 - self.jitter * rng.random()))
        return out


class StoreError(Exception):
    """A store that did not complete; ``reason`` is person-readable and names no identifier."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TransientStoreError(StoreError):
    """Worth another attempt later: the peer was unreachable, busy, or went away."""


class PermanentStoreError(StoreError):
    """Another attempt would fail the same way; ``status`` is the peer's C-STORE status, if any."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.status = status


def _syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return UID(syntax) if syntax else ExplicitVRLittleEndian


def _with_syntax(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` itself when it names its transfer syntax; else a shallow copy encoded as explicit VR LE
    (the caller's dataset is left as it was)."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return ds
    out = copy.copy(ds)
    out.file_meta = FileMetaDataset()
    if meta is not None:
        out.file_meta.update(meta)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return out


def contexts_for(datasets: Sequence[pydicom.Dataset]) -> list[PresentationContext]:
    """One context per (SOP class, transfer syntax): each dataset's own syntax and explicit VR LE.

    Separate contexts, not one context listing both, so that the peer may accept the dataset's own
    (possibly compressed) syntax next to explicit VR LE instead of choosing one of them."""
    pairs: dict[tuple[str, str], None] = {}
    for ds in datasets:
        sop_class = getattr(ds, "SOPClassUID", None)
        if not sop_class:
            raise PermanentStoreError("a dataset has no SOP Class UID")
        pairs[(str(sop_class), str(_syntax(ds)))] = None
        pairs[(str(sop_class), str(ExplicitVRLittleEndian))] = None
    if len(pairs) > MAX_CONTEXTS:
        raise PermanentStoreError(f"{len(pairs)} presentation contexts are more than one association allows")
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]


def _refused(assoc: Association, peer: Peer) -> StoreError:
    """Why ``associate`` did not give an established association."""
    where = f"storage SCP {peer.ae_title}"
    if assoc.is_rejected:
        result = getattr(assoc.acceptor.primitive, "result", None)
        reason = getattr(assoc.acceptor.primitive, "reason_str", "unknown reason")
        if result == _REJECTED_TRANSIENT:
            return TransientStoreError(f"{where} rejected the association for now ({reason})")
        return PermanentStoreError(f"{where} rejected the association ({reason})")
    primitive = assoc.acceptor.primitive
    if getattr(primitive, "result", None) == 0 and not assoc.accepted_contexts:
        return PermanentStoreError(f"{where} accepted no presentation context")
    if assoc.is_aborted:
        return TransientStoreError(f"{where} could not be reached or aborted the association")
    return TransientStoreError(f"{where} did not answer the association request")


def _check_status(reply: pydicom.Dataset, peer: Peer) -> None:
    """Raise unless the C-STORE reply says stored (success or warning)."""
    where = f"storage SCP {peer.ae_title}"
    status = getattr(reply, "Status", None)
    if status is None:
        raise TransientStoreError(f"{where} sent no C-STORE reply (timeout or connection lost)")
    status = int(status)
    if code_to_category(status) in ("Success", "Warning"):  # warnings (0xB000...): stored all the same
        return
    if 0xA700 <= status <= 0xA7FF:
        raise TransientStoreError(f"{where} is out of resources (status 0x{status:04X})")
    if 0xA900 <= status <= 0xA9FF:
        raise PermanentStoreError(f"{where}: dataset does not match SOP class (0x{status:04X})", status)
    if 0xC000 <= status <= 0xCFFF:
        raise PermanentStoreError(f"{where} cannot understand the dataset (0x{status:04X})", status)
    raise PermanentStoreError(f"{where} refused the dataset (status 0x{status:04X})", status)


def store(peer: Peer, datasets: Sequence[pydicom.Dataset], *, calling_ae: str, timeout_s: float = 30) -> None:
    """C-STORE every dataset to ``peer`` in one association; raise on the first failure.

    The association is released (or, when it broke, already gone) whatever happens."""
    if not datasets:
        return
    sendable = [_with_syntax(ds) for ds in datasets]
    contexts = contexts_for(sendable)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    tls = (peer.ssl_context, peer.host) if peer.ssl_context is not None else None
    try:
        assoc = ae.associate(peer.host, peer.port, contexts=contexts, ae_title=peer.ae_title, tls_args=tls)
    except ValueError as err:  # an AE title pynetdicom refuses to send: no retry can fix it
        raise PermanentStoreError(f"cannot call storage SCP {peer.ae_title}: {err}") from err
    if not assoc.is_established:
        error = _refused(assoc, peer)
        log.warning("store %s -> %s: %s", calling_ae, peer.ae_title, type(error).__name__)
        raise error
    try:
        for ds in sendable:
            try:
                reply = assoc.send_c_store(ds)
            except ValueError as err:  # no accepted context for this SOP class/syntax, or not encodable
                raise PermanentStoreError(
                    f"storage SCP {peer.ae_title} accepted no presentation context for "
                    f"{UID(ds.SOPClassUID).name} in {_syntax(ds).name}"
                ) from err
            except RuntimeError as err:  # the association broke between two datasets
                raise TransientStoreError(f"association with storage SCP {peer.ae_title} was lost") from err
            _check_status(reply, peer)
    except StoreError as error:
        log.warning("store %s -> %s: %s", calling_ae, peer.ae_title, type(error).__name__)
        raise
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("store %s -> %s: %d instance(s) stored", calling_ae, peer.ae_title, len(sendable))


def store_with_retry(
    peer: Peer,
    datasets: Sequence[pydicom.Dataset],
    *,
    calling_ae: str,
    timeout_s: float = 30,
    policy: RetryPolicy = RetryPolicy(),  # frozen: a shared default is safe
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, StoreError], None] | None = None,
) -> int:
    """:func:`store`, re-sending everything after a transient failure, at most ``policy.attempts``
    times; returns the attempts used. A permanent failure is raised at once, the last transient one
    after the last attempt. ``on_retry(attempt, error)`` is called before each wait."""
    waits = policy.waits()
    for attempt in range(1, policy.attempts + 1):
        try:
            store(peer, datasets, calling_ae=calling_ae, timeout_s=timeout_s)
            return attempt
        except TransientStoreError as error:
            if attempt == policy.attempts:
                log.warning("store %s -> %s: gave up after %d attempt(s)", calling_ae, peer.ae_title, attempt)
                raise
            if on_retry is not None:
                on_retry(attempt, error)
            sleep(waits[attempt - 1])
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
