"""The fault suite's results: a JSON file under out/faults and the table in docs/reliability.md.

The table sits between two markers in the doc, so a run rewrites only its own numbers; what the
doc says around it (how to read it, what is not covered) is prose kept by hand.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path

from faults.driver import Outcome

BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"


def _s(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.1f}"


def table(out: Outcome, extra: dict[str, str]) -> str:
    """Markdown: the run's totals, then one row per component killed."""
    acked = len(out.acked)
    lines = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node() or 'this machine'} "
        f"({platform.machine()}, {_cores()} cores); seed **{out.seed}** (replay: "
        f"`CXRMESH_FAULT_SEED={out.seed} make test-faults`); {out.wall_s / 60:.1f} min.",
        "",
        *(f"- {k}: {v}" for k, v in extra.items()),
        "",
        "| studies sent | acknowledged | complete | failed with reason | lost | duplicate rows "
        "| refused (not retried) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {out.sent} | {acked} | {out.complete} | {len(out.failed)} | **{len(out.lost)}** "
        f"| **{out.duplicate_rows}** | {sum(out.refused.values())} |",
        "",
        "Duplicate deliveries (a stage handled a study's event again: at-least-once redelivery "
        "after a kill, or a re-drive; absorbed, one row each), per stage: "
        + (", ".join(f"{svc} {n}" for svc, n in sorted(out.redelivered.items())) or "none")
        + f". Studies re-driven by the reconciler: {out.redriven}. Ingest calls retried by the sender: "
        + f"{sum(a.tries - 1 for a in out.acked)}.",
        "",
        "| component killed (SIGKILL) | at (s) | down (s) | acknowledged before | in flight "
        "| kill → healthy (s) | kill → in-flight settled (s) | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for k in out.kills:
        lines.append(
            f"| {k.component} | {k.at:.0f} | {k.down_s:.1f} | {k.acked_before} | {k.in_flight} "
            f"| {_s(k.healthy_s)} | {_s(k.drained_s)} | {k.error or ''} |"
        )
    if out.failed:
        reasons: dict[str, int] = {}
        for reason in out.failed.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += ["", "Failed studies by reason: " + "; ".join(f"{r} ({n})" for r, n in reasons.items())]
    return "\n".join(lines)


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def write(out: Outcome, extra: dict[str, str], folder: Path, doc: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    data = asdict(out)
    data["refused"] = dict(out.refused)
    for kill in data["kills"]:
        del kill["acked_keys"]  # hundreds of keys each: the counts say what matters
    (folder / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    text = table(out, extra)
    (folder / "table.md").write_text(text + "\n")
    if doc.is_file():
        body = doc.read_text()
        if BEGIN in body and END in body:
            head, rest = body.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return text
