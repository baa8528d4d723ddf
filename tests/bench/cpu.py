"""CPU per file by process and by mode (user, system) of a running daemon (a benchmark,
not a test): ``throughput.py``'s running daemon on N small files, its processes'
CPU times sampled around the timed part.

    .venv/bin/python tests/bench/cpu.py [--files 5000] [--runs 5] [--durable true|false|both] [--dir DIR]

Each run builds a fresh watch dir; with ``--durable both`` the two modes alternate
within each run, so the machine's drift weighs on both alike. To compare two commits,
run it from a worktree of each, alternating.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import throughput  # noqa: E402  its workload, config and running daemon


def one_run(base: Path, files: int, lines: int, durable: bool) -> dict[str, float]:
    """files/s and µs per file: supervisor user/system, the other processes user/system."""
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    config = throughput.write_config(base / "run", 2, durable)
    workload = throughput.build_workload(base, "small", files, lines)
    throughput.fresh_watch_dir(config.parent / "watch_dir", workload)
    measure = throughput.run_running(config, workload, 2)
    cpu, per_file = measure.cpu, 1e6 / files

    def others(mode: str) -> float:
        return (cpu.get(f"workers {mode}", 0.0) + cpu.get(f"other {mode}", 0.0)) * per_file

    return {"files/s": files / measure.seconds, "supervisor user": cpu["supervisor user"] * per_file,
            "supervisor system": cpu["supervisor system"] * per_file, "others user": others("user"),
            "others system": others("system")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--durable", choices=("true", "false", "both"), default="true")
    parser.add_argument("--dir", type=Path, default=ROOT / ".scratch", help="where the runs go (default: on the disk)")
    args = parser.parse_args(argv)
    modes = {"true": [True], "false": [False], "both": [True, False]}[args.durable]
    results: dict[bool, list[dict[str, float]]] = {mode: [] for mode in modes}
    base = args.dir / "bench-cpu"
    try:
        for _ in range(args.runs):
            for durable in modes:
                results[durable].append(one_run(base, args.files, args.lines, durable))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"running daemon, 2 workers, {args.files:,} files x {args.lines} lines, in {args.dir}; "
          f"µs per file, each run then the median")
    for durable, runs in results.items():
        print(f"  durable = {str(durable).lower()}")
        for key in runs[0]:
            values = [r[key] for r in runs]
            print(f"    {key:18} {statistics.median(values):8,.0f}   runs: {', '.join(f'{v:,.0f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
