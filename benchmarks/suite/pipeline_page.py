"""The pipeline section of docs/benchmarks.md, drawn from stored results only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.suite.common import figure_path, table
from cxrmesh.contracts.tensors import MODEL_INPUT

TARGET = 0.95  # the target: the mesh at >= 0.95x the in-process rate


def label(p: dict[str, Any]) -> str:
    r, c = p["replicas"], p["clients"]
    return f"mesh, {r} replica{'s' if r > 1 else ''}, {c} client{'s' if c > 1 else ''}"


def best_pass(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """The mesh's best operating point measured: the pass with the most studies per minute."""
    return max(passes, key=lambda p: p["per_min"])


def cpu_per_study(p: dict[str, Any]) -> dict[str, float]:
    """CPU seconds each process spent per completed study during one pass (after minus before)."""
    n = max(p["complete"] + p.get("failed", 0), 1)
    return {
        name: (after["cpu_s"] - p["before"].get(name, {}).get("cpu_s", 0.0)) / n
        for name, after in p["procs"].items()
    }


def page(results: dict[str, Any], figures: Path, title: str) -> str:
    base, passes = results["baseline"], results["passes"]
    rows = [
        [
            "in process, one after another (baseline)",
            base["sent"],
            base["complete"],
            base.get("refused", 0),
            base["per_min"],
            "1.00",
            *(base["latency"][k] / 1000 for k in ("p50_ms", "p95_ms", "p99_ms")),
            "–",
        ]
    ]
    for p in passes:
        rows.append(
            [
                label(p),
                p["sent"],
                p["complete"],
                p.get("refused", 0),
                p["per_min"],
                f"{p['per_min'] / base['per_min']:.2f}",
                *(p["latency"][k] / 1000 for k in ("p50_ms", "p95_ms", "p99_ms")),
                p["ack"]["p50_ms"],
            ]
        )
    heads = [
        "setup",
        "sent",
        "complete",
        "refused",
        "studies/min",
        "× in-process",
        "p50 s",
        "p95 s",
        "p99 s",
        "ack p50 ms",
    ]
    out = [
        f"## {title}\n",
        f"{results['studies']} synthetic full-resolution studies (about 2,600 × 3,000 px, 12-bit, 8 MB "
        "each); "
        "the mesh runs the analysis services "
        f"({', '.join(results['services'])}) with mutual TLS and authorization on, SQLite, Milvus Lite and "
        "tritonserver on CPU, as `cxrmesh up` does. Clients are closed-loop: each sends a study and waits "
        "until its study view is complete before sending the next. Latency is ingest call to complete view. "
        "The baseline runs the same admission, models (ONNX Runtime) and domain code on the same images, "
        "one study after another, in one process; every part sends the first *sent* studies of the same "
        "corpus (fewer where one study at a time would take long). *Refused*: studies admission turned "
        "away (the synthetic corpus burns patient text into a few images on purpose); they count as "
        "answered in studies/min.\n",
        table(heads, rows, align="lrrrrrrrrr"),
        "",
        f"![studies per minute and latency]({_plot(base, passes, figures)})",
        "",
        _verdict(base, passes, results.get("cores", 2)),
        "",
        _cpu_table(base, passes),
    ]
    return "\n".join(out)


def _plot(base: dict[str, Any], passes: list[dict[str, Any]], figures: Path) -> str:
    path, link = figure_path(figures, "pipeline")
    names = ["in process"] + [f"{p['replicas']}r × {p['clients']}c" for p in passes]
    rates = [base["per_min"]] + [p["per_min"] for p in passes]
    p50 = [base["latency"]["p50_ms"] / 1000] + [p["latency"]["p50_ms"] / 1000 for p in passes]
    p99 = [base["latency"]["p99_ms"] / 1000] + [p["latency"]["p99_ms"] / 1000 for p in passes]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    colours = ["#777777"] + ["#2b6cb0"] * len(passes)
    a.bar(names, rates, color=colours)
    a.axhline(base["per_min"] * TARGET, color="#c05621", ls="--", lw=1, label=f"{TARGET}× in-process")
    a.set_ylabel("studies per minute (higher is better)")
    a.legend(loc="upper left", fontsize=8)
    x = range(len(names))
    b.plot(x, p50, "o-", label="p50")
    b.plot(x, p99, "s--", label="p99")
    b.set_xticks(list(x), names)
    b.set_ylabel("ingest → complete, seconds (lower is better)")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("r = replicas of every service, c = concurrent closed-loop clients", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return link


def _verdict(base: dict[str, Any], passes: list[dict[str, Any]], cores: int) -> str:
    best = best_pass(passes)
    one = min(passes, key=lambda p: (p["clients"], p["replicas"]))
    ratio = best["per_min"] / base["per_min"]
    met = "meets" if ratio >= TARGET else "misses"
    lines = [
        f"**Target ({TARGET}× the in-process rate): the best mesh setup ({label(best)}) {met} it at "
        f"{ratio:.2f}×** ({best['per_min']:.1f} vs {base['per_min']:.1f} studies/min).",
        "",
        f"With one client the mesh takes {one['latency']['p50_ms'] / 1000:.2f} s per study (p50) against "
        f"{base['latency']['p50_ms'] / 1000:.2f} s in process: "
        f"{one['latency']['p50_ms'] / max(base['latency']['p50_ms'], 1e-9):.1f}× the latency. "
        "A study crosses six services (ingestion; embedding and segmentation side by side; "
        "quantification; prognosis; the study view) over four topics on its critical path, each hop a "
        "produce with `acks=all`, a poll and an offset commit after the effect is durable; an outbox "
        "transaction, a result-table write per stage and three Triton calls with "
        f"{MODEL_INPUT} × {MODEL_INPUT} float tensors serialised over gRPC. In process the same work is "
        "a few function calls. The mesh wins that time back only by overlapping studies: its stages run "
        "in parallel, so with more clients its throughput rises while a single process stays at one "
        "study at a time.",
    ]
    lines += _overload(best, passes)
    if ratio < TARGET:
        lines += [
            "",
            f"Where it loses ({(1 - ratio) * 100:.0f} % below the in-process rate at best): the mesh's "
            f"{len(best['procs'])} processes share the {cores} cores the in-process pipeline has to itself, "
            "so the mesh's per-study overhead (serialisation, TLS, broker, database, polling) is "
            "paid from the cores the models need, and overlap cannot help once every core is busy. What "
            "would close it: more cores than the in-process pipeline can use (the stages then run side by "
            "side), Triton on a GPU (its share of CPU time moves off the cores), shared-memory "
            "tensors between the services and Triton, and batching consumers (`max_batch`) so that Kafka "
            "and Triton overheads are paid per batch, not per study.",
        ]
    return "\n".join(lines)


def _overload(best: dict[str, Any], passes: list[dict[str, Any]]) -> list[str]:
    """When more clients made the one-replica mesh slower than its best, say by how much and where."""
    most = max((p for p in passes if p["replicas"] == best["replicas"]), key=lambda p: p["clients"])
    if most is best or most["per_min"] >= best["per_min"] * 0.97:
        return []
    a, b = cpu_per_study(best), cpu_per_study(most)
    rise = sorted(((b[k] - a.get(k, 0.0), k) for k in b), reverse=True)[:2]
    two = [p for p in passes if p["replicas"] > best["replicas"] and p["clients"] == most["clients"]]
    line = (
        f"More clients do not always help: at {most['clients']} clients the same mesh falls to "
        f"{most['per_min']:.1f} studies/min ({most['per_min'] / best['per_min']:.2f}× its best), and a "
        f"study costs {sum(b.values()):.2f} core-s instead of {sum(a.values()):.2f} (the largest rises: "
        + ", ".join(f"`{k}` +{d:.2f}" for d, k in rise)
        + "). With that many studies in flight on so few cores every service's threads contend (Python's "
        "GIL, locks, context switches) and each process does more work per study; the latency column "
        "shows the queueing."
    )
    if two:
        line += (
            f" Two replicas of every service at {most['clients']} clients recover "
            f"{two[0]['per_min']:.1f} studies/min: the same load split over two processes per stage "
            "contends less."
        )
    return ["", line]


def _cpu_table(base: dict[str, Any], passes: list[dict[str, Any]]) -> str:
    busiest = max(passes, key=lambda p: p["clients"] * 10 - p["replicas"])
    per = cpu_per_study(busiest)
    total = sum(per.values())
    rows = sorted(((k, v, v / total * 100) for k, v in per.items() if v > 0.001), key=lambda r: -r[1])
    stages = sorted(base.get("stage_s", {}).items(), key=lambda kv: -kv[1])
    lines = [
        f"CPU seconds per study by process ({label(busiest)}): {total:.2f} core-s per study in all, "
        f"against {sum(v for _, v in stages):.2f} s of wall time per study in process. "
        "The process with the largest share is where more cores (or a GPU) help first.\n",
        table(["process", "CPU s per study", "share %"], [(k, v, s) for k, v, s in rows], align="lrr"),
    ]
    if stages:
        lines += [
            "",
            "The baseline's time per study by step (seconds):",
            "",
            table(["step", "s per study"], stages, align="lr"),
        ]
    return "\n".join(lines)
