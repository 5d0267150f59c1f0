"""The Storage SCU (cxrmesh.dicom.scu) against real SCPs: which failures are retried, which are not.

Why real peers: what matters is how a peer's refusals (association rejected, no presentation context,
a failure status, nobody listening, a TLS handshake) are sorted into "try again" and "dead letter",
so each case is a real association: Debian's Orthanc, and pynetdicom SCPs in a thread that answer
what the test asks for (0xA700 out of resources, 0xC000 cannot understand, a transient rejection).
"""

from __future__ import annotations

import io
import itertools
import random
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event

from cxrmesh.dicom.scu import (
    Peer,
    PermanentStoreError,
    RetryPolicy,
    StoreError,
    TransientStoreError,
    store,
    store_with_retry,
)
from cxrmesh.local.orthanc import LocalOrthanc
from cxrmesh.local.pki import Identity, LocalCA
from cxrmesh.local.ports import free_port

CALLING = "SCUTEST"
TIMEOUT_S = 15
NO_WAIT = RetryPolicy(attempts=3, first_wait_s=0, max_wait_s=0, jitter=0)


def rg1(name: str = "RG1_UNCR.dcm") -> pydicom.Dataset:
    """A real CR from pydicom-data, as a new instance (its own SOP Instance UID)."""
    path = get_testdata_file(name)
    assert path, f"pydicom-data's {name} is missing (a test dependency in pyproject.toml)"
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    pacs = LocalOrthanc(
        tmp_path_factory.mktemp("orthanc"), ae_title="PACS", modalities={"scu": (CALLING, "127.0.0.1", 104)}
    )
    with pacs:
        yield pacs


class Scp:
    """A pynetdicom Storage SCP for CR in a thread; ``status`` is what it answers each C-STORE."""

    def __init__(
        self,
        status: int = 0x0000,
        ssl_context: ssl.SSLContext | None = None,
        sop_class: str = ComputedRadiographyImageStorage,
        on_request: Callable[[Event], None] | None = None,
    ):
        self.status, self.received = status, []
        self.port = free_port()
        ae = AE(ae_title="TESTSCP")
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._handle)]
        if on_request is not None:
            handlers.append((evt.EVT_REQUESTED, on_request))
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
        )

    def _handle(self, event: Event) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        return self.status

    def peer(self, ssl_context: ssl.SSLContext | None = None) -> Peer:
        return Peer("TESTSCP", "127.0.0.1", self.port, ssl_context)

    def __enter__(self) -> Scp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def test_stores_to_orthanc_in_the_datasets_own_transfer_syntaxes(orthanc: LocalOrthanc) -> None:
    plain, j2k = rg1("RG1_UNCR.dcm"), rg1("RG1_J2KR.dcm")
    j2k.StudyInstanceUID = plain.StudyInstanceUID
    store(
        Peer("PACS", "127.0.0.1", orthanc.dicom_port), [plain, j2k], calling_ae=CALLING, timeout_s=TIMEOUT_S
    )

    api = orthanc.api()
    study = api.find_study(plain.StudyInstanceUID)
    assert study is not None
    stored = {api.instance_tags(i["ID"])["SOPInstanceUID"]: i["ID"] for i in api.study_instances(study)}
    assert set(stored) == {plain.SOPInstanceUID, j2k.SOPInstanceUID}
    kept = pydicom.dcmread(io.BytesIO(api.instance_file(stored[j2k.SOPInstanceUID])))
    assert kept.file_meta.TransferSyntaxUID == j2k.file_meta.TransferSyntaxUID  # sent as it was, not recoded


def test_store_again_is_idempotent_and_counts_one_attempt(orthanc: LocalOrthanc) -> None:
    ds = rg1()
    peer = Peer("PACS", "127.0.0.1", orthanc.dicom_port)
    assert store_with_retry(peer, [ds], calling_ae=CALLING, timeout_s=TIMEOUT_S, policy=NO_WAIT) == 1
    assert store_with_retry(peer, [ds], calling_ae=CALLING, timeout_s=TIMEOUT_S, policy=NO_WAIT) == 1
    api = orthanc.api()
    study = api.find_study(ds.StudyInstanceUID)
    assert study is not None
    uids = [api.instance_tags(i["ID"])["SOPInstanceUID"] for i in api.study_instances(study)]
    assert uids.count(ds.SOPInstanceUID) == 1


def test_wrong_called_ae_is_permanent_and_not_retried(orthanc: LocalOrthanc) -> None:
    retries: list[int] = []
    with pytest.raises(PermanentStoreError) as refused:
        store_with_retry(
            Peer("NOTPACS", "127.0.0.1", orthanc.dicom_port),
            [rg1()],
            calling_ae=CALLING,
            timeout_s=TIMEOUT_S,
            policy=NO_WAIT,
            sleep=lambda s: None,
            on_retry=lambda n, e: retries.append(n),
        )
    assert retries == []
    assert "rejected" in refused.value.reason


def test_unknown_calling_ae_is_permanent(orthanc: LocalOrthanc) -> None:
    with pytest.raises(PermanentStoreError):
        store(
            Peer("PACS", "127.0.0.1", orthanc.dicom_port), [rg1()], calling_ae="STRANGER", timeout_s=TIMEOUT_S
        )


def test_nothing_listening_is_transient_after_every_attempt() -> None:
    retries: list[tuple[int, StoreError]] = []
    slept: list[float] = []
    policy = RetryPolicy(attempts=4, first_wait_s=0.5, max_wait_s=1.0, jitter=0.1)
    with pytest.raises(TransientStoreError):
        store_with_retry(
            Peer("NOBODY", "127.0.0.1", free_port()),
            [rg1()],
            calling_ae=CALLING,
            timeout_s=TIMEOUT_S,
            policy=policy,
            sleep=slept.append,
            on_retry=lambda n, e: retries.append((n, e)),
        )
    assert [n for n, _ in retries] == [1, 2, 3]
    assert all(isinstance(e, TransientStoreError) for _, e in retries)
    assert len(slept) == 3 and all(0 < s <= 1.0 for s in slept)


def test_out_of_resources_is_transient_and_everything_is_sent_again() -> None:
    ds = rg1()
    with Scp(status=0xA700) as scp:
        with pytest.raises(TransientStoreError) as busy:
            store_with_retry(
                scp.peer(),
                [ds],
                calling_ae=CALLING,
                timeout_s=TIMEOUT_S,
                policy=NO_WAIT,
                sleep=lambda s: None,
            )
        assert scp.received == [ds.SOPInstanceUID] * NO_WAIT.attempts
    assert "0xA700" in busy.value.reason
    assert ds.SOPInstanceUID not in busy.value.reason


def test_cannot_understand_is_permanent_with_its_status() -> None:
    retries: list[int] = []
    with Scp(status=0xC000) as scp:
        with pytest.raises(PermanentStoreError) as refused:
            store_with_retry(
                scp.peer(),
                [rg1(), rg1()],
                calling_ae=CALLING,
                timeout_s=TIMEOUT_S,
                policy=NO_WAIT,
                on_retry=lambda n, e: retries.append(n),
            )
        assert len(scp.received) == 1  # stopped at the first failure
    assert refused.value.status == 0xC000 and retries == []


def test_warning_status_counts_as_stored() -> None:
    with Scp(status=0xB000) as scp:
        store(scp.peer(), [rg1(), rg1()], calling_ae=CALLING, timeout_s=TIMEOUT_S)
        assert len(scp.received) == 2


def test_no_accepted_context_for_the_sop_class_is_permanent() -> None:
    with Scp(sop_class=CTImageStorage) as scp, pytest.raises(PermanentStoreError) as refused:
        store(scp.peer(), [rg1()], calling_ae=CALLING, timeout_s=TIMEOUT_S)
    assert "presentation context" in refused.value.reason


def test_transient_rejection_is_transient() -> None:
    def busy(event: Event) -> None:
        event.assoc.acse.send_reject(0x02, 0x03, 0x02)  # rejected-transient: local limit exceeded

    with Scp(on_request=busy) as scp, pytest.raises(TransientStoreError):
        store(scp.peer(), [rg1()], calling_ae=CALLING, timeout_s=TIMEOUT_S)


def test_retry_waits_are_bounded_exponential_and_jittered() -> None:
    exact = RetryPolicy(attempts=8, first_wait_s=1, max_wait_s=10, jitter=0).waits()
    assert exact == [1, 2, 4, 8, 10, 10, 10]
    policy = RetryPolicy(attempts=8, first_wait_s=1, max_wait_s=10, jitter=0.2)
    for seed in range(20):
        waits = policy.waits(random.Random(seed))
        assert len(waits) == 7
        assert all(0.8 * e <= w <= e for w, e in zip(waits, exact, strict=True))
        assert all(a < b for a, b in itertools.pairwise(waits[:5]))  # grows until the cap
    assert policy.waits(random.Random(1)) != policy.waits(random.Random(2))
    assert RetryPolicy(attempts=1).waits() == []
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def _tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts from a local CA: the SCP requires a client certificate."""
    ca = LocalCA(tmp_path / "ca")
    server = ca.issue(Identity("testscp", (), ("127.0.0.1", "localhost")))
    client = ca.issue(Identity("sender"))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(server.ca))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(str(server.cert), str(server.key))
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(client.ca))
    client_ctx.load_cert_chain(str(client.cert), str(client.key))
    return server_ctx, client_ctx


def test_tls_store_to_a_scp_that_requires_client_certificates(tmp_path: Path) -> None:
    server_ctx, client_ctx = _tls(tmp_path)
    ds = rg1()
    with Scp(ssl_context=server_ctx) as scp:
        store(scp.peer(client_ctx), [ds], calling_ae=CALLING, timeout_s=TIMEOUT_S)
        assert scp.received == [ds.SOPInstanceUID]

        # a client that does not trust the SCP's CA gets nowhere, nor does one without TLS
        stranger = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(LocalCA(tmp_path / "x").ca_cert_path)
        )
        with pytest.raises(StoreError):
            store(scp.peer(stranger), [rg1()], calling_ae=CALLING, timeout_s=TIMEOUT_S)
        with pytest.raises(StoreError):
            store(scp.peer(None), [rg1()], calling_ae=CALLING, timeout_s=TIMEOUT_S)
        assert scp.received == [ds.SOPInstanceUID]


def test_dataset_without_file_meta_is_sent_as_explicit_vr_little_endian() -> None:
    ds = rg1()
    del ds.file_meta
    with Scp() as scp:
        store(scp.peer(), [ds], calling_ae=CALLING, timeout_s=TIMEOUT_S)
        assert scp.received == [ds.SOPInstanceUID]
    assert "file_meta" not in ds.__dict__  # the caller's dataset is left as it was
