"""Cost model: what a given load needs, worked out from this run's measured figures.

Derived: nothing is measured here. Inputs are the pipeline's CPU seconds per study by process and
its disk per study, and the search section's memory per million vectors on the Milvus server. The
load and the planning rules (busy hours, peak factor, target utilisation, retention) are stated
assumptions, printed with the result, so a reader can redo the sums for their own site.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.suite.common import table
from benchmarks.suite.pipeline_page import best_pass, cpu_per_study, label

TITLE = "Cost model"
SOURCES = ("pipeline", "search")


@dataclass(frozen=True)
class Load:
    """The load to plan for and the planning rules (assumptions, not measurements)."""

    studies_per_day: int = 50_000
    index_cases: int = 10_000_000
    busy_hours: float = 10.0  # most studies arrive in the working day
    peak_factor: float = 2.0  # the busiest hour against the busy-hours mean
    utilisation: float = 0.6  # plan cores to run at most this busy at peak
    retention_days: int = 365  # how long the derived results and de-identified images are kept
    gpu_speedup: float = 20.0  # ASSUMED GPU/CPU-core speed-up for the models: not measured here


def run(quick: bool, work: Path) -> dict[str, Any]:  # derived: nothing to measure
    return {}


def render(sources: dict[str, Any], figures: Path) -> str:
    pipe = sources.get("pipeline")
    if not pipe:
        return f"## {TITLE}\n\nNo pipeline results in this run: nothing to work from."
    load = Load()
    # plan at the mesh's best operating point, not at an overload where every process does more work
    best = best_pass(pipe["passes"])
    per = cpu_per_study(best)
    core_s = sum(per.values())
    peak_per_s = load.studies_per_day / (load.busy_hours * 3600) * load.peak_factor
    cores = peak_per_s * core_s / load.utilisation
    triton_s = per.get("triton", 0.0)
    cores_gpu = peak_per_s * (core_s - triton_s) / load.utilisation
    gpus = peak_per_s * triton_s / load.gpu_speedup / load.utilisation
    disk = _disk_per_study(pipe)
    per_million = _index_mib_per_million(sources.get("search") or {})
    index_gib = per_million * load.index_cases / 1e6 / 1024 if per_million else float("nan")
    first = max(per, key=lambda k: per[k])
    service_mem = sum(v["peak_mib"] for v in best["procs"].values()) / 1024
    here = pipe.get("cores", 2)
    sets = math.ceil(cores / here)
    rows = [
        [
            "CPU cores, models on CPU",
            f"{math.ceil(cores)}",
            f"{peak_per_s:.2f} studies/s × {core_s:.2f} core-s",
        ],
        [
            "CPU cores, models on GPU",
            f"{math.ceil(cores_gpu)}",
            f"the same without Triton's {triton_s:.2f} core-s per study",
        ],
        [
            "GPUs (estimate)",
            f"{max(1, math.ceil(gpus))} (+1 for failover)",
            f"Triton's CPU time / {load.gpu_speedup:.0f}× assumed speed-up; {gpus:.2f} GPUs busy at peak",
        ],
        [
            "memory, index",
            f"{index_gib:,.0f} GiB" if per_million else "not measured",
            f"{load.index_cases / 1e6:.0f} M vectors × {per_million:,.0f} MiB per million (server, HNSW)"
            if per_million
            else "",
        ],
        [
            "memory, services",
            f"{service_mem * sets:,.0f} GiB",
            f"{sets} sets of the mesh's processes ({service_mem:.1f} GiB each), one per {here} cores",
        ],
        [
            "storage per year",
            f"{disk * load.studies_per_day * load.retention_days / 2**20:,.1f} TiB",
            f"{disk:.1f} MiB per study (blobs, database, index) × {load.studies_per_day:,}/day × "
            f"{load.retention_days} days",
        ],
    ]
    return "\n".join(
        [
            f"## {TITLE}\n",
            f"For {load.studies_per_day:,} studies a day and {load.index_cases:,} cases in the index, from "
            f"this run's figures ({label(best)}). Assumptions: {_assumptions(load)}.\n",
            table(["resource", "needed", "from"], rows, align="lll"),
            "",
            f"**First bottleneck: `{first}`**, {per[first]:.2f} of the {core_s:.2f} CPU seconds a study "
            "costs "
            f"({per[first] / core_s * 100:.0f} %): it needs the most replicas, and its share sets how far "
            "adding cores to the other stages helps. The GPU figures are an estimate until the GPU section "
            "has been run on a card; the CPU, memory and storage figures scale linearly from measured "
            "values and assume the per-study costs stay flat at higher concurrency (the pipeline section's "
            "passes show how far that held here).",
        ]
    )


def _assumptions(load: Load) -> str:
    a = asdict(load)
    return (
        f"{a['busy_hours']:.0f} busy hours a day, peak hour {a['peak_factor']}× their mean, cores planned at "
        f"{a['utilisation'] * 100:.0f} % busy, results kept {a['retention_days']} days, GPU speed-up "
        f"{a['gpu_speedup']:.0f}× a CPU core (assumed)"
    )


def _disk_per_study(pipe: dict[str, Any]) -> float:
    """MiB of durable state per study: the slope between the first and last one-replica pass."""
    one = [p for p in pipe["passes"] if p["replicas"] == 1 and "disk_mib" in p]
    if len(one) < 2:
        return sum(one[-1]["disk_mib"].values()) / one[-1]["corpus"] if one else 0.0
    first, last = one[0], one[-1]
    grown = sum(last["disk_mib"].values()) - sum(first["disk_mib"].values())
    return grown / max(last["corpus"] - first["corpus"], 1)


def _index_mib_per_million(search: dict[str, Any]) -> float:
    """The Milvus server's memory per million vectors with HNSW, as the search section measured it."""
    from benchmarks.suite.search_page import mib_per_million

    return mib_per_million(search.get("sizes", []), "Milvus server HNSW") or 0.0
