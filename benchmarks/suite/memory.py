"""Memory: peak resident memory of each process under load, and how it grows with the corpus.

Derived: it measures nothing itself. The pipeline section reads every mesh process (with its
children) after each pass, while the corpus grows pass by pass; the search section reads the index
holders at 10k-1M vectors. Peak is the kernel's high-water mark (VmHWM), summed over a process's
children; growth is the resident memory after each pass against the number of studies stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.suite.common import figure_path, table

TITLE = "Memory"
SOURCES = ("pipeline", "search")


def run(quick: bool, work: Path) -> dict[str, Any]:  # derived: nothing to measure
    return {}


def render(sources: dict[str, Any], figures: Path) -> str:
    parts = [f"## {TITLE}\n"]
    if "pipeline" in sources:
        parts.append(_pipeline(sources["pipeline"], figures))
    if "search" in sources:
        parts.append(_search(sources["search"]))
    return "\n\n".join(parts)


def _pipeline(results: dict[str, Any], figures: Path) -> str:
    one = [p for p in results["passes"] if p["replicas"] == 1]
    two = [p for p in results["passes"] if p["replicas"] == 2]
    names = list(one[-1]["procs"])
    corpus = [p["corpus"] for p in one]
    rows = []
    for name in names:
        rss = [p["procs"].get(name, {}).get("rss_mib", 0.0) for p in one]
        peak = max(p["procs"].get(name, {}).get("peak_mib", 0.0) for p in one)
        growth = (rss[-1] - rss[0]) / max(corpus[-1] - corpus[0], 1) * 100
        rows.append([name, peak, *rss, growth])
    total_peak = sum(r[1] for r in rows)
    rows.append(
        ["**all mesh processes**", total_peak, *[sum(r[2 + i] for r in rows) for i in range(len(one))], ""]
    )
    base_peak = results["baseline"]["peak_rss_mib"]
    heads = ["process", "peak MiB", *[f"RSS MiB at {c} studies" for c in corpus], "MiB per 100 studies"]
    lines = [
        "Each process of the one-replica mesh, read after each pipeline pass (with its child processes: "
        "tritonserver's python-backend stubs, one per model instance).\n",
        table(heads, rows, align="l" + "r" * (len(heads) - 1)),
        "",
        "Growth between passes mixes the stored corpus with the load: later passes run more clients. "
        "Triton and ingestion grow with the load (larger dynamic batches and more concurrent uploads; "
        "ONNX Runtime's memory arena keeps its largest allocation), not with what is stored; the stores "
        "(Milvus, the broker) grow with the corpus.\n",
        f"The mesh's processes together peak at {total_peak:,.0f} MiB against {base_peak:,.0f} MiB for the "
        f"in-process pipeline doing the same work ({total_peak / max(base_peak, 1):.1f}×): each service is "
        "its own Python interpreter with gRPC, Kafka and database clients loaded (about 200 MiB each before "
        "any work), and Triton holds every model once per instance. That is the price of running and "
        "scaling the stages apart; what would lower it: fewer Triton instances per model on CPU, "
        "and on a cluster the services that hold no model (study view, prognosis, search) at one small "
        "replica each.",
    ]
    if two:
        peak2 = sum(v["peak_mib"] for v in two[-1]["procs"].values())
        lines.append(
            f"\nWith two replicas of every service the mesh peaks at {peak2:,.0f} MiB "
            f"({peak2 / max(total_peak, 1):.2f}× one replica)."
        )
    lines += ["", f"![resident memory by process as the corpus grows]({_plot(names, one, corpus, figures)})"]
    return "\n".join(lines)


def _plot(names: list[str], passes: list[dict[str, Any]], corpus: list[int], figures: Path) -> str:
    path, link = figure_path(figures, "memory")
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in names:
        ax.plot(
            corpus, [p["procs"].get(name, {}).get("rss_mib", 0.0) for p in passes], "o-", label=name, lw=1
        )
    ax.set_xlabel("studies stored in the mesh")
    ax.set_ylabel("resident memory, MiB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return link


def _search(results: dict[str, Any]) -> str:
    from benchmarks.suite.search_page import MEMORY_ENGINES, mib_per_million

    sizes = results.get("sizes", [])
    rows = [(label, mib_per_million(sizes, label)) for label in MEMORY_ENGINES]
    rows = [(label, per, per * 10 / 1024) for label, per in rows if per is not None]
    if not rows:
        return "The index's growth with the corpus needs two search sizes (a full run)."
    return "\n".join(
        [
            "The index holders, from the search section (growth between its two largest sizes, so the "
            "fixed part cancels; see there for how each is read):\n",
            table(["index", "MiB per 1M vectors", "GiB at 10M"], rows, align="lrr"),
        ]
    )
