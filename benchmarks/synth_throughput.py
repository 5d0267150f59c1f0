"""Throughput, disk use and peak memory of `cxrmesh synth` (a benchmark, not a test).

Runs the generator as a subprocess and polls the resident memory of its whole process tree
(workers included), then prints studies per second, seconds per study, bytes per study and peak
RSS. Example:

    python benchmarks/synth_throughput.py --n 2000 --no-dicom
    python benchmarks/synth_throughput.py --n 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tree_rss_kib(root: int) -> int:
    """Sum of VmRSS over ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        pid, ppid = int(entry), int(fields.get("PPid", "0").strip())
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-dicom", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="keep the corpus here instead of a temp dir")
    args = ap.parse_args()

    out = args.keep or Path(tempfile.mkdtemp(prefix="synth-bench-")) / "corpus"
    cmd = [sys.executable, "-m", "cxrmesh.cli", "synth", "--n", str(args.n), "--seed", str(args.seed)]
    cmd += ["--out", str(out), "--workers", str(args.workers)]
    if args.no_dicom:
        cmd.append("--no-dicom")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(0.25)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"generator failed with exit code {proc.returncode}")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    dicom = (
        sum(p.stat().st_size for p in (out / "dicom").rglob("*") if p.is_file())
        if (out / "dicom").exists()
        else 0
    )
    kind = "no DICOM" if args.no_dicom else "with DICOM"
    print(f"studies            {args.n}  ({kind}, {os.cpu_count()} cores)")
    print(f"wall time          {elapsed:.1f} s")
    print(f"rate               {args.n / elapsed:.2f} studies/s  ({elapsed / args.n:.3f} s/study)")
    print(f"disk               {size / 2**20:.0f} MiB total, {size / args.n / 2**10:.0f} KiB/study")
    if dicom:
        print(f"  of which DICOM   {dicom / 2**20:.0f} MiB, {dicom / args.n / 2**20:.1f} MiB/study")
    print(f"peak RSS (tree)    {peak / 2**10:.0f} MiB")
    if not args.keep:
        shutil.rmtree(out.parent)


if __name__ == "__main__":
    main()
