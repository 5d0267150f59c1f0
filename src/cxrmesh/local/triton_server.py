"""Start a real ``tritonserver`` on a cxrmesh model repository from Python (tests, benchmarks, cxrmesh up).

The models run on cxrmesh's Triton python-based backends (``cxrmesh.export.backends``), which Triton
finds only in its backend directory, so ``prepare_backends`` assembles one in a cache folder - the
server's own backends plus ours - and the server gets ``--backend-directory``.

On a CPU machine the server is the one inside the ``nvidia-pytriton`` wheel. That wheel ships the
python backend without its stub: the stub for the running Python (``python_backend_stubs/3.X/``) must
sit beside ``libtriton_python.so``, so the assembled folder gets a copy of both. The copied stub loses its
``$ORIGIN`` rpath, so ``nvidia_pytriton.libs`` goes on ``LD_LIBRARY_PATH``; and the stub embeds Python
but takes its packages (numpy<2, onnxruntime) from the first ``python3`` on ``PATH``, so this
interpreter's ``bin`` goes first on ``PATH``. On a GPU host (``profile="gpu"``) a system
``tritonserver`` (the NGC container's, with the TensorRT backend) is preferred, its backends linked.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrmesh.local.ports import free_port
from cxrmesh.ml.repository import CPU_PROFILE
from cxrmesh.runtime.tls import TlsFiles

GPU_PROFILE = "gpu"
STUB = "triton_python_backend_stub"
ENV_SERVER = "CXRMESH_TRITONSERVER"  # path to a tritonserver binary, overrides discovery
ENV_CACHE = "CXRMESH_CACHE_DIR"
TRITON_DEFAULT_BACKENDS = Path("/opt/tritonserver/backends")  # tritonserver's own default


def _pytriton_dist() -> Path | None:
    """``site-packages/pytriton/tritonserver`` without importing pytriton (which is slow and chatty)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return dist if dist.is_dir() else None


def _wheel_libs() -> Path | None:
    dist = _pytriton_dist()
    libs = dist.parent.parent / "nvidia_pytriton.libs" if dist else None
    return libs if libs and libs.is_dir() else None


def default_cache_dir() -> Path:
    """``$CXRMESH_CACHE_DIR`` or ``~/.cache/cxrmesh``: where the assembled backend directory lives."""
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "cxrmesh"


def find_tritonserver(prefer_system: bool = False) -> Path:
    """The ``tritonserver`` binary: ``$CXRMESH_TRITONSERVER``, else the pytriton wheel's, else ``PATH``'s.

    ``prefer_system`` puts ``PATH`` before the wheel - for GPU hosts, whose server has TensorRT.
    """
    env = os.environ.get(ENV_SERVER)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"{ENV_SERVER}={env} is not a file")
        return path
    dist = _pytriton_dist()
    wheel = dist / "bin" / "tritonserver" if dist else None
    system = shutil.which("tritonserver")
    candidates = [system, wheel] if prefer_system else [wheel, system]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "no tritonserver found: install nvidia-pytriton (CPU) or run in the Triton container (GPU), "
        f"or set {ENV_SERVER}"
    )


def is_wheel_server(server: Path) -> bool:
    """Whether ``server`` is the pytriton wheel's binary (which needs our backend directory and libs)."""
    dist = _pytriton_dist()
    return dist is not None and server.resolve() == (dist / "bin" / "tritonserver").resolve()


def _server_backends(server: Path) -> Path:
    """The backends a ``tritonserver`` ships: ``<prefix>/backends`` beside ``<prefix>/bin/tritonserver``."""
    beside = server.resolve().parent.parent / "backends"
    return beside if beside.is_dir() else TRITON_DEFAULT_BACKENDS


def _digest(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def prepare_backends(cache: Path, server: Path | None = None) -> Path:
    """Assemble ``server``'s backends plus cxrmesh's python-based ones under ``cache``; returns the folder.

    cxrmesh's models name the python-based backends of ``cxrmesh.export.backends``, which Triton looks
    for as ``<backend directory>/<name>/model.py`` beside the python backend. For the pytriton wheel's
    server (the default) the python backend is copied with this Python's stub added; another server's
    backends (the NGC container's, with TensorRT) are linked as they are. The folder name hashes its
    sources, so a new pytriton, Python or backend source gets a fresh one, and it is built in a temporary
    sibling and renamed into place, so concurrent callers (pytest-xdist) never see half of it.
    """
    from cxrmesh.export.backends import backend_folders

    ours = backend_folders()
    wheel = server is None or is_wheel_server(server)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if wheel:
        dist = _pytriton_dist()
        if dist is None:
            raise FileNotFoundError(
                "nvidia-pytriton is not installed: its tritonserver and python backend are needed"
            )
        base, stub = dist / "backends", dist / "python_backend_stubs" / version / STUB
        if not stub.is_file():
            raise FileNotFoundError(
                f"nvidia-pytriton has no python backend stub for Python {version} ({stub})"
            )
        sources = [stub, *(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts)]
    else:
        base, stub = _server_backends(server), None
        sources = [server.resolve()]
    sources += [folder / "model.py" for folder in ours.values()]
    target = cache / "triton" / f"backends-py{version}-{_digest(sorted(sources))}"
    if all((target / name / "model.py").is_file() for name in ours):
        return target

    cache.joinpath("triton").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends-", dir=cache / "triton"))
    try:
        if stub is not None:  # the wheel's python backend, small: copied so that the stub sits beside it
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(base, staging, dirs_exist_ok=True, ignore=ignore)
            shutil.copy2(stub, staging / "python" / STUB)
            (staging / "python" / STUB).chmod(0o755)
        else:  # a full server's backends (GBs with TensorRT): linked, not copied
            for entry in base.iterdir() if base.is_dir() else ():
                if entry.name not in ours:
                    (staging / entry.name).symlink_to(entry)
        for name, folder in ours.items():
            shutil.copytree(folder, staging / name, ignore=shutil.ignore_patterns("__pycache__"))
        with contextlib.suppress(OSError):  # another process won the race: its copy is identical
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _libpython_dir() -> str | None:
    """This interpreter's libpython directory, when it has a shared libpython the stub can load."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        return libdir
    return None


def _grpc_tls_args(tls: TlsFiles | None) -> list[str]:
    """tritonserver's flags for mutual TLS on its gRPC port (clients need a certificate from ``tls.ca``)."""
    if tls is None:
        return []
    return [
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={tls.cert}",
        f"--grpc-server-key={tls.key}",
        f"--grpc-root-cert={tls.ca}",
    ]


def server_command(
    repo: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    profile: str = CPU_PROFILE,
    explicit: bool = False,
    *,
    address: str = "127.0.0.1",
    load_models: Sequence[str] = ("*",),
    server: Path | None = None,
    cache: Path | None = None,
    exit_timeout_s: int = 30,
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
    tls: TlsFiles | None = None,
    http: bool = True,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start ``tritonserver`` on ``repo`` in the given serving profile.

    ``profile="cpu"`` selects ``configs/cpu.pbtxt`` (``--model-config-name=cpu``); ``"gpu"`` the default
    ``config.pbtxt``. ``explicit`` turns on explicit model control (load/unload over the API) and loads
    ``load_models`` at start (``"*"`` = all). The server exits if any model fails to load. With ``tls``
    (Triton's own certificate, key and the CA) its gRPC port asks for mutual TLS; ``http=False`` turns the
    HTTP endpoint off (it has no client certificates), the metrics port stays on ``address``.
    """
    if profile not in (CPU_PROFILE, GPU_PROFILE):
        raise ValueError(f"profile must be '{CPU_PROFILE}' or '{GPU_PROFILE}', not {profile!r}")
    numpy_version = importlib.metadata.version("numpy")
    if int(numpy_version.split(".")[0]) >= 2:
        raise RuntimeError(f"the Triton python backend here needs numpy<2 (found {numpy_version})")
    server = server or find_tritonserver(prefer_system=profile == GPU_PROFILE)
    argv = [
        str(server),
        f"--model-repository={Path(repo).resolve()}",
        *((f"--http-address={address}", f"--http-port={http_port}") if http else ("--allow-http=false",)),
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        *_grpc_tls_args(tls),
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--log-verbose={log_verbose}",
        # Python-backend tensors travel through /dev/shm; grow the region in large steps (member_probs
        # for a batch of 16 is 63 MB) instead of the default 1 MB ones.
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=16777216",
    ]
    if profile == CPU_PROFILE:
        # No CUDA: skip the pinned-memory pool (it only logs a warning) and GPU metrics.
        argv += [
            f"--model-config-name={CPU_PROFILE}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
        ]
    if explicit:
        argv += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in load_models)]

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    argv.append(f"--backend-directory={prepare_backends(cache or default_cache_dir(), server)}")
    if is_wheel_server(server):
        libs = [str(p) for p in (_wheel_libs(), _libpython_dir()) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return [*argv, *extra_args], env


@dataclass
class TritonServer:
    """A started server: its process, endpoints and log."""

    process: subprocess.Popen
    address: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.metrics_port}/metrics"

    def log(self, tail: int | None = None) -> str:
        """The server's output so far (its last ``tail`` characters)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail:] if tail else text


def _wait_ready(server: TritonServer, timeout_s: float) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + timeout_s
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with status {server.process.returncode} before it was ready; "
                    f"log ({server.log_path}):\n{server.log(20000)}"
                )
            with contextlib.suppress(InferenceServerException):
                if client.is_server_ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"tritonserver not ready after {timeout_s:.0f} s; "
                    f"log ({server.log_path}):\n{server.log(20000)}"
                )
            time.sleep(0.2)


def stop_server(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGINT (Triton's graceful shutdown, which also ends its python stubs), then SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout_s)
        return
    except subprocess.TimeoutExpired:
        process.terminate()
    try:
        process.wait(5.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def running_server(
    repo: Path,
    *,
    profile: str = CPU_PROFILE,
    explicit: bool = False,
    address: str = "127.0.0.1",
    ports: tuple[int, int, int] | None = None,
    ready_timeout_s: float = 120.0,
    log_path: Path | None = None,
    **command_kwargs: object,
) -> Iterator[TritonServer]:
    """Start ``tritonserver`` on ``repo``, wait until it and all its models are ready, and stop it on exit.

    ``ports`` is (http, grpc, metrics); free loopback ports by default. The server's output goes to
    ``log_path`` (a temporary file by default, removed after a clean run) and is quoted in any error.
    """
    http_port, grpc_port, metrics_port = ports or (free_port(address), free_port(address), free_port(address))
    argv, env = server_command(
        repo, http_port, grpc_port, metrics_port, profile, explicit, address=address, **command_kwargs
    )
    own_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = TritonServer(process, address, http_port, grpc_port, metrics_port, log_path)
    clean = False
    try:
        _wait_ready(server, ready_timeout_s)
        yield server
        clean = True
    finally:
        stop_server(process)
        if own_log and clean:
            log_path.unlink(missing_ok=True)
