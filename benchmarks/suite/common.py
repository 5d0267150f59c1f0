"""What every benchmark section shares: its declared shape, statistics, memory readings, tables."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ROOT = Path(__file__).resolve().parents[2]  # the repository


class Section(Protocol):
    """One benchmark: a title, a measurement, and its part of the page.

    ``run`` returns JSON-serialisable data only (it is stored in out/bench/results.json and the page
    is drawn from the stored copy), and holds its baseline in the same data: every ratio on the page is
    between two figures of one run. ``quick`` must finish in about a minute; it proves the code runs
    (CI), not the numbers.
    """

    TITLE: str

    def run(self, quick: bool, work: Path) -> dict[str, Any]: ...

    def render(self, results: dict[str, Any], figures: Path) -> str: ...


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of a list of latencies, in milliseconds (NaN-free: empty gives zeros)."""
    if not len(seconds):
        return {"n": 0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    ms = np.asarray(seconds, dtype=float) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": int(ms.size), "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_ms": float(ms.mean())}


def spread(values: Iterable[float]) -> dict[str, float]:
    """Median and range of one figure measured in repeats (the page prints ``median (min-max)``)."""
    vals = list(values)
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "repeats": len(vals)}


def fmt_spread(s: dict[str, float], digits: int = 1) -> str:
    if s["repeats"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def repeat(fn: Callable[[], float], repeats: int) -> dict[str, float]:
    """Run ``fn`` (which returns one figure, e.g. items per second) ``repeats`` times: its spread."""
    return spread(fn() for _ in range(repeats))


def rate_for(fn: Callable[[], Any], seconds: float, items_per_call: int = 1) -> tuple[float, list[float]]:
    """Call ``fn`` back to back for about ``seconds``: (items per second, per-call latencies in s)."""
    fn()  # warm-up, not counted
    lat: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(lat) < 3:
        t0 = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t0)
    return len(lat) * items_per_call / (time.perf_counter() - start), lat


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak resident memory of a process so far (the kernel's high-water mark, VmHWM), in MiB."""
    return _status_kb(pid or os.getpid(), "VmHWM") / 1024


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process now (VmRSS), in MiB."""
    return _status_kb(pid or os.getpid(), "VmRSS") / 1024


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (a service's workers, tritonserver's python stubs)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):  # a child belongs to the thread that started it
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            out += tree_pids(int(child))
    return out


@dataclass(frozen=True)
class Machine:
    """Where a run happened: printed at the top of the page and beside every saved result."""

    host: str
    cpu: str
    cores: int
    memory_gib: float
    gpu: str
    python: str
    revision: str
    started: str

    @classmethod
    def here(cls) -> Machine:
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if "model name" in ln),
            platform.processor() or platform.machine(),
        )
        mem_kb = next(
            (int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal")), 0
        )
        return cls(
            host=platform.node(),
            cpu=cpu,
            cores=os.cpu_count() or 1,
            memory_gib=round(mem_kb / 2**20, 1),
            gpu=_gpu_name(),
            python=platform.python_version(),
            revision=_git("rev-parse", "--short", "HEAD"),
            started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )

    def line(self) -> str:
        return (
            f"{self.started} on {self.host}: {self.cpu}, {self.cores} cores, {self.memory_gib} GiB, "
            f"GPU: {self.gpu}; Python {self.python}; revision {self.revision}"
        )


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "none"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align`` is one letter per column (l/r), numbers right by default."""
    rows = [[_cell(c) for c in r] for r in rows]
    align = align or "".join("r" if rows and _numeric(rows[0][i]) else "l" for i in range(len(headers)))
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(cell: str) -> bool:
    return cell.replace(",", "").replace(".", "", 1).replace("×", "").lstrip("-").split(" ")[0].isdigit()


def figure_path(figures: Path, name: str) -> tuple[Path, str]:
    """Where a section saves a plot, and how the page links it (relative to docs/)."""
    figures.mkdir(parents=True, exist_ok=True)
    path = figures / f"{name}.png"
    return path, f"figures/benchmarks/{name}.png"
