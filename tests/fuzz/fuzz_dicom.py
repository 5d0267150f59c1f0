"""Fuzz read_dicom -> validate -> decode_pixels: ``make fuzz`` (100,000 inputs by default).

    .venv/bin/python tests/fuzz/fuzz_dicom.py [--runs N] [--engine atheris|mutate] [--out DIR]

atheris (libFuzzer, coverage-guided) is the engine when it is installed: a Python exception other than
``DicomRejected`` is a crash, an input running past ``--timeout`` seconds a hang, a process growing past
``--rss-mb`` a memory bomb; libFuzzer stops and writes the input to ``DIR/crashes``. Without atheris the
deterministic mutator (``mutate.py``) runs the same target with the same bounds. Either way: copy a
crashing input to tests/data/regressions/<name>.dcm, fix the parser, and tests/unit/test_hostile_dicom.py
keeps it fixed. The numbers of the last run are written to ``DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the `fuzz` package

from fuzz.mutate import mutate
from fuzz.seeds import all_seeds


def _write_seeds(folder: Path) -> list[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = all_seeds()
    for name, raw in seeds.items():
        (folder / name).write_bytes(raw)
    return list(seeds.values())


def run_atheris(args: argparse.Namespace, seed_dir: Path) -> int:
    import atheris

    from fuzz.target import admit_or_refuse

    atheris.instrument_all()  # coverage of every loaded module: pydicom, its plugins, cxrmesh.dicom

    corpus = args.out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = args.out / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        str(corpus),
        str(seed_dir),
        f"-runs={args.runs}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_mb}",
        "-max_len=262144",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, lambda data: admit_or_refuse(data))
    atheris.Fuzz()  # exits the process: 0 when every run passed
    return 0


class _Hang(Exception):
    pass


def run_mutator(args: argparse.Namespace, seeds: list[bytes], log=print) -> dict:
    """The built-in engine: `args.runs` mutated inputs, each under a time bound; stops at a failure."""
    from fuzz.target import admit_or_refuse

    def on_alarm(_signum: int, _frame: object) -> None:
        raise _Hang

    previous = signal.signal(signal.SIGALRM, on_alarm)
    rng = random.Random(args.seed)
    outcomes: dict[str, int] = {}
    start = time.perf_counter()
    failure = None
    try:
        for n in range(args.runs):
            data = mutate(rng, rng.choice(seeds), rng.choice(seeds))
            signal.setitimer(signal.ITIMER_REAL, args.timeout)
            try:
                code = admit_or_refuse(data)
            except _Hang:
                failure = ("hang", n, data, f"over {args.timeout} s")
            except Exception as exc:
                failure = ("crash", n, data, f"{type(exc).__name__}: {exc}"[:500])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if failure:
                break
            outcomes[code] = outcomes.get(code, 0) + 1
            if log and (n + 1) % 10_000 == 0:
                log(f"{n + 1} inputs, {time.perf_counter() - start:.0f} s")
    finally:
        signal.signal(signal.SIGALRM, previous)
    summary = {
        "engine": "mutate",
        "inputs": sum(outcomes.values()) + (1 if failure else 0),
        "seconds": round(time.perf_counter() - start, 1),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "outcomes": dict(sorted(outcomes.items())),
        "failure": None,
    }
    if failure:
        kind, n, data, what = failure
        path = args.out / "crashes" / f"{kind}-{n}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        summary["failure"] = {"kind": kind, "input": n, "what": what, "file": str(path)}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--engine", choices=("atheris", "mutate"), default=None)
    parser.add_argument("--out", type=Path, default=Path("out/fuzz"))
    parser.add_argument("--timeout", type=int, default=5, help="seconds per input before it is a hang")
    parser.add_argument("--rss-mb", type=int, default=3072, help="memory bound of the process (atheris)")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    seed_dir = args.out / "seeds"
    seeds = _write_seeds(seed_dir)
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            print("atheris is not installed: using the built-in mutator", file=sys.stderr)
            engine = "mutate"
    if engine == "atheris":
        return run_atheris(args, seed_dir)
    summary = run_mutator(args, seeds)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 1 if summary["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
