"""Daemon throughput against a one-process floor, and pickup latency (a benchmark, not a test).

    .venv/bin/python tests/bench/throughput.py [--small-files 10000] [--small-lines 20]
        [--big-files 4] [--big-lines 1000000] [--runs 3] [--workers 2] [--latency-files 200]
        [--only small|big|latency] [--verbose]

Workloads (the inputs are built once, in a temp dir: set TMPDIR to move it):

- **small**: many small log files; the figure that matters is files/s.
- **big**: a few big log files; the figure that matters is lines/s.

Each run copies a workload into a fresh ``watch_dir/unprocessed/`` for each contender (final
names, mtime 10 s in the past, so every file is ready at once; then ``sync``, so that no
contender pays for flushing the copies) and times it, alternating the contenders:

- **floor**: this process, no supervisor: for each file, lock (the daemon's own claim
  lock for the name, ``workers.queue.LockTable``), rename into underprocess/, run the engine with the shipped pipeline
  writing through ``StagedOutputs`` (no fsync), rename into processed/, unlock. The graph is
  compiled before the clock starts.
- **foldermill**: ``supervisor.py -c CONFIG --once --workers N`` in a subprocess, from its
  start to its exit (interpreter start, worker spawn and shutdown included), with
  ``durable = true`` (the default: a group-commit ``syncfs`` per loop step) and with
  ``durable = false``. Afterwards every file must be in processed/ with its output.

Targets, foldermill (durable) against the floor: files/s ratio >= 1.0 on the small
workload, lines/s ratio >= 1.5 on the big one. Times are wall-clock seconds (the daemon
uses several processes); medians over ``--runs`` are printed, each run with ``--verbose``.

**latency**: a supervisor (normal mode) watches a fresh watch dir; one small file at a
time is written as ``<name>.tmp`` and renamed to ``<name>``; the latency is the time from
the rename to the file's ``claimed`` entry in the journal (ms resolution), median and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.daemon import Daemon, alive, folder, journal, wait_for  # noqa: E402
from workers.config import load_config  # noqa: E402
from workers.engine import run_file  # noqa: E402
from workers.graph import Graph, compile_graph  # noqa: E402
from workers.outputs import StagedOutputs  # noqa: E402
from workers.queue import LOCK_COUNT, LockTable  # noqa: E402

SUPERVISOR = ROOT / "supervisor.py"
RUN_TIMEOUT_S = 1800.0  # one contender on one workload
LATENCY_SPACING_S = 0.02
FLOOR = "floor"
DURABLE = "foldermill"
NOT_DURABLE = "foldermill, durable=false"
CELERY = "foldermill, celery backend"
CONTENDERS = (FLOOR, DURABLE, NOT_DURABLE)  # with --backend celery the third is CELERY
CELERY_CONFIG = """
[workers]
backend = "celery"
count = {workers}
batch_files = 64

[celery]
broker_url = "{broker}"
queue = "fm-bench"
prefetch_jobs = 8
"""
TARGETS = {"small": ("files/s", 1.0), "big": ("lines/s", 1.5)}

CONFIG = """\
[watch]
dir = "watch_dir"
settle = 0.5
poll_interval = 1.0

[web]
port = 0

[workers]
count = {workers}
durable = {durable}

"""


class BenchError(Exception):
    """A contender did not do the work, or misbehaved (exit status, leftover processes)."""


@dataclass(frozen=True)
class Workload:
    name: str
    files: list[Path]
    lines: int  # input lines, all files together

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]


@dataclass(frozen=True)
class Measure:
    seconds: float
    startup: float | None = None  # foldermill: process start -> first "claimed"
    tail: float | None = None  # foldermill: last "processed" -> process exit
    warnings: int = 0  # foldermill: WARNING/ERROR lines in its log


@dataclass
class Results:
    runs: dict[str, list[Measure]] = field(default_factory=lambda: {c: [] for c in CONTENDERS})

    def median(self, contender: str, attr: str = "seconds") -> float | None:
        values = [getattr(m, attr) for m in self.runs[contender]]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None


# -- inputs and configs ------------------------------------------------------------------------


def make_input(path: Path, lines: int, seed: int) -> None:
    """Synthetic log lines of ~100 bytes, like tests/bench/engine.py, varied by ``seed``."""
    rng = random.Random(seed)
    levels = ["INFO"] * 7 + ["WARN"] * 2 + ["ERROR"]
    offset = rng.randrange(1_000_000)
    with open(path, "w") as f:
        for i in range(offset, offset + lines):
            level = rng.choice(levels)
            secret = f" password=hunter{i % 7}" if i % 50 == 0 else ""
            f.write(f"2026-11-28T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} {level} "
                    f"worker-{rng.randrange(8)} request {i} GET /api/orders/{rng.randrange(100_000)} "
                    f"took {rng.randint(1, 999)}ms user=u{rng.randrange(1000)}{secret}\n")


def build_workload(base: Path, name: str, files: int, lines: int) -> Workload:
    directory = base / "inputs" / name
    directory.mkdir(parents=True)
    paths = []
    for i in range(files):
        path = directory / f"{name}-{i:06d}.log"
        make_input(path, lines, seed=zlib.crc32(path.name.encode()))
        paths.append(path)
    return Workload(name, paths, files * lines)


def pipeline_section() -> str:
    """The shipped config.toml's [pipeline] tables, verbatim."""
    text = (ROOT / "config.toml").read_text()
    start = re.search(r"^\[pipeline\]", text, re.MULTILINE)
    if start is None:
        raise BenchError(f"no [pipeline] table in {ROOT / 'config.toml'}")
    end = re.compile(r"^\[(?!pipeline[.\]])", re.MULTILINE).search(text, start.start())
    return text[start.start(): end.start() if end else len(text)]


def write_config(directory: Path, workers: int, durable: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ("config.toml" if durable else "config-nodurable.toml")
    path.write_text(CONFIG.format(workers=workers, durable=str(durable).lower()) + pipeline_section())
    load_config(path)  # fail here, not in the daemon, if it is invalid
    return path


def fresh_watch_dir(watch: Path, workload: Workload) -> None:
    """Copy the inputs under their final names, 10 s old, and flush them to disk."""
    if watch.exists():
        shutil.rmtree(watch)
    unprocessed = watch / "unprocessed"
    unprocessed.mkdir(parents=True)
    past = time.time() - 10
    for src in workload.files:
        dst = unprocessed / src.name
        shutil.copyfile(src, dst)
        os.utime(dst, (past, past))
    os.sync()


def check_done(watch: Path, workload: Workload, who: str, log: str = "") -> None:
    """Every input in processed/ with its main output; nothing left in the queue."""
    processed, outputs = set(folder(watch, "processed")), set(folder(watch, "output"))
    missing = [n for n in workload.names if n not in processed or n not in outputs]
    left = {f: folder(watch, f) for f in ("unprocessed", "underprocess", "failed")}
    staged = [n for n in os.listdir(watch / "output") if n.startswith(".fm-")]
    if missing or any(left.values()) or staged:
        raise BenchError(
            f"{who}: {len(missing)} of {len(workload.names)} files lack processed/ or output/ "
            f"(first: {missing[:3]}); left behind: { {f: len(v) for f, v in left.items()} }, "
            f"staged outputs: {len(staged)}" + (f"; its log ends:\n{log[-2000:]}" if log else ""))


# -- the floor ---------------------------------------------------------------------------------


def run_floor(config_path: Path, workload: Workload) -> Measure:
    config = load_config(config_path)
    graph = compile_graph(config.pipeline, str(config.base_dir))
    started = time.perf_counter()
    lines = floor_loop(graph, config.watch.dir)
    seconds = time.perf_counter() - started
    if lines != workload.lines:
        raise BenchError(f"floor: read {lines} lines, expected {workload.lines}")
    check_done(config.watch.dir, workload, "floor")
    return Measure(seconds)


def floor_loop(graph: Graph, watch: Path) -> int:
    """Claim -> process -> write -> move, one file at a time; returns the lines read."""
    dirs = {n: watch / n for n in ("unprocessed", "underprocess", "processed", "output", ".locks")}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    locks = LockTable(dirs[".locks"])  # the daemon's own claim locks: same cost on both sides
    with os.scandir(dirs["unprocessed"]) as entries:
        names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
    lines = 0
    for name in names:
        index = zlib.crc32(name.encode("utf-8", "surrogateescape")) % LOCK_COUNT
        if not locks.try_acquire(index):
            raise BenchError(f"floor: lock {index} is taken")
        try:
            os.rename(dirs["unprocessed"] / name, dirs["underprocess"] / name)
            lines += floor_file(graph, dirs["underprocess"] / name, dirs["output"])
            os.rename(dirs["underprocess"] / name, dirs["processed"] / name)
        finally:
            locks.release(index)
    return lines


def floor_file(graph: Graph, path: Path, out_dir: Path) -> int:
    staged = StagedOutputs(out_dir, path.name, graph.settings.encoding)
    try:
        with open(path, "rb") as source:
            result = run_file(graph, path.name, source, staged.sink)
    except BaseException:
        staged.abort()
        raise
    staged.commit(durable=False)
    return result.lines_in


# -- foldermill --once ------------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group."""
    found = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
    return found


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> int:
    """``proc.wait()`` to the exact exit (no polling), killed after ``timeout_s``."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        kill_group(proc.pid)

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    try:
        code = proc.wait()
    finally:
        timer.cancel()
    if expired.is_set():
        raise BenchError(f"supervisor {proc.pid} still running after {timeout_s:.0f}s: killed")
    return code


def run_supervisor_once(config: Path, workers: int) -> tuple[float, float, float, str]:
    """Run ``--once`` in its own process group; (seconds, wall start, wall end, its log)."""
    log_path = config.parent / f"{config.stem}.log"
    cmd = [sys.executable, str(SUPERVISOR), "-c", str(config), "--once", "--workers", str(workers)]
    with open(log_path, "w") as log:
        wall_start, started = time.time(), time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=config.parent,
                                start_new_session=True)
        try:
            code = wait_exit(proc, RUN_TIMEOUT_S)
            seconds, wall_end = time.perf_counter() - started, time.time()
            left = wait_for_group_exit(proc.pid)
        except BaseException:
            kill_group(proc.pid)
            raise
    text = log_path.read_text(errors="replace")
    if code != 0:
        raise BenchError(f"supervisor exited with status {code}; its log ends:\n{text[-2000:]}")
    if left:
        raise BenchError(f"supervisor exited but left processes behind (killed): {left}")
    return seconds, wall_start, wall_end, text


def wait_for_group_exit(pgid: int, timeout_s: float = 5.0) -> list[int]:
    """Processes of the group still alive ``timeout_s`` after its leader exited (killed)."""
    deadline = time.monotonic() + timeout_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        kill_group(pgid)
    return left


def run_foldermill(config: Path, workload: Workload, workers: int) -> Measure:
    seconds, wall_start, wall_end, log = run_supervisor_once(config, workers)
    watch = config.parent / "watch_dir"
    check_done(watch, workload, config.stem, log)
    entries = journal(watch)
    claimed = [parse_ts(e["ts"]) for e in entries if e["event"] == "claimed"]
    done = [e for e in entries if e["event"] == "processed"]
    lines = sum(e["lines_in"] for e in done)
    if len(done) != len(workload.files) or lines != workload.lines:
        raise BenchError(f"{config.stem}: journal has {len(done)} processed files, {lines} lines; "
                         f"expected {len(workload.files)}, {workload.lines}")
    last = max(parse_ts(e["ts"]) for e in done)
    warnings = sum(1 for line in log.splitlines() if " WARNING " in line or " ERROR " in line)
    return Measure(seconds, min(claimed) - wall_start, wall_end - last, warnings)


def parse_ts(ts: str) -> float:
    """The journal's "YYYY-mm-ddTHH:MM:SS.mmmZ" (UTC) as a Unix time."""
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


# -- runs --------------------------------------------------------------------------------------


def measure_workload(tmp: Path, workload: Workload, args: argparse.Namespace) -> Results:
    results = Results()
    for run in range(1, args.runs + 1):
        run_dir = tmp / f"run-{run}"
        for name in CONTENDERS:  # alternating: floor, foldermill, ..., floor, foldermill, ...
            fresh_watch_dir(run_dir / "watch_dir", workload)
            measure = run_contender(name, run_dir, workload, args.workers)
            results.runs[name].append(measure)
            if args.verbose:
                print(f"  {workload.name} run {run}: {describe(name, measure, workload)}", flush=True)
        shutil.rmtree(run_dir)
    return results


def run_contender(name: str, run_dir: Path, workload: Workload, workers: int) -> Measure:
    config = write_config(run_dir, workers, durable=name != NOT_DURABLE)
    if name == FLOOR:
        return run_floor(config, workload)
    if name == CELERY:
        return run_celery(config, workload, workers)
    return run_foldermill(config, workload, workers)


# -- the Celery backend -------------------------------------------------------------------------

REDIS: dict[str, Any] = {}


def start_redis() -> str:
    """One redis-server (no persistence) for the whole benchmark, on a free port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = shutil.which("redis-server")
    if not server:
        raise BenchError("--backend celery needs redis-server (apt-get install redis-server)")
    REDIS["proc"] = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    REDIS["url"] = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port).ping()
            return REDIS["url"]
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise BenchError("redis-server did not start") from None
            time.sleep(0.05)


def run_celery(config: Path, workload: Workload, workers: int) -> Measure:
    """The same --once run, with ``workers`` Celery nodes (-c 1 each) doing the work."""
    text = config.read_text().replace("[workers]", "[old-workers]", 1)
    text = re.sub(r"\[old-workers\][^\[]*", "", text)
    config.write_text(CELERY_CONFIG.format(workers=workers, broker=REDIS["url"]) + text)
    nodes = []
    env = {**os.environ, "FOLDERMILL_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    try:
        for i in range(workers):
            log = config.parent / f"celery-{i}.log"
            nodes.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-c", "1", "-n", f"n{i}@%h",
                 "-Q", "fm-bench", "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
                cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT))  # noqa: SIM115
        for i in range(workers):
            log = config.parent / f"celery-{i}.log"
            deadline = time.monotonic() + 60
            while "ready." not in log.read_text():
                if time.monotonic() > deadline:
                    raise BenchError(f"celery node {i} did not start: {log.read_text()[-1000:]}")
                time.sleep(0.1)
        return run_foldermill(config, workload, workers)
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(timeout=30)


def describe(name: str, m: Measure, workload: Workload) -> str:
    text = (f"{name:<26} {m.seconds:7.2f} s {len(workload.files) / m.seconds:10,.0f} files/s "
            f"{workload.lines / m.seconds:12,.0f} lines/s")
    if m.startup is not None and m.tail is not None:
        text += f"   (start -> first claim {m.startup:.2f} s, last commit -> exit {m.tail:.2f} s)"
    if m.warnings:
        text += f"   {m.warnings} WARNING/ERROR log lines"
    return text


# -- pickup latency ----------------------------------------------------------------------------


def measure_latency(tmp: Path, args: argparse.Namespace) -> list[float]:
    """Rename -> "claimed" latencies in ms, one file at a time, against a running daemon."""
    run_dir = tmp / "latency"
    config = write_config(run_dir, args.workers, True)
    watch = run_dir / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    daemon = Daemon(config, "--workers", str(args.workers), name="latency")
    children: list[int] = []
    try:
        wait_for(lambda: "foldermill started" in daemon.log() or not daemon.alive(), 30, "the supervisor to start")
        if not daemon.alive():
            raise BenchError(f"supervisor exited at start:\n{daemon.log()[-2000:]}")
        renamed = drop_one_by_one(watch, args.latency_files)
        children = [c.pid for c in daemon.children()]
        code = daemon.stop(timeout_s=60)
    except BaseException:
        children += [c.pid for c in daemon.children()]
        if daemon.alive():
            daemon.kill()
        kill_pids(children)
        raise
    if code != 0:
        raise BenchError(f"supervisor exited with status {code} on SIGTERM:\n{daemon.log()[-2000:]}")
    wait_for(lambda: not alive(children), 10, f"the supervisor's children to exit: {alive(children)}")
    claimed = {e["file"]: parse_ts(e["ts"]) for e in journal(watch) if e["event"] == "claimed"}
    shutil.rmtree(run_dir)
    return [(claimed[name] - at) * 1000 for name, at in renamed.items()]


def drop_one_by_one(watch: Path, count: int) -> dict[str, float]:
    """Write ``<name>.tmp``, rename it to ``<name>``, wait for processed/; the rename times."""
    unprocessed, processed = watch / "unprocessed", watch / "processed"
    renamed = {}
    for i in range(count):
        name = f"latency-{i:05d}.log"
        tmp = unprocessed / f"{name}.tmp"
        tmp.write_text(f"2026-11-28T12:00:00 INFO worker-1 request {i} took 5ms user=u{i}\n"
                       f"2026-11-28T12:00:01 ERROR worker-2 request {i} failed password=x{i}\n")
        renamed[name] = time.time()
        os.rename(tmp, unprocessed / name)
        wait_for(lambda name=name: (processed / name).exists(), 10, f"{name} in processed/")
        time.sleep(LATENCY_SPACING_S)
    return renamed


def kill_pids(pids: list[int]) -> None:
    for pid in alive(pids):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- report ------------------------------------------------------------------------------------


def report_workload(workload: Workload, results: Results, args: argparse.Namespace) -> None:
    files = len(workload.files)
    size = sum(f.stat().st_size for f in workload.files) / files
    print(f"\n{workload.name}: {files:,} files x {workload.lines // files:,} lines (~{size / 1024:,.1f} KiB each), "
          f"{args.runs} runs (medians), {args.workers} workers")
    print(f"  {'':<34} {'seconds':>8} {'files/s':>10} {'lines/s':>12}")
    seconds = {c: results.median(c) for c in CONTENDERS}
    for c in CONTENDERS:
        s = seconds[c]
        print(f"  {c:<34} {s:8.2f} {files / s:10,.0f} {workload.lines / s:12,.0f}")
    unit, target = TARGETS[workload.name]
    for c, label in ((DURABLE, "foldermill"), (CONTENDERS[2], CONTENDERS[2].removeprefix("foldermill, "))):
        ratio = seconds[FLOOR] / seconds[c]  # same work: the rate ratio is the inverse time ratio
        verdict = f"   (target >= {target}: {'met' if ratio >= target else 'NOT met'})" if c == DURABLE else ""
        print(f"  {f'ratio {label}/floor, {unit}':<34} {ratio:8.2f}{verdict}")
    startup, tail = results.median(DURABLE, "startup"), results.median(DURABLE, "tail")
    print(f"  foldermill fixed costs: start -> first claim {startup:.2f} s, last commit -> exit {tail:.2f} s")
    warnings = sum(m.warnings for c in CONTENDERS[1:] for m in results.runs[c])
    if warnings:
        print(f"  foldermill logged {warnings} WARNING/ERROR lines over all runs")


def report_latency(latencies: list[float]) -> None:
    negative = sum(1 for x in latencies if x < 0)
    print(f"\npickup latency (rename -> journal 'claimed', ms resolution): {len(latencies)} files, "
          f"{LATENCY_SPACING_S * 1000:.0f} ms apart")
    print(f"  median {statistics.median(latencies):7.1f} ms   p99 {percentile(latencies, 99):7.1f} ms   "
          f"max {max(latencies):7.1f} ms")
    if negative:
        print(f"  warning: {negative} negative latencies (journal timestamp earlier than the rename): "
              f"min {min(latencies):.1f} ms")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--small-lines", type=int, default=20)
    parser.add_argument("--big-files", type=int, default=4)
    parser.add_argument("--big-lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-files", type=int, default=200)
    parser.add_argument("--only", choices=("small", "big", "latency"))
    parser.add_argument("--verbose", action="store_true", help="print every run")
    parser.add_argument("--backend", choices=("local", "celery"), default="local",
                        help="celery: the third contender is the Celery backend (durable=false is skipped)")
    args = parser.parse_args(argv)
    for key in ("small_files", "small_lines", "big_files", "big_lines", "runs", "workers", "latency_files"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    global CONTENDERS
    args = parse_args(argv)
    if args.backend == "celery":
        CONTENDERS = (FLOOR, DURABLE, CELERY)
        start_redis()
    parts = [args.only] if args.only else ["small", "big", "latency"]
    sizes = {"small": (args.small_files, args.small_lines), "big": (args.big_files, args.big_lines)}
    with tempfile.TemporaryDirectory(prefix="fm-throughput-") as tmp_name:
        tmp = Path(tmp_name)
        workloads = {p: build_workload(tmp, p, *sizes[p]) for p in parts if p in sizes}
        measured = {p: measure_workload(tmp, w, args) for p, w in workloads.items()}
        latencies = measure_latency(tmp, args) if "latency" in parts else []
        for p, w in workloads.items():
            report_workload(w, measured[p], args)
        if latencies:
            report_latency(latencies)
    if "proc" in REDIS:
        REDIS["proc"].terminate()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"throughput: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
