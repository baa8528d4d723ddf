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
import contextlib
import shutil
import statistics
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import throughput  # noqa: E402  its workload, config and running daemon


def by_mode(root: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds so far of a process and all its descendants."""
    top = psutil.Process(root)
    found = {}
    for p in [top, *top.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            found[p.pid] = (t.user, t.system)
    return found


def one_run(base: Path, files: int, lines: int, durable: bool) -> dict[str, float]:
    """files/s and µs per file: supervisor user/system, the other processes user/system."""
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    config = throughput.write_config(base / "run", 2, durable)
    workload = throughput.build_workload(base, "small", files, lines)
    throughput.fresh_watch_dir(config.parent / "watch_dir", workload)
    samples: list[tuple[int, dict[int, tuple[float, float]]]] = []
    plain = throughput.cpu_by_pid

    def sampled(root: int) -> dict[int, float]:
        samples.append((root, by_mode(root)))
        return plain(root)

    throughput.cpu_by_pid = sampled  # run_running samples twice: before and after the timed part
    try:
        measure = throughput.run_running(config, workload, 2)
    finally:
        throughput.cpu_by_pid = plain
    (root, before), (_, after) = samples
    per_file = 1e6 / files

    def spent(pids: list[int], mode: int) -> float:
        return sum(after[p][mode] - before.get(p, (0.0, 0.0))[mode] for p in pids) * per_file

    others = [p for p in after if p != root]
    return {"files/s": files / measure.seconds, "supervisor user": spent([root], 0),
            "supervisor system": spent([root], 1), "others user": spent(others, 0),
            "others system": spent(others, 1)}


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
