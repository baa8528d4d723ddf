"""Daemon throughput against contenders that do not share our code, and pickup latency
(a benchmark, not a test).

    .venv/bin/python tests/bench/throughput.py [--dir DIR] [--small-files 10000] [--small-lines 20]
        [--big-files 4] [--big-lines 1000000] [--runs 3] [--workers 2] [--latency-files 200]
        [--only small|big|latency] [--no-celery] [--backend local|celery] [--verbose]

Every contender does the same per-line work: tag each line by its level (a regex) and
write ``<tag>\t<line>``; foldermill does it with a *user* generator processor
(``benchtag.py`` beside the config, the way users write them), the others inline.

Workloads (built once, in ``--dir``, by default ``.scratch/`` in the repository: on the
disk, where users run; point it at tmpfs only to compare, and say so):

- **small**: many small log files; the figure that matters is files/s.
- **big**: a few big log files; the figure that matters is lines/s.

Each run copies a workload into a fresh ``watch_dir/unprocessed/`` for each contender (mtime
10 s in the past, so every file is ready at once; then ``sync``, so that no contender pays
for flushing the copies) and times it, alternating the contenders:

- **loop**: a hand-written one-process loop, no foldermill code: for each file, ``flock``
  a lock file, rename into underprocess/, read it line by line, tag and write each line to
  a temporary output, rename that into output/, rename the input into processed/. No fsync.
- **loop, synced per batch**: the same loop, durable the way foldermill's group commit
  is: batches of ``batch_files`` (64) files are claimed and written to temporary outputs,
  then one ``syncfs`` makes the batch durable, then the outputs are renamed into place,
  output/ is fsynced, and the inputs are moved to processed/.
- **foldermill**: ``supervisor.py -c CONFIG --once --workers N`` in a subprocess, from its
  start to its exit (interpreter start, worker spawn and shutdown included), with
  ``durable = true`` (the default) and with ``durable = false``.
- **foldermill, running daemon**: the way a hot folder is used, and the way the Celery
  contender is timed: a supervisor (``durable = true``, and again with ``durable =
  false``) already running on an empty ``unprocessed/``; the files are renamed in, timed
  from the first rename to the last ``processed`` entry in its journal (its start-up and
  shutdown excluded). The CPU time its processes spent meanwhile is reported per file:
  the supervisor, the workers (the pids its journal names) and the rest (the manager
  process, the dashboard).
- **celery**: a real ``redis-server`` on a free loopback port, a real
  ``celery worker --pool=prefork -c N`` whose task does the loop's work for one file, and a
  watchdog observer in this process that sends each file renamed into ``unprocessed/`` to
  the task; timed from the first rename to the last task done (worker start-up excluded).

Targets (issues 10 and 20): small files into a running daemon >= 1.0x the loop with
``durable = false``, >= 1.0x the loop synced per batch with ``durable = true``, and >= 3x
celery (files/s); big >= 1.5x the loop and >= 1.0x celery (lines/s). Medians over
``--runs``; the CPU figures are medians too.

**latency**: a supervisor (normal mode) watches a fresh watch dir; one small file at a
time is written as ``<name>.tmp`` and renamed to ``<name>``; the latency is the time from
the rename to the file's ``claimed`` entry in the journal (ms resolution), median and p99.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.daemon import Daemon, alive, folder, journal, wait_for  # noqa: E402
from workers.config import load_config  # noqa: E402

SUPERVISOR = ROOT / "supervisor.py"
RUN_TIMEOUT_S = 1800.0  # one contender on one workload
LATENCY_SPACING_S = 0.02
LOOP = "hand-written loop"
LOOP_SYNCED = "loop, synced per batch"
DURABLE = "foldermill"
NOT_DURABLE = "foldermill, durable=false"
RUNNING = "foldermill, running daemon"
RUNNING_NOT_DURABLE = "running daemon, durable=false"
CELERY = "celery + redis, prefork"
CELERY_BACKEND = "foldermill, celery backend"
CONTENDERS: tuple[str, ...] = (LOOP, LOOP_SYNCED, DURABLE, NOT_DURABLE, RUNNING, RUNNING_NOT_DURABLE, CELERY)
SYNC_BATCH = 64  # the loop's batch, as foldermill's default batch_files
BACKEND_CONFIG = """
[workers]
backend = "celery"
count = {workers}
batch_files = 64

[celery]
broker_url = "{broker}"
queue = "fm-bench"
visibility_timeout = 86400
prefetch_jobs = 8
"""
# (unit, target against the loop, target against celery)
TARGETS = {"small": ("files/s", 1.0, 3.0), "big": ("lines/s", 1.5, 1.0)}

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

[pipeline.nodes.start]
processor = "benchtag:tag"
"""

# The per-line work, as a user writes it for foldermill...
BENCHTAG = '''
import re

LEVEL = re.compile(r" (ERROR|WARN|INFO|DEBUG) ")


def tag(lines):
    search = LEVEL.search
    for line in lines:
        m = search(line)
        yield "end", f"{m[1] if m else 'OTHER'}\\t{line}"
'''

# ... and inline, for the loop and the Celery task (which imports this module).
INLINE = '''
import ctypes, fcntl, os, re

LEVEL = re.compile(r" (ERROR|WARN|INFO|DEBUG) ")
LIBC = ctypes.CDLL(None, use_errno=True)


def process_file(watch, name):
    """Claim (flock + rename), tag every line, write, rename output, move input. No fsync."""
    lock = os.open(os.path.join(watch, ".bench-locks", str(hash(name) % 1024)), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        src, tmp, lines = stage(watch, name)
        os.rename(tmp, os.path.join(watch, "output", name))
        os.rename(src, os.path.join(watch, "processed", name))
        return lines
    finally:
        os.close(lock)


def stage(watch, name):
    """Claim the file (rename into underprocess/), tag and write its lines to a temporary output."""
    src = os.path.join(watch, "underprocess", name)
    os.rename(os.path.join(watch, "unprocessed", name), src)
    tmp = os.path.join(watch, "output", "." + name + ".tmp")
    search = LEVEL.search
    lines = 0
    with open(src, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8", buffering=1 << 16) as out:
        write = out.write
        for line in f:
            m = search(line)
            write(f"{m[1] if m else 'OTHER'}\\t{line}")
            lines += 1
    return src, tmp, lines


def process_batch(watch, names):
    """A batch made durable at once: each file locked and staged, one syncfs, the
    outputs renamed into place and output/ fsynced, then the inputs moved."""
    locks, staged, lines = {}, [], 0  # one descriptor per lock file: two flocks of one file would deadlock
    try:
        for name in names:
            index = hash(name) % 1024
            if index not in locks:
                locks[index] = os.open(os.path.join(watch, ".bench-locks", str(index)), os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(locks[index], fcntl.LOCK_EX)
            src, tmp, n = stage(watch, name)
            staged.append((name, src, tmp))
            lines += n
        out = os.open(os.path.join(watch, "output"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            if LIBC.syncfs(out) != 0:
                raise OSError(ctypes.get_errno(), "syncfs failed")
            for name, _, tmp in staged:
                os.rename(tmp, os.path.join(watch, "output", name))
            os.fsync(out)
        finally:
            os.close(out)
        for name, src, _ in staged:
            os.rename(src, os.path.join(watch, "processed", name))
        return lines
    finally:
        for lock in locks.values():
            os.close(lock)
'''

CELERY_TASKS = '''
import os
from celery import Celery
from benchinline import process_file

app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4, task_ignore_result=True,
                worker_hijack_root_logger=False)


@app.task(name="bench.process")
def process(watch, name):
    import redis
    lines = process_file(watch, name)
    client = redis.Redis.from_url(os.environ["BENCH_BROKER"])
    client.incr("bench:files")
    client.incrby("bench:lines", lines)
'''


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
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by role (supervisor, workers, other; loop)


@dataclass
class Results:
    runs: dict[str, list[Measure]] = field(default_factory=lambda: {c: [] for c in CONTENDERS})

    def median(self, contender: str, attr: str = "seconds") -> float | None:
        values = [getattr(m, attr) for m in self.runs[contender]]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def median_cpu(self, contender: str) -> dict[str, float]:
        roles = {r for m in self.runs[contender] for r in m.cpu}
        return {r: statistics.median(m.cpu.get(r, 0.0) for m in self.runs[contender]) for r in sorted(roles)}


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


def write_config(directory: Path, workers: int, durable: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "benchtag.py").write_text(BENCHTAG)
    path = directory / ("config.toml" if durable else "config-nodurable.toml")
    path.write_text(CONFIG.format(workers=workers, durable=str(durable).lower()))
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


# -- the hand-written loop -------------------------------------------------------------------


def inline_module(directory: Path) -> Any:
    """The inline work as a module of its own (the loop and the Celery task share it)."""
    (directory / "benchinline.py").write_text(INLINE)
    spec = importlib.util.spec_from_file_location("benchinline", directory / "benchinline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_loop(config_path: Path, workload: Workload, synced: bool = False) -> Measure:
    watch = config_path.parent / "watch_dir"
    for d in ("underprocess", "processed", "output", ".bench-locks"):
        (watch / d).mkdir(exist_ok=True)
    inline = inline_module(config_path.parent)
    started, cpu = time.perf_counter(), time.process_time()
    with os.scandir(watch / "unprocessed") as entries:
        names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
    if synced:
        lines = sum(inline.process_batch(str(watch), names[k:k + SYNC_BATCH]) for k in range(0, len(names), SYNC_BATCH))
    else:
        lines = sum(inline.process_file(str(watch), name) for name in names)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if lines != workload.lines:
        raise BenchError(f"loop: read {lines} lines, expected {workload.lines}")
    check_done(watch, workload, "loop")
    return Measure(seconds, cpu={"loop": cpu})


def same_outputs(run_dir: Path, workload: Workload) -> None:
    """Every contender wrote the same bytes (checked on a sample)."""
    sample = workload.names[:: max(1, len(workload.names) // 5)]
    for name in sample:
        texts = {p.parent.parent.parent.name: (p.read_bytes()) for p in run_dir.glob(f"*/watch_dir/output/{name}")}
        if len(set(texts.values())) > 1:
            raise BenchError(f"outputs of {name} differ between contenders: {sorted(texts)}")


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
        for name in CONTENDERS:  # alternating: loop, foldermill, ..., loop, foldermill, ...
            cdir = run_dir / re.sub(r"[^a-z]+", "-", name.lower())
            fresh_watch_dir(cdir / "watch_dir", workload)
            measure = run_contender(name, cdir, workload, args.workers)
            results.runs[name].append(measure)
            if args.verbose:
                print(f"  {workload.name} run {run}: {describe(name, measure, workload)}", flush=True)
        same_outputs(run_dir, workload)
        shutil.rmtree(run_dir)
    return results


def run_contender(name: str, cdir: Path, workload: Workload, workers: int) -> Measure:
    config = write_config(cdir, workers, durable=name not in (NOT_DURABLE, RUNNING_NOT_DURABLE))
    if name in (LOOP, LOOP_SYNCED):
        return run_loop(config, workload, synced=name == LOOP_SYNCED)
    if name == CELERY:
        return run_celery(cdir, workload, workers)
    if name == CELERY_BACKEND:
        return run_celery_backend(config, workload, workers)
    if name in (RUNNING, RUNNING_NOT_DURABLE):
        return run_running(config, workload, workers)
    return run_foldermill(config, workload, workers)


def run_running(config: Path, workload: Workload, workers: int) -> Measure:
    """A running supervisor; the files renamed in (from a folder beside, same filesystem)."""
    watch = config.parent / "watch_dir"
    staging = config.parent / "staging"
    os.rename(watch / "unprocessed", staging)
    (watch / "unprocessed").mkdir()
    total = len(workload.names)
    with running_daemon(config, workers, "running") as daemon:
        wait_for(lambda: "dashboard at" in daemon.log(), 30, "the supervisor's dashboard (its start complete)")
        before = cpu_by_pid(daemon.pid)
        started = time.time()
        for name in workload.names:
            os.rename(staging / name, watch / "unprocessed" / name)
        wait_for(lambda: len(os.listdir(watch / "processed")) >= total, RUN_TIMEOUT_S,
                 "the running daemon to process every file", interval_s=0.1)
        after = cpu_by_pid(daemon.pid)
    check_done(watch, workload, "running daemon", daemon.log())
    done = [e for e in journal(watch) if e["event"] == "processed"]
    cpu = cpu_by_role(daemon.pid, before, after, {e["worker"] for e in done})
    lines = sum(e["lines_in"] for e in done)
    if len(done) != total or lines != workload.lines:
        raise BenchError(f"running daemon: journal has {len(done)} processed files, {lines} lines; "
                         f"expected {total}, {workload.lines}")
    last = max(parse_ts(e["ts"]) for e in done)
    warnings = sum(1 for line in daemon.log().splitlines() if " WARNING " in line or " ERROR " in line)
    return Measure(last - started, warnings=warnings, cpu=cpu)


def cpu_by_pid(root: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) so far of a process and all its descendants."""
    top = psutil.Process(root)
    found = {}
    for p in [top, *top.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            found[p.pid] = (t.user, t.system)
    return found


def cpu_by_role(supervisor: int, before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]],
                workers: set[int]) -> dict[str, float]:
    """CPU seconds spent between two samples: the supervisor, the workers, the rest
    (user + system), and each of those by mode ("supervisor user", "supervisor system"...)."""
    roles: dict[str, float] = {}
    for pid, (user, system) in after.items():
        role = "supervisor" if pid == supervisor else "workers" if pid in workers else "other"
        was_user, was_system = before.get(pid, (0.0, 0.0))
        for key, seconds in ((role, user + system - was_user - was_system), (f"{role} user", user - was_user),
                             (f"{role} system", system - was_system)):
            roles[key] = roles.get(key, 0.0) + seconds
    return roles


# -- Celery + Redis + watchdog: the contender -----------------------------------------------------

REDIS: dict[str, Any] = {}


def start_redis() -> str:
    """One redis-server (no persistence) for the whole benchmark, on a free port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = shutil.which("redis-server")
    if not server:
        raise BenchError("the celery contender needs redis-server (apt-get install redis-server), or --no-celery")
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


def run_celery(cdir: Path, workload: Workload, workers: int) -> Measure:
    """Files renamed into a watched folder; watchdog sends each name to a Celery task."""
    import redis
    from celery import Celery
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    watch = cdir / "watch_dir"
    staging = cdir / "staging"
    os.rename(watch / "unprocessed", staging)
    for d in ("unprocessed", "underprocess", "processed", "output", ".bench-locks"):
        (watch / d).mkdir(exist_ok=True)
    inline_module(cdir)
    (cdir / "benchtasks.py").write_text(CELERY_TASKS)
    client = redis.Redis.from_url(REDIS["url"])
    client.flushdb()
    env = {**os.environ, "BENCH_BROKER": REDIS["url"], "PYTHONPATH": str(cdir)}
    log_path = cdir / "celery.log"
    node = subprocess.Popen([sys.executable, "-m", "celery", "-A", "benchtasks", "worker", "--pool=prefork", "-c",
                             str(workers), "--without-gossip", "--without-mingle", "--without-heartbeat",
                             "--loglevel", "INFO"], cwd=cdir, env=env, stdout=open(log_path, "w"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)
    app = Celery("bench", broker=REDIS["url"], set_as_current=False)
    unprocessed = str(watch / "unprocessed")

    class Send(FileSystemEventHandler):
        """A rename from outside the watched folder is reported as a creation."""

        def on_created(self, event: Any) -> None:
            self.send(os.fsdecode(event.src_path))

        def on_moved(self, event: Any) -> None:
            self.send(os.fsdecode(event.dest_path))

        def send(self, path: str) -> None:
            if os.path.dirname(path) == unprocessed:
                app.send_task("bench.process", args=[str(watch), os.path.basename(path)])

    observer = Observer()
    observer.schedule(Send(), unprocessed, recursive=False)
    try:
        wait_until(lambda: "ready." in log_path.read_text(errors="replace"), 60, "the celery worker to start")
        observer.start()
        started = time.perf_counter()
        for name in workload.names:
            os.rename(staging / name, watch / "unprocessed" / name)
        wait_until(lambda: int(client.get("bench:files") or 0) >= len(workload.names), RUN_TIMEOUT_S,
                   "the celery tasks to finish", interval_s=0.005)
        seconds = time.perf_counter() - started
    finally:
        observer.stop()
        kill_group(node.pid) if node.poll() is None else None
        node.wait(timeout=30)
    lines = int(client.get("bench:lines") or 0)
    if lines != workload.lines:
        raise BenchError(f"celery: {lines} lines, expected {workload.lines}")
    check_done(watch, workload, "celery")
    return Measure(seconds)


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def run_celery_backend(config: Path, workload: Workload, workers: int) -> Measure:
    """foldermill's own Celery backend (--backend celery): the same --once run, with
    ``workers`` Celery nodes (-c 1 each) doing the work."""
    text = config.read_text().replace("[workers]", "[old-workers]", 1)
    text = re.sub(r"\[old-workers\][^\[]*", "", text)
    config.write_text(BACKEND_CONFIG.format(workers=workers, broker=REDIS["url"]) + text)
    nodes = []
    env = {**os.environ, "FOLDERMILL_CONFIG": str(config), "PYTHONPATH": f"{ROOT}:{config.parent}"}
    try:
        for i in range(workers):
            log = config.parent / f"celery-{i}.log"
            nodes.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-c", "1", "-n", f"n{i}@%h",
                 "-Q", "fm-bench", "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
                cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT))  # noqa: SIM115
        for i in range(workers):
            log = config.parent / f"celery-{i}.log"
            wait_until(lambda log=log: "ready." in log.read_text(), 60, f"celery node {i} to start")
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
    with running_daemon(config, args.workers, "latency"):
        renamed = drop_one_by_one(watch, args.latency_files)
    claimed = {e["file"]: parse_ts(e["ts"]) for e in journal(watch) if e["event"] == "claimed"}
    shutil.rmtree(run_dir)
    return [(claimed[name] - at) * 1000 for name, at in renamed.items()]


@contextlib.contextmanager
def running_daemon(config: Path, workers: int, name: str) -> Iterator[Daemon]:
    """A supervisor in normal mode, started; stopped with SIGTERM after the block (it
    must exit 0 and leave no process behind), killed with its children on an error."""
    daemon = Daemon(config, "--workers", str(workers), name=name)
    children: list[int] = []
    try:
        wait_for(lambda: "foldermill started" in daemon.log() or not daemon.alive(), 30, "the supervisor to start")
        if not daemon.alive():
            raise BenchError(f"supervisor exited at start:\n{daemon.log()[-2000:]}")
        yield daemon
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
    print(f"  {'':<34} {'seconds':>8} {'files/s':>10} {'lines/s':>12}   (runs in {args.dir})")
    seconds = {c: results.median(c) for c in CONTENDERS}
    for c in CONTENDERS:
        s = seconds[c]
        print(f"  {c:<34} {s:8.2f} {files / s:10,.0f} {workload.lines / s:12,.0f}")
    unit, vs_loop, vs_celery = TARGETS[workload.name]
    print(f"  ratios of {unit}:")
    # The pairs with a target: like for like (durable against the loop that syncs per batch).
    # Small files: durable against the loop that syncs per batch, durable=false against the
    # plain loop. Big files: their outputs are fsynced by the workers, against the plain loop.
    durable_base = LOOP_SYNCED if workload.name == "small" else LOOP
    targeted = {(RUNNING, durable_base): vs_loop, (RUNNING, CELERY): vs_celery, (DURABLE, LOOP): vs_loop,
                (DURABLE, CELERY): vs_celery}
    if workload.name == "small":
        targeted[RUNNING_NOT_DURABLE, LOOP] = vs_loop
    for c in (DURABLE, NOT_DURABLE, RUNNING, RUNNING_NOT_DURABLE, CELERY_BACKEND):
        if c not in CONTENDERS:
            continue
        for base in (LOOP, LOOP_SYNCED, CELERY):
            if base not in CONTENDERS:
                continue
            ratio = seconds[base] / seconds[c]  # same work: the rate ratio is the inverse time ratio
            target = targeted.get((c, base))
            verdict = "" if target is None else f"   (target >= {target}: {'met' if ratio >= target else 'NOT met'})"
            print(f"  {f'ratio {c} / {base}':<60} {ratio:8.2f}{verdict}")
    print("  CPU per file (medians, all cores; the system part in brackets), µs:")
    for c in (LOOP, LOOP_SYNCED, RUNNING, RUNNING_NOT_DURABLE):
        cpu = results.median_cpu(c) if c in CONTENDERS else {}
        roles = {role: seconds for role, seconds in cpu.items() if not role.endswith((" user", " system"))}
        if roles:
            parts = "   ".join(f"{role} {seconds * 1e6 / files:8,.0f}" + (
                f" (system {cpu[role + ' system'] * 1e6 / files:,.0f})" if role + " system" in cpu else "")
                for role, seconds in roles.items())
            print(f"  {c:<34} {parts}   total {sum(roles.values()) * 1e6 / files:8,.0f}")
    startup, tail = results.median(DURABLE, "startup"), results.median(DURABLE, "tail")
    print(f"  foldermill fixed costs: start -> first claim {startup:.2f} s, last commit -> exit {tail:.2f} s")
    warnings = sum(m.warnings for c in CONTENDERS if c.startswith("foldermill") for m in results.runs[c])
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
                        help="celery: also run foldermill's own Celery backend")
    parser.add_argument("--no-celery", action="store_true", help="skip the Celery + Redis contender")
    parser.add_argument("--dir", type=Path, default=ROOT / ".scratch",
                        help="where the workloads and watch dirs go (default: %(default)s, on the disk)")
    args = parser.parse_args(argv)
    for key in ("small_files", "small_lines", "big_files", "big_lines", "runs", "workers", "latency_files"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    global CONTENDERS
    args = parse_args(argv)
    skipped = {CELERY} if args.no_celery else set()
    if args.backend != "celery":
        skipped.add(CELERY_BACKEND)
    CONTENDERS = tuple(c for c in (LOOP, LOOP_SYNCED, DURABLE, NOT_DURABLE, RUNNING, RUNNING_NOT_DURABLE, CELERY,
                                   CELERY_BACKEND) if c not in skipped)
    if CELERY in CONTENDERS or CELERY_BACKEND in CONTENDERS:
        start_redis()
    parts = [args.only] if args.only else ["small", "big", "latency"]
    sizes = {"small": (args.small_files, args.small_lines), "big": (args.big_files, args.big_lines)}
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="fm-throughput-", dir=args.dir) as tmp_name:
            tmp = Path(tmp_name)
            workloads = {p: build_workload(tmp, p, *sizes[p]) for p in parts if p in sizes}
            measured = {p: measure_workload(tmp, w, args) for p, w in workloads.items()}
            latencies = measure_latency(tmp, args) if "latency" in parts else []
            for p, w in workloads.items():
                report_workload(w, measured[p], args)
            if latencies:
                report_latency(latencies)
    finally:
        if "proc" in REDIS:
            REDIS["proc"].terminate()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"throughput: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
