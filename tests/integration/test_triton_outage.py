"""The services' Triton client against a real ``tritonserver`` that hangs, goes away and comes back.

While Triton is away the client must fail with :class:`TritonUnavailable` (the stages then wait with
``DependencyUnavailable``, gRPC methods answer UNAVAILABLE), not hang; once it is back on the same
port, the same client works again without being rebuilt. The bounds on elapsed time are hang checks
(generous), not speed measurements.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cxrmesh.export
from cxrmesh.contracts.tensors import PROGNOSIS, example_inputs
from cxrmesh.export.repository import write_repository
from cxrmesh.local.ports import free_port
from cxrmesh.local.triton_server import running_server
from cxrmesh.ml.repository import CPU_PROFILE
from cxrmesh.runtime.triton import TritonClient, TritonUnavailable

HANG_BOUND_S = 15.0  # far above the client's budget (5 s): only a hang exceeds it
MODEL = PROGNOSIS.name  # the smallest model: the server starts quickly on a small machine


@pytest.fixture(scope="module")
def server_options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """How both servers of the test start: one small model, the same repository, cache and ports."""
    tmp = tmp_path_factory.mktemp("triton-outage")
    repo = tmp / "repository"
    write_repository(cxrmesh.export.onnx_dir_for_tests(tmp / "onnx"), repo, intra_op_threads=1)
    return {
        "repo": repo,
        "profile": CPU_PROFILE,
        "explicit": True,
        "load_models": (MODEL,),
        "cache": tmp / "cache",
        "exit_timeout_s": 5,
        "ports": (free_port(), free_port(), free_port()),
    }


@pytest.fixture
def client(server_options: dict[str, Any]) -> Iterator[TritonClient]:
    _, grpc_port, _ = server_options["ports"]
    triton = TritonClient(f"127.0.0.1:{grpc_port}", timeout_s=5.0)
    yield triton
    triton.close()


def infer(client: TritonClient) -> np.ndarray:
    return client.infer(MODEL, example_inputs(PROGNOSIS, 2), ["probability"])["probability"]


def fails_without_hanging(call: Callable[[], object]) -> TritonUnavailable:
    """``call`` raises TritonUnavailable and returns within HANG_BOUND_S; the error, for its message."""
    start = time.monotonic()
    with pytest.raises(TritonUnavailable) as raised:
        call()
    elapsed = time.monotonic() - start
    assert elapsed < HANG_BOUND_S, f"the call took {elapsed:.1f} s: a hang, not a fast failure"
    return raised.value


def works_again(client: TritonClient, within_s: float = 60.0) -> np.ndarray:
    """The first successful answer once the server is back (the channel reconnects on its own)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return infer(client)
        except TritonUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_triton_hung_then_gone_then_back_on_the_same_port(
    server_options: dict[str, Any], client: TritonClient
) -> None:
    options = dict(server_options)
    repo: Path = options.pop("repo")
    with running_server(repo, **options) as server:
        assert infer(client).shape == (2, 1)

        os.kill(server.process.pid, signal.SIGSTOP)  # hung: connections accepted, nothing answered
        try:
            err = fails_without_hanging(lambda: infer(client))
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert "model server unavailable, retry later" in str(err) and "DEADLINE_EXCEEDED" in str(err)
        assert works_again(client).shape == (2, 1)

    # stopped: the port refuses connections
    err = fails_without_hanging(lambda: infer(client))
    assert "model server unavailable, retry later" in str(err) and "UNAVAILABLE" in str(err)
    fails_without_hanging(lambda: client.model_version(MODEL))  # the other RPC the stages make

    with running_server(repo, **options):  # back on the same port: the same client, no rebuild
        first = works_again(client)
        assert first.shape == (2, 1) and np.all(np.isfinite(first))
        assert client.model_version(MODEL) == "1"
