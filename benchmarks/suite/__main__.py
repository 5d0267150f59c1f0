"""Run the benchmark sections in one place and write the page: ``python -m benchmarks.suite``.

    python -m benchmarks.suite                 # everything (make bench): docs/benchmarks.md + figures
    python -m benchmarks.suite --quick         # small sizes (make bench-quick, CI): out/bench/
    python -m benchmarks.suite --only search   # one section; the page keeps the others' stored results
    python -m benchmarks.suite --render-only   # the page again from out/bench/results.json

A section that crashes is reported and the run goes on; the exit status is then 1 (CI fails on a
crash, never on a number). Derived sections (memory, costs) measure nothing themselves: they read
the stored results of the sections they name in ``SOURCES``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.suite.common import ROOT, Machine

MEASURED = ("pipeline", "inference", "search", "ingestion", "gpu")
DERIVED = ("memory", "costs")
ORDER = ("pipeline", "inference", "search", "ingestion", "memory", "costs", "gpu")


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    out = ROOT / "out" / "bench" if args.out is None else args.out
    page = args.page or (out / "benchmarks.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    figures = page.parent / "figures" / "benchmarks"
    store = out / ("results-quick.json" if args.quick else "results.json")
    stored = json.loads(store.read_text()) if store.is_file() else {"sections": {}}
    crashed: list[str] = []
    if not args.render_only:
        stored["machine"] = Machine.here().__dict__
        stored["quick"] = args.quick
        started = time.monotonic()
        for name in [n for n in MEASURED if n in args.only]:
            ok = _measure(name, args.quick, out / "work" / name, stored)
            crashed += [] if ok else [name]
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(stored, indent=1, default=float))
        stored["minutes"] = round((time.monotonic() - started) / 60, 1)
        store.write_text(json.dumps(stored, indent=1, default=float))
        if not args.keep:
            shutil.rmtree(out / "work", ignore_errors=True)
    crashed += _write_page(stored, page, figures)
    print(f"page: {page}\nresults: {store}")
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
    return 1 if crashed else 0


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, about 5 minutes (CI)")
    ap.add_argument(
        "--only", default=",".join(ORDER), help=f"comma-separated sections of: {', '.join(ORDER)}"
    )
    ap.add_argument("--render-only", action="store_true", help="write the page from the stored results")
    ap.add_argument("--out", type=Path, default=None, help="results and scratch folder (default out/bench)")
    ap.add_argument("--page", type=Path, default=None, help="the page to write (default docs/benchmarks.md)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (corpora, mesh logs)")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(ORDER)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(ORDER)}")
    return args


def _measure(name: str, quick: bool, work: Path, stored: dict[str, Any]) -> bool:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"== {name} {'(quick)' if quick else ''}", flush=True)
    t0 = time.monotonic()
    try:
        results = importlib.import_module(f"benchmarks.suite.{name}").run(quick, work)
    except Exception:
        traceback.print_exc()
        stored["sections"][name] = {"crashed": traceback.format_exc(limit=3)}
        return False
    minutes = (time.monotonic() - t0) / 60
    stored["sections"][name] = {"results": json.loads(json.dumps(results, default=float)), "minutes": minutes}
    print(f"== {name} done in {minutes:.1f} min", flush=True)
    return True


def _write_page(stored: dict[str, Any], page: Path, figures: Path) -> list[str]:
    machine = stored.get("machine", {})
    sections = stored["sections"]
    parts = [_header(stored, machine)]
    crashed = []
    for name in ORDER:
        module = importlib.import_module(f"benchmarks.suite.{name}")
        if name in DERIVED:
            sources = {s: sections[s]["results"] for s in module.SOURCES if "results" in sections.get(s, {})}
            if not sources:
                continue
            got: Any = sources
        else:
            entry = sections.get(name)
            if entry is None:
                continue
            if "results" not in entry:
                crash = entry["crashed"]
                parts.append(
                    f"## {module.TITLE}\n\nThis section crashed in the last run:\n\n```\n{crash}\n```"
                )
                continue
            got = entry["results"]
        try:
            text = module.render(got, figures)
        except Exception:
            traceback.print_exc()
            crashed.append(f"{name} (render)")
            continue
        took = sections.get(name, {}).get("minutes")
        parts.append(
            f'<a id="{name}"></a>\n\n' + text + (f"\n\n*Measured in {took:.1f} min.*" if took else "")
        )
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n\n".join(parts).rstrip() + "\n")
    return crashed


def _header(stored: dict[str, Any], m: dict[str, Any]) -> str:
    mode = (
        "`make bench-quick` (small sizes: proves the code runs, not the numbers)"
        if stored.get("quick")
        else "`make bench`"
    )
    return "\n".join(
        [
            "# Benchmarks: what the mesh costs and what it buys",
            "",
            "<!-- generated by `make bench` (benchmarks/suite): edit the code, not this page -->",
            "",
            f"Every number on this page comes from one run of {mode}, with each baseline measured in the "
            f"same run: {m.get('started', '?')} on `{m.get('host', '?')}` ({m.get('cpu', '?')}, "
            f"{m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB, GPU: {m.get('gpu', '?')}; "
            f"Python {m.get('python', '?')}; revision `{m.get('revision', '?')}`), "
            f"{stored.get('minutes', '?')} minutes in all. "
            "Ratios compare figures of this run only. Medians are over repeats where a row says so; "
            "`a (b–c)` is median (min–max). The raw figures are in `out/bench/results.json` after a run.",
            "",
            "Contents: " + ", ".join(f"[{n}](#{n})" for n in ORDER) + ".",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
