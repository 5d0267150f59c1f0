"""Readings of a running local mesh's processes: memory now and at peak, CPU seconds so far.

Each process is read with its descendants (tritonserver's python-backend stubs, Milvus Lite's
server under the search service), from /proc: the kernel's own counters, nothing sampled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.suite.common import peak_rss_mib, rss_mib, tree_pids
from cxrmesh.local.mesh import MeshState

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def mesh_readings(state: MeshState) -> dict[str, dict[str, Any]]:
    """Per process of the mesh (``name`` or ``name[replica]``): rss_mib, peak_mib, cpu_s, children."""
    out: dict[str, dict[str, Any]] = {}
    for proc in state.procs:
        label = proc.name if proc.kind != "service" else f"{proc.name}[{proc.replica}]"
        pids = [p for p in tree_pids(proc.pid) if Path(f"/proc/{p}").exists()]
        out[label] = {
            "kind": proc.kind,
            "rss_mib": sum(_safe(rss_mib, p) for p in pids),
            "peak_mib": sum(_safe(peak_rss_mib, p) for p in pids),
            "cpu_s": sum(cpu_seconds(p) for p in pids),
            "processes": len(pids),
        }
    return out


def _safe(read: Any, pid: int) -> float:
    try:
        return read(pid)
    except OSError:  # the process ended between the listing and the reading
        return 0.0
