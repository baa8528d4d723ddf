"""System calls and state-database transactions per file, by process (a benchmark, not
a test): what BENCHMARKS.md's per-file account is measured with.

    .venv/bin/python tests/bench/syscalls.py [--files 1000] [--lines 20] [--workers 2]
        [--durable true|false|both] [--dir DIR] [--top 25]

``supervisor.py --once`` runs under ``strace -ff`` (every thread of every process, each
to its own file) on a fresh watch dir of N small files, then again on 2N: the
difference divided by N is the per-file count, the fixed costs (interpreter start,
worker spawn, shutdown) cancelled. Calls are counted by the process they belong to
(threads are followed through ``clone``): the supervisor (its loop and its threads:
file events, the inbox pumps), the workers (the pids its journal names) and the rest
(the manager process, the dashboard, the resource tracker). State-database write
transactions are counted from the supervisor's ``fcntl`` locks on ``state.db-shm``'s
write-lock byte (SQLite's WAL write lock, taken once per write transaction).

strace slows every call: the counts are exact, the times are not measured here (CPU µs
per file come from ``tests/bench/throughput.py``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.throughput import BENCHTAG, CONFIG  # noqa: E402  the same config and processor

CALL = re.compile(r"^(?:\d+\.\d+ )?([a-z_0-9]+)\(")
CLONE = re.compile(r"^(?:\d+\.\d+ )?(clone3?|fork|vfork)\((.*)\)\s+=\s+(\d+)")
WAL_WRITE_LOCK = re.compile(r"fcntl\(\d+<[^>]*state\.db-shm>, F_SETLK, \{l_type=F_WRLCK, l_whence=SEEK_SET, "
                            r"l_start=120, l_len=1")
ROLES = ("supervisor", "workers", "other")


@dataclass
class Count:
    calls: dict[str, collections.Counter[str]] = field(default_factory=lambda: {r: collections.Counter()
                                                                                 for r in ROLES})
    transactions: int = 0


def run_traced(base: Path, files: int, lines: int, workers: int, durable: bool) -> Count:
    """One traced ``--once`` run on ``files`` fresh files; the calls by role."""
    if base.exists():
        shutil.rmtree(base)
    unprocessed = base / "watch_dir" / "unprocessed"
    unprocessed.mkdir(parents=True)
    (base / "benchtag.py").write_text(BENCHTAG)
    (base / "config.toml").write_text(CONFIG.format(workers=workers, durable=str(durable).lower()))
    past = time.time() - 10
    for i in range(files):
        path = unprocessed / f"f-{i:06d}.log"
        path.write_text("".join(f"2026-12-07T10:00:{j % 60:02d} {('INFO', 'WARN', 'ERROR')[j % 3]} "
                                f"request {i}-{j} took {j}ms\n" for j in range(lines)))
        os.utime(path, (past, past))
    os.sync()
    traces = base / "trace"
    traces.mkdir()
    cmd = ["strace", "-ff", "-y", "-qq", "-o", str(traces / "t"), sys.executable, str(ROOT / "supervisor.py"), "-c",
           str(base / "config.toml"), "--once", "--workers", str(workers)]
    done = subprocess.run(cmd, cwd=base, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"supervisor --once failed ({done.returncode}):\n{done.stderr[-2000:]}")
    journal = [json.loads(line) for line in (base / "watch_dir" / "input.log").read_text().splitlines()
               if line.strip()]
    processed = [e for e in journal if e.get("event") == "processed"]
    if len(processed) != files:
        raise SystemExit(f"{len(processed)} of {files} files processed: see {base}")
    return count_calls(traces, {int(e["worker"]) for e in processed})


def count_calls(traces: Path, worker_pids: set[int]) -> Count:
    """Read every thread's trace; attribute it to its process (through clone), then role."""
    by_tid = {int(p.name.split(".")[-1]): p for p in traces.iterdir()}
    process_of: dict[int, int] = {}
    first = min(by_tid)  # strace's own child: the supervisor's main thread
    process_of[first] = first
    texts = {tid: path.read_text(errors="replace").splitlines() for tid, path in by_tid.items()}
    for tid in sorted(by_tid):  # a parent's id is lower than its children's (no pid wrap in a short run)
        process_of.setdefault(tid, tid)
        for line in texts[tid]:
            m = CLONE.match(line)
            if m:
                child = int(m[3])
                process_of[child] = process_of[tid] if "CLONE_THREAD" in m[2] else child
    supervisor = process_of[first]
    count = Count()
    for tid, lines in texts.items():
        pid = process_of.get(tid, tid)
        role = "supervisor" if pid == supervisor else "workers" if pid in worker_pids else "other"
        counter = count.calls[role]
        for line in lines:
            m = CALL.match(line)
            if m:
                counter[m[1]] += 1
            if role == "supervisor" and WAL_WRITE_LOCK.search(line):
                count.transactions += 1
    return count


def per_file(small: Count, large: Count, n: int) -> tuple[dict[str, dict[str, float]], float]:
    table = {role: {call: (large.calls[role][call] - small.calls[role][call]) / n
                    for call in set(large.calls[role]) | set(small.calls[role])} for role in ROLES}
    return table, (large.transactions - small.transactions) / n


def report(title: str, table: dict[str, dict[str, float]], transactions: float, top: int) -> None:
    print(f"\n{title}")
    for role in ROLES:
        calls = {c: v for c, v in table[role].items() if abs(v) >= 0.05}
        total = sum(table[role].values())
        print(f"  {role}: {total:.1f} system calls per file")
        for call, v in sorted(calls.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {call:<20} {v:8.2f}")
    print(f"  supervisor's state-database write transactions per file: {transactions:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--durable", choices=("true", "false", "both"), default="both")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--dir", type=Path, default=ROOT / ".scratch",
                        help="where the watch dirs go (default: %(default)s, on the disk)")
    args = parser.parse_args(argv)
    if not shutil.which("strace"):
        raise SystemExit("syscalls: needs strace (apt-get install strace)")
    args.dir.mkdir(parents=True, exist_ok=True)
    modes = [True, False] if args.durable == "both" else [args.durable == "true"]
    with tempfile.TemporaryDirectory(prefix="fm-syscalls-", dir=args.dir) as tmp:
        for durable in modes:
            small = run_traced(Path(tmp) / "n", args.files, args.lines, args.workers, durable)
            large = run_traced(Path(tmp) / "2n", 2 * args.files, args.lines, args.workers, durable)
            table, tx = per_file(small, large, args.files)
            report(f"durable = {str(durable).lower()}: per file ({args.files} -> {2 * args.files} files of "
                   f"{args.lines} lines, --once, {args.workers} workers)", table, tx, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
