"""Several supervisors on one watch dir against one (a benchmark, not a test): how much
of the small-file rate the single supervisor's loop bounds.

    .venv/bin/python tests/bench/supervisors.py [--files 5000] [--runs 3] [--dir DIR]
        [--layouts 1x2,2x1]

A layout ``SxW`` is S supervisors started on the same watch dir, each with W workers
(``1x2`` is the shipped shape: one supervisor, two workers). Each run renames the
workload into ``unprocessed/`` of running supervisors, as ``throughput.py``'s running
daemon does, and times the last ``processed`` journal line; the journal must then hold
each file exactly once, whichever supervisor took it. Layouts alternate within a run,
so a noisy machine weighs on each alike; medians of the runs are reported, with the
ratio of each layout to the first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.throughput import (  # noqa: E402  the same workload, config and daemon harness
    RUN_TIMEOUT_S,
    BenchError,
    Workload,
    build_workload,
    fresh_watch_dir,
    parse_ts,
    running_daemon,
    write_config,
)
from tests.daemon import journal, wait_for  # noqa: E402


def run_layout(config: Path, workload: Workload, supervisors: int, workers: int) -> float:
    """Files per second of ``supervisors`` running supervisors with ``workers`` each."""
    watch = config.parent / "watch_dir"
    fresh_watch_dir(watch, workload)
    staging = config.parent / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    os.rename(watch / "unprocessed", staging)
    (watch / "unprocessed").mkdir()
    with contextlib.ExitStack() as stack:
        daemons = [stack.enter_context(running_daemon(config, workers, f"supervisor-{i}"))
                   for i in range(supervisors)]
        for daemon in daemons:
            wait_for(lambda d=daemon: "dashboard at" in d.log(), 30, "a supervisor's dashboard (its start complete)")
        started = time.time()
        for name in workload.names:
            os.rename(staging / name, watch / "unprocessed" / name)
        wait_for(lambda: len(os.listdir(watch / "processed")) >= len(workload.names), RUN_TIMEOUT_S,
                 "the supervisors to process every file", interval_s=0.05)
    done = [e for e in journal(watch) if e["event"] == "processed"]
    if sorted(e["file"] for e in done) != sorted(workload.names):
        raise BenchError(f"{supervisors}x{workers}: the journal has {len(done)} processed lines for "
                         f"{len(workload.names)} files (each must be there once)")
    return len(done) / (max(parse_ts(e["ts"]) for e in done) - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layouts", default="1x2,2x1", help="SxW: S supervisors of W workers each")
    parser.add_argument("--dir", type=Path, default=ROOT / ".scratch",
                        help="where the workload and the watch dir go (default: on the disk)")
    args = parser.parse_args(argv)
    layouts = [tuple(int(n) for n in layout.split("x")) for layout in args.layouts.split(",")]
    base = args.dir / "bench-supervisors"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    try:
        config = write_config(base / "run", 1, True)
        workload = build_workload(base, "small", args.files, args.lines)
        rates: dict[tuple[int, ...], list[float]] = {layout: [] for layout in layouts}
        for _ in range(args.runs):
            for layout in layouts:
                rates[layout].append(run_layout(config, workload, *layout))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    first = statistics.median(rates[layouts[0]])
    print(f"{args.files:,} files x {args.lines} lines, {args.runs} runs (medians), in {args.dir}")
    for (supervisors, workers), values in rates.items():
        median = statistics.median(values)
        print(f"  {supervisors} supervisor(s) x {workers} worker(s)  {median:8,.0f} files/s  "
              f"{median / first:5.2f}x   runs: {', '.join(f'{v:,.0f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
