"""Where the supervisor's time per small file goes (a benchmark, not a test):
``supervisor.py --once`` on N small files under the py-spy sampling profiler, its
loop's samples sorted into what they were doing (a rename, a lock, SQLite, the
journal, the rest), each share turned into µs per file with the supervisor's CPU time
measured in the same run.

    .venv/bin/python tests/bench/breakdown.py [--files 5000] [--dir /dev/shm] [--rate 1000]

py-spy samples without stopping the process (``--nonblocking``); the shares are of the
loop's samples (start-up and the threads that feed it are left out), so the µs are
the loop's: the supervisor's CPU per file times the loop's share of its samples.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.throughput import build_workload, fresh_watch_dir, write_config  # noqa: E402

# What a frame of the loop's stack says it was doing; the first that matches counts.
CATEGORIES = {
    "rename: the claim and the move to processed/ (renameat2)": ("_move (workers/fs.py",),
    "rename: outputs into place (os.replace)": ("rename_staged (workers/outputs.py",),
    "flock: lock, unlock": ("LockTable.try_acquire", "LockTable.release"),
    "lstat: the final name free on disk": ("_used (workers/queue.py",),
    "lstat: staged outputs and input, at commit": ("Commit._still_ready",),
    "SQLite: claim rows and reservations": ("Store.claim",),
    "SQLite: committing, finished, totals": ("Store.committing", "Outcomes.write_state"),
    "journal: entries and their writes": ("journal_entry", "Journal.write", "Ledger.flush"),
}
REST = "the rest: Python of the intake, ledger, flights, commit and stats"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--rate", type=int, default=1000, help="samples a second")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy not found: make test installs it (requirements-dev.txt)")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-breakdown-") as tmp:
        base = Path(tmp)
        config = write_config(base / "run", 2, True)
        workload = build_workload(base, "small", args.files, args.lines)
        fresh_watch_dir(config.parent / "watch_dir", workload)
        samples = base / "samples.txt"
        spy = subprocess.Popen([py_spy, "record", "--nonblocking", "-r", str(args.rate), "-f", "raw", "-o",
                                str(samples), "--", sys.executable, str(ROOT / "supervisor.py"), "-c", str(config),
                                "--once"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu = 0.0
        supervisor: psutil.Process | None = None
        while spy.poll() is None:  # the supervisor's CPU time, last seen just before it exits
            try:
                if supervisor is None:
                    supervisor = next(iter(psutil.Process(spy.pid).children()), None)
                if supervisor is not None:
                    times = supervisor.cpu_times()
                    cpu = times.user + times.system
            except psutil.Error:
                pass
            time.sleep(0.01)
        done = len(os.listdir(config.parent / "watch_dir" / "processed"))
        if spy.returncode != 0 or done != args.files:
            raise SystemExit(f"the run failed: py-spy exited {spy.returncode}, {done} of {args.files} processed")
        counts: collections.Counter[str] = collections.Counter()
        loop = every = 0
        for line in samples.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            every += int(n)
            if "Loop.step" not in stack:
                continue
            loop += int(n)
            frames = stack.split(";")
            what = next((name for name, keys in CATEGORIES.items()
                         if any(key in frame for frame in frames for key in keys)), REST)
            counts[what] += int(n)
    per_file = cpu / args.files * 1e6
    loop_us = per_file * loop / every
    print(f"{args.files:,} files x {args.lines} lines, --once, durable, 2 workers, in {args.dir}")
    print(f"supervisor CPU per file {per_file:.0f} µs (start-up included); its loop {loop_us:.0f} µs "
          f"({loop / every:.0%} of its samples)")
    for what, n in counts.most_common():
        print(f"  {n / loop:6.1%} {n / loop * loop_us:6.0f} µs  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
