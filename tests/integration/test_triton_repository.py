"""The Triton model repository: configs follow the spec, and a real CPU ``tritonserver`` serves it like ORT.

One server (``--model-config-name=cpu``) is started for the whole session on free loopback ports.
The repository is built from the committed, trained models (``cxrmesh.export.onnx_dir_for_tests``); the
server runs them on cxrmesh's python-based backends (``cxrmesh.export.backends``).
"""

from __future__ import annotations

import queue
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

import cxrmesh.export
from cxrmesh.contracts.tensors import (
    ALL_MODELS,
    BY_NAME,
    MAX_BATCH,
    ONNX_MODELS,
    SEG_ENSEMBLE,
    ModelSpec,
    example_inputs,
)
from cxrmesh.export import build_trt
from cxrmesh.export.backends import BACKENDS, ONNX_RUNTIME_BACKEND, SEG_ENSEMBLE_BACKEND, backend_folders
from cxrmesh.export.repository import VERSION_MARKER, write_repository
from cxrmesh.local.triton_server import TritonServer, prepare_backends, running_server, server_command
from cxrmesh.ml.repository import (
    CPU_PROFILE,
    ENV_MODEL_REPOSITORY,
    ONNX_FILE,
    member_weights,
    model_repository,
    read_config,
)

TOLERANCE = 1e-5


def repository_for_tests(tmp: Path, onnx_dir: Path | None = None) -> Path:
    """A complete repository under ``tmp`` (one ORT thread per model: the test machine has 2 cores)."""
    repo = tmp / "repository"
    write_repository(onnx_dir or cxrmesh.export.onnx_dir_for_tests(tmp / "onnx"), repo, intra_op_threads=1)
    return repo


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return repository_for_tests(tmp_path_factory.mktemp("triton"))


@pytest.fixture(scope="session")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    cache = tmp_path_factory.mktemp("cache")
    with running_server(repository, profile=CPU_PROFILE, cache=cache, exit_timeout_s=5) as started:
        yield started


@pytest.fixture(scope="session")
def client(server: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as connected:
        yield connected


def _inputs(
    arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None
) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        dtype = (dtypes or {}).get(name, "FP32")
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _ort(repository: Path, spec: ModelSpec, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(
        str(repository / spec.name / "1" / ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    names = [t.name for t in spec.outputs]
    return dict(zip(names, session.run(names, dict(arrays)), strict=True))


def _tensors(tensors: object) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(t.name, mc.DataType.Name(t.data_type), tuple(t.dims)) for t in tensors]


# --- the repository on disk -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_MODELS, ids=lambda s: s.name)
def test_configs_parse_and_match_spec(repository: Path, spec: ModelSpec) -> None:
    for path in (
        repository / spec.name / "config.pbtxt",
        repository / spec.name / "configs" / f"{CPU_PROFILE}.pbtxt",
    ):
        config = read_config(path)
        assert config.name == spec.name
        assert config.max_batch_size == spec.max_batch_size == MAX_BATCH
        assert _tensors(config.input) == [(t.name, t.dtype, t.dims) for t in spec.inputs]
        assert _tensors(config.output) == [(t.name, t.dtype, t.dims) for t in spec.outputs]
        assert config.version_policy.latest.num_versions == 1
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        assert all(1 <= b <= spec.max_batch_size for b in config.dynamic_batching.preferred_batch_size)
        assert [g.count for g in config.instance_group] == [1]

    gpu = read_config(repository / spec.name / "config.pbtxt")
    cpu = read_config(repository / spec.name / "configs" / f"{CPU_PROFILE}.pbtxt")
    assert cpu.backend == (ONNX_RUNTIME_BACKEND if spec in ONNX_MODELS else SEG_ENSEMBLE_BACKEND)
    assert cpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    if spec in ONNX_MODELS:
        assert (gpu.platform, gpu.default_model_filename) == ("tensorrt_plan", "model.plan")
        assert gpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    else:  # the BLS ensemble holds no weights: the python backend on the CPU in both profiles
        assert gpu == cpu
    assert (repository / spec.name / "model_card.md").read_text().startswith(f"# {spec.name}")


@pytest.mark.parametrize("spec", ALL_MODELS, ids=lambda s: s.name)
def test_profiles_have_identical_tensor_names(repository: Path, spec: ModelSpec) -> None:
    gpu = read_config(repository / spec.name / "config.pbtxt")
    cpu = read_config(repository / spec.name / "configs" / f"{CPU_PROFILE}.pbtxt")
    assert [t.name for t in gpu.input] == [t.name for t in cpu.input]
    assert [t.name for t in gpu.output] == [t.name for t in cpu.output]


def test_onnx_models_share_one_backend_and_the_repository_holds_no_code(repository: Path) -> None:
    cpu_configs = [repository / s.name / "configs" / f"{CPU_PROFILE}.pbtxt" for s in ONNX_MODELS]
    backends = {read_config(path).backend for path in cpu_configs}
    assert backends == {ONNX_RUNTIME_BACKEND}
    assert read_config(repository / SEG_ENSEMBLE.name / "config.pbtxt").backend not in backends
    assert not list(repository.rglob("*.py")), "model code belongs in export/triton_backends/"
    assert (repository / SEG_ENSEMBLE.name / "1").is_dir(), "Triton serves a model only with a version folder"


def test_model_repository_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_MODEL_REPOSITORY, str(tmp_path))
    assert model_repository() == tmp_path.resolve()
    monkeypatch.setenv(ENV_MODEL_REPOSITORY, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=ENV_MODEL_REPOSITORY):
        model_repository()


def test_missing_onnx_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cxr_embedder"):
        write_repository(tmp_path, tmp_path / "repo")


def test_server_command_cpu_profile(repository: Path, tmp_path: Path) -> None:
    argv, env = server_command(repository, 1, 2, 3, cache=tmp_path)
    assert f"--model-config-name={CPU_PROFILE}" in argv
    backends = Path(next(a for a in argv if a.startswith("--backend-directory=")).split("=", 1)[1])
    assert (backends / "python" / "triton_python_backend_stub").is_file()
    assert (backends / "python" / "libtriton_python.so").is_file()
    for name, source in backend_folders().items():  # the python-based backends the configs name
        assert (backends / name / "model.py").read_bytes() == (source / "model.py").read_bytes()
    assert set(BACKENDS) == {ONNX_RUNTIME_BACKEND, SEG_ENSEMBLE_BACKEND}
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_a_system_servers_backends_are_linked_beside_ours(tmp_path: Path) -> None:
    prefix = tmp_path / "opt" / "tritonserver"  # the NGC container's layout
    for folder in ("bin", "backends/python", "backends/tensorrt"):
        (prefix / folder).mkdir(parents=True)
    (prefix / "bin" / "tritonserver").write_text("")
    backends = prepare_backends(tmp_path / "cache", prefix / "bin" / "tritonserver")
    assert (backends / "tensorrt").resolve() == (prefix / "backends" / "tensorrt").resolve()
    assert (backends / "python").is_symlink()
    assert all((backends / name / "model.py").is_file() for name in BACKENDS)


# --- a real server ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_server_serves_every_model(client: grpcclient.InferenceServerClient) -> None:
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index == {s.name: "READY" for s in ALL_MODELS}


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("spec", ONNX_MODELS, ids=lambda s: s.name)
def test_served_like_onnx_runtime(
    client: grpcclient.InferenceServerClient, repository: Path, spec: ModelSpec, batch: int
) -> None:
    arrays = example_inputs(spec, batch, seed=batch)
    result = client.infer(spec.name, _inputs(arrays))
    for name, expected in _ort(repository, spec, arrays).items():
        served = result.as_numpy(name)
        assert (
            served.shape == expected.shape == (batch, *next(t.dims for t in spec.outputs if t.name == name))
        )
        assert np.abs(served - expected).max() <= TOLERANCE


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_split_back(
    client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    spec = BY_NAME["cxr_embedder"]
    before = client.get_inference_statistics(spec.name).model_stats[0]
    requests = [example_inputs(spec, 2, seed=100 + i) for i in range(8)]
    answers: queue.Queue[tuple[int, object, object]] = queue.Queue()
    for i, arrays in enumerate(requests):  # all in flight at once, so the dynamic batcher can combine them
        client.async_infer(
            spec.name, _inputs(arrays), callback=lambda result, error, i=i: answers.put((i, result, error))
        )
    for _ in requests:
        i, result, error = answers.get(timeout=30)
        assert error is None, error
        for name, expected in _ort(repository, spec, requests[i]).items():
            assert np.abs(result.as_numpy(name) - expected).max() <= TOLERANCE
    after = client.get_inference_statistics(spec.name).model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 16
    assert executions < len(requests), "the dynamic batcher never combined requests"


@pytest.mark.slow
def test_ensemble_is_weighted_member_mean_and_member_probs_on_request(
    client: grpcclient.InferenceServerClient, repository: Path
) -> None:
    spec = SEG_ENSEMBLE
    mean, stack = (t.name for t in spec.outputs)
    arrays = example_inputs(spec, 2, seed=7)
    members = [_ort(repository, BY_NAME[m], arrays)[mean] for m in spec.members]

    both = client.infer(
        spec.name, _inputs(arrays), outputs=[grpcclient.InferRequestedOutput(n) for n in (mean, stack)]
    )
    served_stack = both.as_numpy(stack)
    assert served_stack.shape == (2, len(spec.members), *BY_NAME[spec.members[0]].outputs[0].dims)
    for k, expected in enumerate(members):
        assert np.abs(served_stack[:, k] - expected).max() <= TOLERANCE
    weights = member_weights(repository)
    assert weights.shape == (len(spec.members),) and abs(weights.sum() - 1) < 1e-9
    expected_mean = np.tensordot(weights, np.stack(members), axes=1)
    assert np.abs(both.as_numpy(mean) - expected_mean).max() <= TOLERANCE
    assert np.abs(both.as_numpy(mean) - np.tensordot(served_stack, weights, axes=([1], [0]))).max() <= 1e-6

    only_mean = client.infer(spec.name, _inputs(arrays), outputs=[grpcclient.InferRequestedOutput(mean)])
    assert [o.name for o in only_mean.get_response().outputs] == [mean]
    assert only_mean.as_numpy(stack) is None
    np.testing.assert_array_equal(only_mean.as_numpy(mean), both.as_numpy(mean))

    only_stack = client.infer(spec.name, _inputs(arrays), outputs=[grpcclient.InferRequestedOutput(stack)])
    assert [o.name for o in only_stack.get_response().outputs] == [stack]
    np.testing.assert_array_equal(only_stack.as_numpy(stack), served_stack)


def _malformed(spec: ModelSpec, kind: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    image = spec.inputs[0]
    if kind == "shape":
        return {
            image.name: np.zeros((1, *image.dims[:-2], *(d // 2 for d in image.dims[-2:])), np.float32)
        }, {}
    if kind == "dtype":
        return {image.name: np.zeros((1, *image.dims), np.int32)}, {image.name: "INT32"}
    assert kind == "batch"
    return {image.name: np.zeros((spec.max_batch_size + 1, *image.dims), np.float32)}, {}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["shape", "dtype", "batch"])
@pytest.mark.parametrize("name", ["cxr_embedder", SEG_ENSEMBLE.name])
def test_malformed_requests_are_invalid_argument(
    client: grpcclient.InferenceServerClient, name: str, kind: str
) -> None:
    spec = BY_NAME[name]
    arrays, dtypes = _malformed(spec, kind)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(name, _inputs(arrays, dtypes))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert caught.value.message()
    assert client.is_server_live() and client.is_model_ready(name)
    good = example_inputs(spec, 1)
    assert client.infer(name, _inputs(good)).as_numpy(spec.outputs[0].name) is not None


@pytest.mark.slow
def test_missing_input_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    spec = BY_NAME["prognosis_head"]
    arrays = example_inputs(spec, 1)
    first = spec.inputs[0].name
    with pytest.raises(InferenceServerException) as caught:
        client.infer(spec.name, _inputs({first: arrays[first]}))
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    assert client.is_server_live()


@pytest.mark.slow
def test_metrics_count_inferences(server: TritonServer, client: grpcclient.InferenceServerClient) -> None:
    spec = BY_NAME["prognosis_head"]
    client.infer(spec.name, _inputs(example_inputs(spec, 1)))
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert f'nv_inference_request_success{{model="{spec.name}",version="1"}}' in text


# --- TensorRT plans ----------------------------------------------------------------------------------------


def test_build_trt_says_why_it_cannot_run_here(repository: Path) -> None:
    if build_trt.unavailable_reason() is None:
        pytest.skip("TensorRT and a CUDA GPU are present: plans can be built here")
    done = subprocess.run(
        [sys.executable, "-m", "cxrmesh.export.build_trt", str(repository)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "TensorRT" in lines[0] or "GPU" in lines[0]
    assert "target GPU" in lines[0]
    assert not any((repository / s.name / "1" / "model.plan").exists() for s in ONNX_MODELS)


def test_served_models_find_lungs_and_landmarks_on_held_out_studies(
    client: grpcclient.InferenceServerClient, corpus: Path, manifest: list[dict]
) -> None:
    """The committed models, served, on a corpus drawn with a seed training never saw."""
    from cxrmesh.local.triton_demo import score_study

    scores = [score_study(client, corpus, row) for row in manifest[:8]]
    assert np.mean([s["dice"] for s in scores]) >= 0.93, scores
    assert np.mean([s["landmark_error_mm"] for s in scores]) <= 8.0, scores
    assert all(abs(s["embedding_norm"] - 1.0) < 1e-3 for s in scores)


def test_committed_repository_is_what_the_writer_produces(tmp_path: Path) -> None:
    """model_repository/ is generated: its configs must not drift, and it holds no model code."""
    committed = model_repository()
    regenerated = tmp_path / "repo"
    params = read_config(committed / SEG_ENSEMBLE.name / "config.pbtxt").parameters
    fitted = params["member_weights"].string_value.split(",") if "member_weights" in params else None
    weights = dict(zip(SEG_ENSEMBLE.members, map(float, fitted), strict=True)) if fitted else None
    write_repository(
        cxrmesh.export.onnx_dir_for_tests(tmp_path / "onnx"), regenerated, ensemble_weights=weights
    )
    generated = sorted(
        p.relative_to(regenerated)
        for p in regenerated.rglob("*")
        if p.suffix == ".pbtxt" or p.name == VERSION_MARKER
    )
    assert generated, "writer produced no configs"
    assert not list(committed.rglob("*.py")), "model.py files in model_repository/: the backends run them"
    for rel in generated:
        assert (committed / rel).read_text() == (regenerated / rel).read_text(), (
            f"{rel} differs: rerun cxrmesh export"
        )
