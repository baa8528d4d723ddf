"""The intake against a backlog: per-file cost and supervisor memory as the number of
waiting files grows, and the cost of a producer trickling files in meanwhile (a
benchmark, not a test).

    .venv/bin/python tests/bench/backlog.py [--sizes 5000,100000,1000000] [--trickle 200000]
        [--rate 100] [--workers 2] [--dir DIR] [--filesystem] [--tree-dirs 10000]

For each size N: a supervisor (normal mode, 2 workers, ``durable = true``, the built-in
``upper`` pipeline, so the figure is the intake's and not a processor's) runs on an empty
watch dir; N tiny files (one line each, mtimes one millisecond apart in the past, oldest
renamed first) are renamed into ``unprocessed/`` from a folder beside it, as after an
outage. Timed from the first rename to the last ``processed`` journal line. Reported:
files/s, the per-file cost (its inverse) against the smallest size's, the supervisor's
peak RSS (psutil, sampled every 0.2 s), ``state.db`` bytes per file, and how many claims
came out of oldest-first order (a claim of a file older than one claimed before it).

``--trickle T``: T files renamed in at once, then, while they drain, a producer renames in
``--rate`` new files a second; throughput against the same T without the producer.
Targets (issue 11): per-file cost at 1,000,000 <= 1.2x its cost at 5,000; RSS <= 80 MB
at 1,000,000; the trickle costs <= 10 %.

``--tree-dirs D`` (issue 21): each size but the first is run as a tree instead, with
``recursive = true``: its files spread over D directories (``d00042/a-0420000.log``),
each directory made and filled beside and renamed into ``unprocessed/`` whole (oldest
first), as ``mv batch/ unprocessed/`` hands one over; its per-file cost is compared with
the first size's, flat. Target: 1,000,000 files over 10,000 directories within 1.25x the
flat 5,000's cost, RSS <= 80 MB. Claims out of order count as in the flat case: the
directories are renamed in oldest first, so a file claimed after a newer one waited
while the newer one was claimed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.daemon import Daemon, PeakRSS, aged_files, alive, event_time, wait_for  # noqa: E402

CONFIG = """\
[watch]
dir = "watch_dir"
recursive = {recursive}
settle = 0.5
poll_interval = 1.0
journal_max_mb = 1024  # the whole run's journal is kept, for the order check
backlog_window = {window}

[web]
port = 0

[workers]
count = {workers}

[pipeline.nodes.start]
processor = "upper"
"""
TIMEOUT_S = 6 * 3600.0


class BenchError(Exception):
    """The daemon did not do the work, or misbehaved."""


@dataclass(frozen=True)
class Run:
    files: int
    seconds: float
    peak_rss: int
    db_bytes: int
    out_of_order: int
    overflows: int = 0  # "file events were lost" in the daemon's log

    @property
    def rate(self) -> float:
        return self.files / self.seconds


def make_files(staging: Path, count: int, prefix: str, oldest: float) -> list[str]:
    names = aged_files(staging, count, prefix, oldest)
    os.sync()
    return names


def make_tree(staging: Path, count: int, dirs: int, oldest: float) -> list[str]:
    """``count`` one-line files spread over ``dirs`` directories of ``staging``, the
    oldest in ``d00000/`` and so on (a directory per hour, say), mtimes one millisecond
    apart; their relative paths, oldest first."""
    names = []
    for i in range(count):
        name = f"d{i * dirs // count:05d}/a-{i:07d}.log"
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            f.write(f"2026-12-01T00:00:00 INFO a {i}\n")
        os.utime(path, (oldest + i / 1000, oldest + i / 1000))
        names.append(name)
    os.sync()
    return names


def out_of_order(watch: Path) -> int:
    """Claims of a file older (by its mtime in the name's order) than one claimed before,
    read from the journal a line at a time."""
    count, newest = 0, ""
    for path in sorted(watch.glob("input.log*"), reverse=True):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if '"claimed"' not in line:
                    continue
                entry = json.loads(line)
                if entry["event"] != "claimed":
                    continue
                name = entry["file"].rpartition("/")[2]
                if name < newest:  # names sort as their mtimes do (made so; trickle files sort after)
                    count += 1
                newest = max(newest, name)
    return count


def run_one(base: Path, files: int, workers: int, trickle_rate: float = 0.0, dirs: int = 0,
            window: int = 100_000) -> Run:
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    (base / "config.toml").write_text(CONFIG.format(workers=workers, recursive=str(dirs > 0).lower(), window=window))
    watch, staging = base / "watch_dir", base / "staging"
    (watch / "unprocessed").mkdir(parents=True)
    oldest = time.time() - 3 * 86400
    names = make_tree(staging, files, dirs, oldest) if dirs else make_files(staging, files, "a", oldest)
    handed = sorted({n.split("/")[0] for n in names}) if dirs else names  # whole directories, or files
    daemon = Daemon(base / "config.toml", name="backlog")
    children: list[int] = []
    stop_trickle = threading.Event()
    trickled: list[str] = []
    try:
        wait_for(lambda: "foldermill started" in daemon.log() or not daemon.alive(), 60, "the supervisor to start")
        if not daemon.alive():
            raise BenchError(f"supervisor exited at start:\n{daemon.log()[-2000:]}")
        sampler = PeakRSS(daemon.pid)
        sampler.start()
        started = time.time()
        for name in handed:
            os.rename(staging / name, watch / "unprocessed" / name)
        if trickle_rate:
            producer = threading.Thread(target=trickle, args=(watch, trickle_rate, stop_trickle, trickled),
                                        daemon=True)
            producer.start()
        done = Done(watch, names)
        wait_for(done, TIMEOUT_S, f"{files:,} files processed", interval_s=0.5)
        finished = last_processed_at(watch)
        stop_trickle.set()
        if trickle_rate:
            producer.join()
            wait_for(lambda: all_processed(watch, trickled), 120, "the trickled files processed", interval_s=0.2)
        sampler.done.set()
        children = [c.pid for c in daemon.children()]
        code = daemon.stop(timeout_s=120)
    except BaseException:
        children += [c.pid for c in daemon.children()]
        if daemon.alive():
            daemon.kill()
        for pid in alive(children):
            psutil.Process(pid).kill()
        raise
    if code != 0:
        raise BenchError(f"supervisor exited with status {code}:\n{daemon.log()[-2000:]}")
    wait_for(lambda: not alive(children), 10, "the supervisor's children to exit")
    db = watch / ".foldermill" / "state.db"
    db_bytes = sum(p.stat().st_size for p in db.parent.glob("state.db*"))
    # Throughput of the backlog alone: its files over the time they took (the trickle's
    # files are extra work done in that time, which is the point of the comparison).
    return Run(files, finished - started, sampler.peak, db_bytes, out_of_order(watch),
               daemon.log().count("file events were lost"))


class Done:
    """Whether every name is in processed/, looked at no more than 2 % of the time (a
    listing of a million names takes most of a second, on the cores the daemon uses)."""

    def __init__(self, watch: Path, names: list[str]) -> None:
        self.processed = watch / "processed"
        self.names = names
        self.next_look = 0.0

    def __call__(self) -> bool:
        if time.monotonic() < self.next_look:
            return False
        started = time.monotonic()
        if any("/" in n for n in self.names[:1]):  # a tree: counted, then the names checked once
            count = sum(len(files) for _, _, files in os.walk(self.processed))
            present = [str(Path(d, f).relative_to(self.processed)) for d, _, fs in os.walk(self.processed)
                       for f in fs] if count >= len(self.names) else []
        else:
            present = os.listdir(self.processed)
        cost = time.monotonic() - started
        self.next_look = time.monotonic() + 50 * cost
        if len(present) < len(self.names):
            return False
        have = set(present)
        return all(n in have for n in self.names)


def all_processed(watch: Path, names: list[str]) -> bool:
    return Done(watch, names)()


def last_processed_at(watch: Path) -> float:
    """The time of the newest "processed" journal line (the end of the run, whenever the
    poll above noticed it)."""
    with open(watch / "input.log", "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - (1 << 20)))
        lines = f.read().splitlines()[1:]
    for line in reversed(lines):
        entry = json.loads(line)
        if entry["event"] == "processed":
            return event_time(entry)
    raise BenchError("no processed line in the journal's last MiB")


def trickle(watch: Path, rate: float, stop: threading.Event, made: list[str]) -> None:
    """A producer: ``rate`` new files a second (written beside, renamed in), newest names."""
    staging = watch.parent / "trickle"
    staging.mkdir(exist_ok=True)
    i = 0
    next_at = time.monotonic()
    while not stop.is_set():
        name = f"z-{i:07d}.log"
        path = staging / name
        path.write_text(f"2026-12-01T00:00:00 INFO trickle {i}\n")
        os.rename(path, watch / "unprocessed" / name)
        made.append(name)
        i += 1
        next_at += 1 / rate
        stop.wait(max(0.0, next_at - time.monotonic()))


def filesystem_alone(base: Path, files: int) -> float:
    """The floor under the daemon's per-file cost: a hand-written loop doing on the same
    disk the filesystem work foldermill does per tiny file, and nothing else (no locks,
    no state, no workers): look up whether the final names are free in processed/,
    failed/ and output/, rename the file into underprocess/, write its output beside and
    rename it into output/, rename the input into processed/. Seconds per file."""
    if base.exists():
        shutil.rmtree(base)
    folders = {f: base / f for f in ("unprocessed", "underprocess", "processed", "failed", "output")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    names = make_files(folders["unprocessed"], files, "a", time.time() - 3 * 86400)
    started = time.perf_counter()
    unp, under, proc, fail, out = (str(folders[f]) + "/" for f in folders)
    for name in names:
        for used in (proc + name, fail + name, out + name, fail + name + ".reason"):
            os.path.lexists(used)
        os.rename(unp + name, under + name)
        with open(under + name, "rb") as f:
            data = f.read().upper()
        tmp = f"{out}.fm-{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, out + name)
        os.rename(under + name, proc + name)
    seconds = time.perf_counter() - started
    shutil.rmtree(base)
    return seconds / files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="5000,100000,1000000")
    parser.add_argument("--trickle", type=int, default=200_000, help="backlog for the trickle case (0: skip)")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=ROOT / ".scratch")
    parser.add_argument("--window", type=int, default=100_000, help="[watch] backlog_window of every run")
    parser.add_argument("--tree-dirs", type=int, default=0,
                        help="run each size but the first as a tree over this many directories")
    parser.add_argument("--filesystem", action="store_true",
                        help="also time the filesystem's own work per file at each size (a hand-written loop)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fm-backlog-", dir=args.dir) as tmp:
        runs = []
        for n in sizes[:1] if args.tree_dirs else sizes:  # with --tree-dirs the others run as trees only
            run = run_one(Path(tmp) / "run", n, args.workers, window=args.window)
            runs.append(run)
            print(f"  {n:>9,} waiting: {run.rate:8,.0f} files/s, per-file cost {1 / run.rate * 1000:6.3f} ms "
                  f"({runs[0].rate / run.rate:4.2f}x the {runs[0].files:,} case), supervisor peak RSS "
                  f"{run.peak_rss / 2**20:6.1f} MB, state.db {run.db_bytes / run.files:6.1f} B/file "
                  f"({run.db_bytes / 2**20:.1f} MB), out of order {run.out_of_order}", flush=True)
        for n in sizes[1:] if args.tree_dirs else []:
            run = run_one(Path(tmp) / "run", n, args.workers, dirs=args.tree_dirs, window=args.window)
            print(f"  {n:>9,} waiting in {args.tree_dirs:,} directories (recursive): {run.rate:8,.0f} files/s, "
                  f"per-file cost {1 / run.rate * 1000:6.3f} ms ({runs[0].rate / run.rate:4.2f}x the flat "
                  f"{runs[0].files:,} case), supervisor peak RSS {run.peak_rss / 2**20:6.1f} MB, "
                  f"out of order {run.out_of_order}, inotify overflows {run.overflows}", flush=True)
        if args.filesystem:
            floors = [filesystem_alone(Path(tmp) / "fs", n) for n in sizes]
            for n, floor in zip(sizes, floors, strict=True):
                print(f"  filesystem alone, {n:>9,} files: {floor * 1e6:7.1f} us/file "
                      f"({floor / floors[0]:4.2f}x the {sizes[0]:,} case)", flush=True)
        if args.trickle:
            calm = run_one(Path(tmp) / "run", args.trickle, args.workers)
            busy = run_one(Path(tmp) / "run", args.trickle, args.workers, trickle_rate=args.rate)
            print(f"  trickle: {args.trickle:,} draining alone {calm.rate:,.0f} files/s, with {args.rate:.0f} files/s "
                  f"renamed in meanwhile {busy.rate:,.0f} files/s ({busy.rate / calm.rate:.2f}x); "
                  f"out of order {busy.out_of_order}; peak RSS {busy.peak_rss / 2**20:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"backlog: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
