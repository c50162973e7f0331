"""``python -m bench [--smoke] [--only NAME ...] [--out FILE] [--json FILE]``.

Runs every benchmark, prints the table and writes it with the machine description to
``bench/results.md`` (not in ``--smoke`` mode unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench import Row, fmt_s, machine_info, markdown_table, quiet_logs, run_benchmark, skipped

#: module name -> title, in the order they run (the app benchmark last)
BENCHMARKS: dict[str, str] = {
    "ingest_overhead": "ingest overhead",
    "batch_scaling": "batch scaling",
    "validation_throughput": "validation throughput",
    "cli_startup": "CLI start",
    "rollback_scale": "rollback and promotion",
    "app_responsiveness": "app responsiveness",
}
RESULTS = Path(__file__).resolve().parent / "results.md"


def run_isolated(name: str, smoke: bool) -> list[Row]:
    """Each benchmark in its own spawned process: no caches, patches or garbage-collector
    load carried over from the one before."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(run_benchmark, name, smoke).result()


def run_all(names: list[str], *, smoke: bool) -> tuple[list[Row], dict[str, float]]:
    rows: list[Row] = []
    durations: dict[str, float] = {}
    for name in names:
        title = BENCHMARKS[name]
        print(f"[bench] {title} …", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            got = run_isolated(name, smoke)
        except Exception as exc:  # one broken benchmark must not hide the others
            traceback.print_exc()
            got = skipped(title, f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:300])
        durations[title] = time.perf_counter() - t0
        print(f"[bench] {title}: {fmt_s(durations[title])}", file=sys.stderr, flush=True)
        rows += got
    return rows, durations


def render(
    info: dict[str, str], rows: list[Row], durations: dict[str, float], *, smoke: bool
) -> str:
    """The results page; ``info`` is :func:`~bench.machine_info` taken before the run."""
    lines = [
        "# geomesh benchmark results",
        "",
        "Written by `make bench` (`python -m bench`"
        + (" --smoke" if smoke else "")
        + "). Every ratio compares geomesh with a baseline measured in the same run; "
        "`met?` says whether the target holds. Timings are medians unless stated.",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
        "## Run time per benchmark",
        "",
        *(f"- {k}: {fmt_s(v)}" for k, v in durations.items()),
        f"- total: {fmt_s(sum(durations.values()))}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not numbers")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only these benchmarks"
    )
    parser.add_argument("--out", type=Path, help=f"markdown output (default {RESULTS})")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    names = [n for n in BENCHMARKS if not args.only or n in args.only]
    quiet_logs()
    info = machine_info()  # before the run: its date and load are the run's start
    rows, durations = run_all(names, smoke=args.smoke)
    text = render(info, rows, durations, smoke=args.smoke)
    print(markdown_table(rows))
    print(f"\ntotal {fmt_s(sum(durations.values()))}")
    out = args.out or (None if args.smoke else RESULTS)
    if out is not None:
        out.write_text(text)
        print(f"written to {out}")
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
