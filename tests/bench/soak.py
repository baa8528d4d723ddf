"""Soak: can the daemon run indefinitely? Days of turnover compressed into minutes, with
the memory, descriptors and threads of every process, the state database and the journal
sampled throughout (a benchmark, not a test).

    .venv/bin/python tests/bench/soak.py [--files 250000] [--duration S] [--rate R | --backlog 1000]
        [--reload-every 30] [--sample-every 5] [--per-worker 500] [--keep 10] [--warmup 0.1] [--dir DIR]
        [--json FILE] [--verbose]

The default run takes about 13 minutes on the project's 2-core machine (~310 files/s with
this configuration: recycling every 500 files costs about a third of the throughput, 308
against 472 files/s over 20,000 files with ``--per-worker 0``). The benchmark's own threads
use about 0.3 of a core.

One real supervisor (``supervisor.py -c CONFIG``: local backend, 2 workers, ``durable =
true``) runs in a watch dir on the disk (``--dir``, by default ``.scratch/soak`` in the
repository, wiped at the start of every run; point it at tmpfs only to compare, and say
so), configured so that everything that could pile up turns over fast:

- ``[workers] max_files_per_worker = 500``: workers are recycled every few seconds;
- ``[watch] state_retention_days = dedupe_retention_days = 0.0005`` (43 s) with
  ``dedupe = "content"``: retention prunes file records and content digests all the time;
- ``journal_max_mb = 1``, ``journal_keep = 3``: the journal rotates every ~2,000 files;
- ``max_attempts = 2``, ``retry_backoff = 0.2``: failing files reach ``failed/`` quickly.

The pipeline is a user processor (``soakproc.py`` beside the config): it prefixes each
line with a mark, copies ERROR lines to a side output (``output/<name>.errors``) through a
``write`` node, and raises on a line starting with ``FAIL``.

Threads of this process play the world around it:

- **producer**: small log files (5-30 lines) written in ``staging/`` beside the watch dir
  and renamed into ``unprocessed/`` (``renameat2(RENAME_NOREPLACE)``: a careful producer
  never replaces a file still waiting there). By default it keeps at most ``--backlog``
  files outstanding (delivered, not yet finished), i.e. it runs as fast as the daemon
  drains; ``--rate`` sets a fixed rate instead. Of the files: 1 % carry a ``FAIL`` line
  (they go to ``failed/`` after two attempts), 1 % repeat the content of a recent file
  (``duplicate``), 2 % reuse the name of a recent file, often still in flight (they get a
  collision name, ``name-1.log``), and one in 1,000 is big (2 MiB, ~25,000 lines).
- **archiver**: what an operator's cron job does so that the disk does not fill: every
  2 s it deletes what has been in ``processed/``, ``failed/`` (with its ``.reason``) and
  ``output/`` for more than ``--keep`` seconds (by ctime: when it was moved there),
  counting every name it removes, so that the end can check where each delivery went.
- **poller**: ``/stats``, ``/metrics``, ``/health``, ``/errors`` and ``/trace`` in turn,
  5 requests a second (a new connection each), counting failures and latencies, and when
  ``/health`` answered 503 (with its reasons, and how long after the last SIGHUP). It
  starts with 16 reads of ``/stats`` 0.3 s apart, so that each of the dashboard's threads
  has opened its connection to the manager before the warm-up ends (``Poller.prepare``).
- **reloader**: every ``--reload-every`` seconds rewrites ``config.toml`` with the other
  of two valid configurations (the processor's mark ``a``/``b``: a new pipeline, so both
  workers are recycled) and sends SIGHUP.
- **journal follower**: reads ``input.log`` as it grows, across rotations (it keeps the
  rotated file open until it has read its end), and counts each delivery's end
  (``processed``, ``duplicate``, ``failed``).
- **sampler** (the main thread): every ``--sample-every`` seconds the RSS, open
  descriptors (``/proc/PID/fd``) and threads of every process of the daemon by role
  (supervisor, ``fm-manager``, ``fm-web``, ``fm-worker-N`` per slot: workers are recycled,
  so a slot's figure is the largest of its live processes; a slot whose successor is still
  being spawned has no figure), the multiprocessing resource tracker, the number of
  processes and of zombies; the supervisor's descriptors on claim lock files (they follow
  the files in flight) apart from the others, and every process's descriptors on deleted
  files; ``state.db`` and its ``-wal``/``-shm``, the rows of its tables and the age of the
  oldest finished record, failed record and digest (a read-only connection: the ages say
  whether retention keeps up, whatever the throughput, where the rows follow it), the
  journal (``input.log*``) and the entries of ``.foldermill/`` and ``.locks/``.

Output: markdown tables ready for BENCHMARKS.md — the figures at every tenth of the run,
and the growth of each measure after the warm-up (the later of 10 % of the files and two
retention windows, 86 s): first and last value, least-squares slope per 100,000 files over
the whole span and over its second half, and a verdict. **flat**: the fitted growth over
the span (slope x files) is within the tolerance, the larger of 10 % of the measure's
median level and a floor (4 MB of RSS, 2 descriptors, threads or processes, 1 MB of file
size, 1,000 rows, 5 s of age), or within two standard errors of the fit (a measure that
follows the load swings more than it trends); **grows**/**shrinks** beyond both;
**settled**: it grew beyond them, but less than half the tolerance over the second half.
Samples after the final drain are shown, not fitted. ``--json FILE`` keeps every sample.

At the end: the producer stops, the backlog drains, the daemon gets SIGTERM and must
exit 0 with no child process left; then the archiver sweeps everything, and every
delivery must have ended exactly once: one end in the journal per delivery of each name,
and the final names the journal gives (``processed``/``duplicate`` in ``processed/``,
``failed`` in ``failed/``) exactly the files the archiver removed from those folders (and
every output the journal names, the files it removed from ``output/``). The supervisor's
log is searched for Traceback, ERROR and WARNING lines, summarized by message.
Exit status 1 if the daemon did not stop cleanly or a file was lost or doubled.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.daemon import Daemon, alive, dashboard_url, wait_for  # noqa: E402
from workers.config import load_config  # noqa: E402
from workers.fs import move  # noqa: E402

CONFIG = """\
[watch]
dir = "watch_dir"
poll_interval = 1.0
settle = 0.5
journal_max_mb = 1.0
journal_keep = 3
dedupe = "content"
state_retention_days = {retention_days}
dedupe_retention_days = {retention_days}

[workers]
count = 2
backend = "local"
durable = true
max_attempts = 2
retry_backoff = 0.2
max_files_per_worker = {per_worker}
file_timeout = 60
shutdown_grace = 10

[web]
port = 0

[pipeline.nodes.start]
processor = "soakproc:Mark"
mark = "{mark}"

[pipeline.nodes.errors]
processor = "write"
output = "errors"
"""

PROCESSOR = '''
class Mark:
    """Prefixes each line with a mark; ERROR lines go to output/<name>.errors too; a line
    starting with FAIL fails the file."""

    emits = ["end", "errors"]

    def __init__(self, mark="a"):
        self.mark = mark

    def process(self, lines):
        mark = self.mark
        for line in lines:
            if line.startswith("FAIL"):
                raise ValueError("a FAIL line: this file fails on purpose")
            if " ERROR " in line:
                yield "errors", line
            yield "end", mark + " " + line
'''

RETENTION_DAYS = 0.0005  # 43.2 s: retention runs all the time
RETENTION_S = RETENTION_DAYS * 86400
MARKER = ".soak-scratch"  # a --dir holding this is ours to wipe
ENDS = ("processed", "duplicate", "failed")  # the journal events that end a delivery
ENDPOINTS = ("stats", "metrics", "health", "errors", "trace")
ROLES = ("supervisor", "manager", "web", "tracker", "worker-0", "worker-1")
STALL_S = 120.0  # no file finished for this long while some are outstanding: the daemon is stuck
DRAIN_S = 300.0  # the most the backlog may take to drain at the end
STOP_S = 60.0  # SIGTERM to exit (shutdown_grace is 10 s)
MB = 1 << 20


class BenchError(Exception):
    """The daemon misbehaved (died, stalled, did not stop cleanly) or the setup failed."""


# -- the accounting: deliveries against their ends -----------------------------------------------


class Tally:
    """What was delivered and how each delivery ended, shared by the producer, the journal
    follower and the archiver. Memory stays bounded by what is in flight: a name is kept
    only while it has deliveries without an end, a final name only until the archiver and
    the journal have both seen it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: collections.Counter[str] = collections.Counter()  # name -> deliveries not ended yet
        self.unmatched: collections.Counter[tuple[str, str]] = collections.Counter()  # journal minus archive
        self.counts: collections.Counter[str] = collections.Counter()
        self.overdone: list[str] = []  # names that ended more often than they were delivered

    def delivering(self, name: str) -> None:
        """Counted before the rename, so that its end can never be read first."""
        with self.lock:
            self.pending[name] += 1
            self.counts["sent"] += 1

    def undelivered(self, name: str) -> None:
        with self.lock:
            self._add(self.pending, name, -1)
            self.counts["sent"] -= 1

    def ended(self, entry: dict[str, Any]) -> None:
        """A journal entry that ends a delivery."""
        event, name, final = entry["event"], entry["file"], entry.get("final", entry["file"])
        folder = "failed" if event == "failed" else "processed"
        with self.lock:
            self.counts[event] += 1
            self.counts["done"] += 1
            if final != name:
                self.counts["collision"] += 1
            if self.pending[name] > 0:
                self._add(self.pending, name, -1)
            else:
                self.overdone.append(name)
            self._add(self.unmatched, (folder, final), 1)
            if event == "processed":
                self.counts["outputs_committed"] += len(entry.get("output", []))

    def archived(self, folder: str, name: str) -> None:
        with self.lock:
            self.counts[f"archived_{folder}"] += 1
            if folder in ("processed", "failed"):
                self._add(self.unmatched, (folder, name), -1)

    def outstanding(self) -> int:
        with self.lock:
            return self.counts["sent"] - self.counts["done"]

    def get(self, key: str) -> int:
        with self.lock:
            return self.counts[key]

    @staticmethod
    def _add(counter: collections.Counter[Any], key: Any, delta: int) -> None:
        """Counts that return to zero go: the tally holds only what is unsettled."""
        counter[key] += delta
        if counter[key] == 0:
            del counter[key]


# -- the world around the daemon ------------------------------------------------------------------


class Ticker(threading.Thread):
    """A thread that calls ``tick`` every ``every_s`` until stopped; an exception stops it
    and is kept, for the main thread to raise."""

    def __init__(self, every_s: float) -> None:
        super().__init__(daemon=True, name=type(self).__name__)
        self.every_s = every_s
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.prepare()
            while not self.stop.wait(self.every_s):
                self.tick()
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc

    def prepare(self) -> None:
        """Before the first tick."""

    def tick(self) -> None:
        raise NotImplementedError

    def finish(self, timeout_s: float = 10) -> None:
        self.stop.set()
        self.join(timeout_s)


class Producer(threading.Thread):
    """Delivers ``files`` files (write beside, rename in), paced by a fixed rate or by a
    bound on the files outstanding."""

    BIG_EVERY = 1000
    BIG_BYTES = 2 * MB
    LEVELS = ("INFO",) * 7 + ("WARN",) * 2 + ("ERROR",)

    def __init__(self, run: Path, tally: Tally, claimed: collections.deque[str], files: int, rate: float,
                 backlog: int, seed: int = 1) -> None:
        super().__init__(daemon=True, name="Producer")
        self.staging, self.unprocessed = run / "staging", run / "watch_dir" / "unprocessed"
        self.staging.mkdir(exist_ok=True)
        self.tally, self.files, self.rate, self.backlog = tally, files, rate, backlog
        self.rng = random.Random(seed)
        # Names sent again are taken from the files the daemon claimed last (the journal
        # follower's): the first delivery is then in flight, or just finished. A name
        # delivered last would most often still wait in the backlog, unclaimed.
        self.claimed = claimed
        self.recent_texts: collections.deque[bytes] = collections.deque(maxlen=64)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.kinds: collections.Counter[str] = collections.Counter()

    def run(self) -> None:
        try:
            next_at = time.monotonic()
            for i in range(self.files):
                if self.rate:
                    next_at += 1 / self.rate
                    if self.stop.wait(max(0.0, next_at - time.monotonic())):
                        return
                else:
                    while self.tally.outstanding() >= self.backlog:
                        if self.stop.wait(0.005):
                            return
                if self.stop.is_set():
                    return
                self.deliver(i)
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc

    def deliver(self, i: int) -> None:
        name, data, kind = self.make(i)
        tmp = self.staging / f".{i}.tmp"
        tmp.write_bytes(data)
        self.tally.delivering(name)
        try:
            move(tmp, self.unprocessed / name)
        except FileExistsError:  # that name still waits, unclaimed: a new name, as a careful producer does
            self.tally.undelivered(name)
            name, kind = f"f{i:07d}.log", "fresh"
            self.tally.delivering(name)
            move(tmp, self.unprocessed / name)
        self.kinds[kind] += 1

    def make(self, i: int) -> tuple[str, bytes, str]:
        """One file: its name, its content and what kind of delivery it is."""
        roll = self.rng.random()
        name = f"f{i:07d}.log"
        if i % self.BIG_EVERY == self.BIG_EVERY - 1:
            return name, self.lines(i, self.BIG_BYTES // 80), "big"
        if roll < 0.01:
            return name, self.lines(i, self.rng.randint(5, 30), fail=True), "failing"
        if roll < 0.02 and self.recent_texts:
            return name, self.rng.choice(self.recent_texts), "same content"
        data = self.lines(i, self.rng.randint(5, 30))
        self.recent_texts.append(data)
        if roll < 0.04 and self.claimed:
            return self.claimed[self.rng.randrange(len(self.claimed))], data, "same name"
        return name, data, "fresh"

    def lines(self, i: int, count: int, fail: bool = False) -> bytes:
        levels = self.LEVELS
        rows = [f"2026-12-01T00:00:{n % 60:02d} {levels[(i + n) % 10]} soak file {i} line {n} "
                f"GET /api/orders/{(i * 31 + n) % 100000} took {n % 997}ms\n" for n in range(count)]
        if fail:
            rows.insert(len(rows) // 2, f"FAIL here, file {i}\n")
        return "".join(rows).encode()


class Archiver(Ticker):
    """The operator's clean-up: what has been in processed/, failed/ or output/ for more
    than ``keep_s`` seconds (ctime: a rename sets it) is deleted and counted."""

    FOLDERS = ("processed", "failed", "output")

    def __init__(self, watch: Path, tally: Tally, keep_s: float) -> None:
        super().__init__(every_s=2.0)
        self.watch, self.tally, self.keep_s = watch, tally, keep_s

    def tick(self) -> None:
        self.sweep(self.keep_s)

    def sweep(self, keep_s: float) -> None:
        cutoff = time.time() - keep_s
        for folder in self.FOLDERS:
            with os.scandir(self.watch / folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):  # staged outputs, placeholders: the daemon's
                        continue
                    try:
                        if entry.stat(follow_symlinks=False).st_ctime > cutoff:
                            continue
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    reason = folder == "failed" and entry.name.endswith(".reason")
                    self.tally.archived("reason" if reason else folder, entry.name)


class Poller(Ticker):
    """The dashboard's readers: one endpoint after the other, 5 requests a second."""

    def __init__(self, base_url: str) -> None:
        super().__init__(every_s=0.2)
        self.base_url = base_url
        self.turn = 0
        self.latencies: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
        self.failures: collections.Counter[str] = collections.Counter()
        self.unhealthy: collections.Counter[str] = collections.Counter()  # /health 503 reasons
        self.unhealthy_at: list[float] = []  # monotonic times of the 503s
        self.last_metrics = ""

    def prepare(self) -> None:
        """Each of the dashboard's 8 waitress threads opens its own connection to the
        manager the first time it reads the state (a proxy's connection is per thread): the
        web process gains a descriptor and the manager a thread and a descriptor per
        connection, up to 8, as requests happen to land on threads that had not read yet
        (measured aside: sequential requests more than the snapshot cache's 0.25 s apart
        reach all 8 within a few seconds, 16 parallel clients add none beyond them). That
        bounded step is taken here, before the warm-up ends, so that it is not read as
        growth later in the run."""
        for _ in range(16):
            if self.stop.wait(0.3):
                return
            with contextlib.suppress(OSError), urllib.request.urlopen(self.base_url + "stats", timeout=10) as r:
                r.read()

    def tick(self) -> None:
        endpoint = ENDPOINTS[self.turn % len(ENDPOINTS)]
        self.turn += 1
        started = time.monotonic()
        try:
            with urllib.request.urlopen(self.base_url + endpoint, timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if endpoint == "health" and exc.code == 503:
                problems = json.loads(body or b"{}").get("problems", [])
                self.unhealthy[re.sub(r"\d+(\.\d+)?", "N", "; ".join(map(str, problems)))] += 1
                self.unhealthy_at.append(started)
            else:
                self.failures[f"{endpoint}: HTTP {exc.code}"] += 1
            return
        except (OSError, ValueError) as exc:
            self.failures[f"{endpoint}: {type(exc).__name__}"] += 1
            return
        self.latencies[endpoint].append(time.monotonic() - started)
        if endpoint == "metrics":
            self.last_metrics = body.decode(errors="replace")

    def restarts(self) -> dict[str, float]:
        """foldermill_worker_restarts_total by cause, from the last /metrics read."""
        return {m[1]: float(m[2]) for m in re.finditer(
            r'^foldermill_worker_restarts_total\{cause="([^"]*)"\} (\S+)', self.last_metrics, re.M)}


class Reloader(Ticker):
    """SIGHUP every ``every_s`` with the other of two valid configurations."""

    def __init__(self, config: Path, pid: int, per_worker: int, every_s: float) -> None:
        super().__init__(every_s=every_s)
        self.config, self.pid, self.per_worker = config, pid, per_worker
        self.count = 0
        self.sent_at: list[float] = []  # monotonic times of the SIGHUPs

    def tick(self) -> None:
        self.count += 1
        write_config(self.config, self.per_worker, "ab"[self.count % 2])
        self.sent_at.append(time.monotonic())
        os.kill(self.pid, signal.SIGHUP)


class JournalFollower(Ticker):
    """Reads ``input.log`` as it grows and hands every delivery's end to the tally. A
    rotation renames the file and the daemon opens a new one: the old one, still open
    here, is read to its end (nothing more is written to it), then the new one."""

    def __init__(self, path: Path, tally: Tally) -> None:
        super().__init__(every_s=0.2)
        self.path, self.tally = path, tally
        self.file: Any = None
        self.ino = -1
        self.rest = b""
        self.rotations = 0
        self.events: collections.Counter[str] = collections.Counter()
        self.claimed: collections.deque[str] = collections.deque(maxlen=256)  # the newest claims, for the producer

    def tick(self) -> None:
        if self.file is None and not self._open():
            return
        self._read()
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:  # between the rename and the new file
            return
        if ino != self.ino:
            self._read()
            self.file.close()
            self.file = None
            self.rotations += 1
            if self._open():
                self._read()

    def _open(self) -> bool:
        try:
            self.file = open(self.path, "rb")  # noqa: SIM115 - kept open across ticks
        except FileNotFoundError:
            return False
        self.ino = os.fstat(self.file.fileno()).st_ino
        return True

    def _read(self) -> None:
        data = self.rest + self.file.read()
        lines = data.split(b"\n")
        self.rest = lines.pop()  # a line being written: its end comes next time
        for line in lines:
            if not line.strip(b"\0 "):
                continue
            entry = json.loads(line)
            self.events[entry["event"]] += 1
            if entry["event"] in ENDS:
                self.tally.ended(entry)
            elif entry["event"] == "claimed":
                self.claimed.append(entry["file"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


# -- sampling -----------------------------------------------------------------------------------


def role_of(process: psutil.Process, supervisor: int) -> str:
    """A process of the daemon by what it does (workers by slot: their pids change)."""
    if process.pid == supervisor:
        return "supervisor"
    name = process.name()
    if name == "fm-manager":
        return "manager"
    if name == "fm-web":
        return "web"
    if name.startswith("fm-worker-"):
        return "worker-" + name.removeprefix("fm-worker-")
    command = " ".join(process.cmdline())
    if "resource_tracker" in command:
        return "tracker"  # multiprocessing's resource tracker, started by the spawn context
    if "spawn_main" in command:
        return "starting"  # a worker spawned, not yet named: a slot between two workers
    return f"other:{name}"


def fd_kinds(pid: int) -> dict[str, float]:
    """Descriptors on claim lock files (one per lock held, up to the queue's 1,024 lock
    files: they follow the files in flight) and on deleted files (a leak if they pile up)."""
    locks = deleted = 0
    directory = f"/proc/{pid}/fd"
    for fd in os.listdir(directory):
        try:
            target = os.readlink(f"{directory}/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        locks += "/.locks/" in target
        deleted += target.endswith(" (deleted)")
    return {"fd_locks": locks, "fd_deleted": deleted}


def sample_processes(daemon: Daemon) -> dict[str, float]:
    """RSS (MB), descriptors and threads per role (the largest over a role's live
    processes), the number of processes per role, live processes and zombies."""
    out: dict[str, float] = {"procs": 0, "zombies": 0}
    try:
        processes = [daemon.ps, *daemon.ps.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in processes:
        try:
            with p.oneshot():
                if p.status() == psutil.STATUS_ZOMBIE:
                    out["zombies"] += 1
                    continue
                role = role_of(p, daemon.pid)
                figures = {"rss_mb": p.memory_info().rss / MB, "fds": p.num_fds(), "threads": p.num_threads()}
            figures.update(fd_kinds(p.pid))
        except (psutil.Error, FileNotFoundError):  # it exited meanwhile (a recycled worker)
            continue
        # The supervisor's descriptors without its claim locks: what does not depend on
        # how many files happen to be in flight when the sample is taken.
        figures["fds_other"] = figures["fds"] - figures["fd_locks"]
        out["procs"] += p.pid != daemon.pid
        out[f"count.{role}"] = out.get(f"count.{role}", 0) + 1
        for measure, value in figures.items():
            key = f"{measure}.{role}"
            out[key] = max(out.get(key, 0), value)
    return out


def sample_storage(watch: Path) -> dict[str, float]:
    """Sizes of the state database and the journal, rows per table, auxiliary entries."""
    state = watch / ".foldermill"
    out: dict[str, float] = {}
    for suffix, key in (("", "db_mb"), ("-wal", "wal_mb"), ("-shm", "shm_mb")):
        try:
            out[key] = (state / f"state.db{suffix}").stat().st_size / MB
        except FileNotFoundError:
            out[key] = 0.0
    out["journal_mb"] = sum(p.stat().st_size for p in watch.glob("input.log*") if p.exists()) / MB
    out["aux_files"] = len(os.listdir(state)) + len(os.listdir(watch / ".locks"))
    try:
        db = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=2)
        try:
            for table in ("files", "reserved", "digests"):
                out[f"rows.{table}"] = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            out.update(retention_ages(db))
        finally:
            db.close()
    except sqlite3.Error:
        pass  # busy for 2 s: this sample goes without rows
    return out


AGES = {  # what retention prunes, and the age of its oldest row (indexed: a few ms)
    "age.processed": "SELECT MIN(updated) FROM files WHERE status IN ('processed', 'vanished')",
    "age.failed": "SELECT MIN(updated) FROM files WHERE status = 'failed'",
    "age.digests": "SELECT MIN(added) FROM digests WHERE added > 0",
}


def retention_ages(db: sqlite3.Connection) -> dict[str, float]:
    """Seconds since the oldest finished record, failed record and digest were written:
    retention keeps up if these stay near the retention (43 s) plus its pass interval,
    whatever the throughput, where the row counts follow the throughput."""
    now = time.time()
    ages = {}
    for key, query in AGES.items():
        oldest = db.execute(query).fetchone()[0]
        if oldest is not None:
            ages[key] = now - oldest
    return ages


@dataclass
class Sample:
    t: float  # seconds since the first delivery
    sent: int
    done: int  # deliveries ended (journal)
    values: dict[str, float]
    phase: str = "run"  # "drained": after the producer stopped and the backlog drained (not a steady state)


# -- growth and verdicts ------------------------------------------------------------------------

# measure -> (label, absolute floor of the tolerance)
MEASURES: dict[str, tuple[str, float]] = {
    **{f"rss_mb.{r}": (f"RSS {r}, MB", 4.0) for r in ROLES},
    **{f"fds.{r}": (f"descriptors {r}", 2.0) for r in ROLES},
    "fd_locks.supervisor": ("descriptors supervisor: claim locks", 2.0),
    "fds_other.supervisor": ("descriptors supervisor: the others", 2.0),
    **{f"fd_deleted.{r}": (f"descriptors {r}: deleted files", 2.0) for r in ROLES},
    **{f"threads.{r}": (f"threads {r}", 2.0) for r in ROLES},
    "procs": ("child processes", 2.0),
    "zombies": ("zombies", 2.0),
    "db_mb": ("state.db, MB", 1.0),
    "wal_mb": ("state.db-wal, MB", 1.0),
    "shm_mb": ("state.db-shm, MB", 1.0),
    "rows.files": ("rows: files", 1000.0),
    "rows.reserved": ("rows: reserved", 1000.0),
    "rows.digests": ("rows: digests", 1000.0),
    "age.processed": ("oldest processed record, s", 5.0),
    "age.failed": ("oldest failed record, s", 5.0),
    "age.digests": ("oldest digest, s", 5.0),
    "journal_mb": ("journal input.log*, MB", 1.0),
    "aux_files": ("entries in .foldermill/ + .locks/", 2.0),
}


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of y over x, and its standard error (0, 0 for fewer than three
    points or one x)."""
    if len(points) < 3:
        return 0.0, 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    var = sum((x - mx) ** 2 for x, _ in points)
    if not var:
        return 0.0, 0.0
    b = sum((x - mx) * (y - my) for x, y in points) / var
    residuals = sum((y - my - b * (x - mx)) ** 2 for x, y in points)
    return b, (residuals / (len(points) - 2) / var) ** 0.5


@dataclass(frozen=True)
class Growth:
    measure: str
    first: float
    last: float
    low: float
    high: float
    per_100k: float  # slope over the span after the warm-up, per 100,000 files
    late_per_100k: float  # slope over its second half
    fitted: float  # the slope times the span's files: what the measure grew by, trend only
    noise: float  # two standard errors of ``fitted``
    tolerance: float
    verdict: str


def growth(samples: list[Sample], measure: str, floor: float) -> Growth | None:
    """The trend of one measure over the samples, and its verdict: "flat" when the fitted
    growth is within the tolerance (10 % of the median level, at least ``floor``) or within
    two standard errors of the fit (a measure that follows the load, such as the claim locks
    of the files in flight, swings more than it trends); "settled" when it grew beyond both
    but less than half the tolerance over the second half; else "grows" or "shrinks"."""
    points = [(s.done, s.values[measure]) for s in samples if measure in s.values]
    if len(points) < 3:
        return None
    span = points[-1][0] - points[0][0]
    half = points[0][0] + span / 2
    (per, error), (late, _) = fit(points), fit([p for p in points if p[0] >= half])
    fitted, noise = per * span, 2 * error * span
    tolerance = max(0.10 * abs(statistics.median(y for _, y in points)), floor)
    if abs(fitted) <= max(tolerance, noise):
        verdict = "flat"
    elif fitted < 0:
        verdict = "shrinks"
    else:
        verdict = "settled" if late * span / 2 <= tolerance / 2 else "**grows**"
    ys = [y for _, y in points]
    return Growth(measure, ys[0], ys[-1], min(ys), max(ys), per * 1e5, late * 1e5, fitted, noise, tolerance,
                  verdict)


def after_warmup(samples: list[Sample], fraction: float) -> tuple[list[Sample], str]:
    """The samples after the warm-up: the later of ``fraction`` of the files and two
    retention windows (the database and the digests fill for one window, prune after);
    in a run too short for that, after ``fraction`` alone, and a note saying so."""
    total = samples[-1].done if samples else 0
    span = [s for s in samples if s.done >= fraction * total]
    settled = [s for s in span if s.t >= 2 * RETENTION_S]
    if len(settled) >= 3:
        return settled, ""
    return span, (f" (the run is shorter than two retention windows, {2 * RETENTION_S:.0f} s: the database "
                  "and the journal still fill, their growth is not a leak)")


# -- the run ------------------------------------------------------------------------------------


def write_config(path: Path, per_worker: int, mark: str) -> None:
    """Written beside and renamed in: a SIGHUP never reads half a file."""
    tmp = path.with_name(".config.toml.tmp")
    tmp.write_text(CONFIG.format(retention_days=RETENTION_DAYS, per_worker=per_worker, mark=mark))
    os.replace(tmp, path)


def fresh_dir(run: Path) -> None:
    """The scratch dir, wiped: only one this benchmark made (it holds MARKER) or an empty one."""
    if run.exists():
        if not (run / MARKER).exists() and any(run.iterdir()):
            raise BenchError(f"{run} is not empty and not a soak scratch dir (no {MARKER}): not wiping it")
        shutil.rmtree(run)
    (run / "watch_dir" / "unprocessed").mkdir(parents=True)
    (run / MARKER).touch()
    (run / "soakproc.py").write_text(PROCESSOR)


@dataclass
class Run:
    """Everything a run produced, for the report."""

    args: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int | None = None
    survivors: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    rotations: int = 0
    reloads: int = 0
    reloads_logged: int = 0
    restarts: dict[str, float] = field(default_factory=dict)
    requests: dict[str, dict[str, float]] = field(default_factory=dict)
    request_failures: dict[str, int] = field(default_factory=dict)
    unhealthy: dict[str, int] = field(default_factory=dict)
    unhealthy_after_sighup_s: list[float] = field(default_factory=list)  # each /health 503, since the last SIGHUP
    log_lines: dict[str, int] = field(default_factory=dict)
    log_path: str = ""
    interrupted: bool = False
    cpu_daemon_s: float = 0.0  # every process of the daemon, once it exited (reaped children)
    cpu_bench_s: float = 0.0  # this process: the producer, archiver, poller, follower, sampler


class Soak:
    """One soak run: the daemon, the threads around it, the samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir: Path = args.dir
        self.watch = self.run_dir / "watch_dir"
        self.config = self.run_dir / "config.toml"
        self.tally = Tally()
        self.result = Run({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
        self.daemon: Daemon | None = None
        self.threads: list[Any] = []
        self.started = 0.0
        self.next_milestone = 1

    def start(self) -> None:
        fresh_dir(self.run_dir)
        write_config(self.config, self.args.per_worker, "a")
        load_config(self.config)  # an invalid configuration fails here, not in the daemon
        self.daemon = Daemon(self.config, name="soak")
        wait_for(lambda: "foldermill started" in self.daemon.log() or not self.daemon.alive(), 60,
                 "the supervisor to start")
        if not self.daemon.alive():
            raise BenchError(f"the supervisor exited at start:\n{self.daemon.log()[-3000:]}")
        self.follower = JournalFollower(self.watch / "input.log", self.tally)
        self.archiver = Archiver(self.watch, self.tally, self.args.keep)
        self.poller = Poller(dashboard_url(self.daemon))
        self.reloader = Reloader(self.config, self.daemon.pid, self.args.per_worker, self.args.reload_every)
        self.producer = Producer(self.run_dir, self.tally, self.follower.claimed, self.args.files, self.args.rate,
                                 self.args.backlog)
        self.threads = [self.follower, self.archiver, self.poller, self.reloader, self.producer]
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()

    def produce(self) -> None:
        """Until the producer is done (or ``--duration``): sample, and watch for a dead
        or stalled daemon."""
        # Without --duration, a safety net: a run slower than 20 files/s stops delivering.
        deadline = self.started + (self.args.duration or max(1800.0, self.args.files / 20))
        last_done, last_progress = 0, time.monotonic()
        while self.producer.is_alive() and time.monotonic() < deadline:
            self.producer.join(self.args.sample_every)
            self.check()
            self.take_sample()
            done = self.tally.get("done")
            if done != last_done:
                last_done, last_progress = done, time.monotonic()
            elif self.tally.outstanding() and time.monotonic() - last_progress > STALL_S:
                raise BenchError(f"no file finished for {STALL_S:.0f}s with {self.tally.outstanding()} outstanding")
        if self.producer.is_alive() and not self.args.duration:
            self.result.problems.append(f"only {self.tally.get('sent'):,} files delivered before the deadline")
        self.producer.stop.set()
        self.producer.join(10)

    def drain(self) -> None:
        """Wait for every delivery to end, sampling meanwhile."""
        deadline = time.monotonic() + DRAIN_S
        while self.tally.outstanding() and time.monotonic() < deadline:
            self.check()
            threading.Event().wait(min(1.0, self.args.sample_every))
        if self.tally.outstanding():
            self.result.problems.append(f"{self.tally.outstanding()} deliveries had not ended "
                                        f"{DRAIN_S:.0f}s after the producer stopped")
        self.take_sample("drained")

    def check(self) -> None:
        for thread in self.threads:
            if thread.error is not None:
                raise BenchError(f"{thread.name} failed: {thread.error!r}") from thread.error
        if not self.daemon.alive():
            raise BenchError(f"the supervisor exited ({self.daemon.proc.returncode}):\n{self.daemon.log()[-3000:]}")

    def take_sample(self, phase: str = "run") -> None:
        values = {**sample_processes(self.daemon), **sample_storage(self.watch)}
        sample = Sample(round(time.monotonic() - self.started, 2), self.tally.get("sent"),
                        self.tally.get("done"), values, phase)
        self.result.samples.append(sample)
        if self.args.verbose:
            print(f"  {sample_line(sample)}", flush=True)
        elif sample.done >= self.next_milestone * self.args.files / 10:
            self.next_milestone = int(sample.done * 10 / self.args.files) + 1
            print(f"  {sample_line(sample)}", flush=True)

    def stop(self) -> None:
        """SIGTERM; the daemon must exit 0 and leave no child behind."""
        for thread in (self.poller, self.reloader, self.producer):
            thread.stop.set()
        for thread in (self.poller, self.reloader):
            thread.join(15)
        children = [c.pid for c in self.daemon.children()]
        try:
            self.result.exit_code = self.daemon.stop(timeout_s=STOP_S)
        except subprocess.TimeoutExpired:  # recorded, then killed
            self.result.problems.append(f"the supervisor did not exit within {STOP_S:.0f}s of SIGTERM")
            self.daemon.kill()
        try:
            wait_for(lambda: not alive(children), 10, "the daemon's children to exit", interval_s=0.1)
        except AssertionError:
            self.result.survivors = alive(children)
            for pid in self.result.survivors:
                psutil.Process(pid).kill()
        if self.result.exit_code != 0:
            self.result.problems.append(f"the supervisor exited with status {self.result.exit_code}, not 0")
        if self.result.survivors:
            self.result.problems.append(f"child processes survived the supervisor: {self.result.survivors}")

    def account(self) -> None:
        """Read the journal's last lines, sweep every folder, and check each delivery's end."""
        self.follower.finish()
        self.follower.tick()
        self.follower.close()
        self.archiver.finish()
        self.archiver.sweep(keep_s=-1.0)
        tally, r = self.tally, self.result
        with tally.lock:
            r.counts = dict(tally.counts)
            if tally.pending:
                r.problems.append(f"{sum(tally.pending.values())} deliveries never ended in the journal, e.g. "
                                  f"{sorted(tally.pending)[:5]}")
            if tally.overdone:
                r.problems.append(f"{len(tally.overdone)} ends without a delivery (processed twice?), e.g. "
                                  f"{tally.overdone[:5]}")
            missing = sorted(k for k, v in tally.unmatched.items() if v > 0)
            extra = sorted(k for k, v in tally.unmatched.items() if v < 0)
        if missing:
            r.problems.append(f"{len(missing)} files the journal put in processed/ or failed/ were not there: "
                              f"{missing[:5]}")
        if extra:
            r.problems.append(f"{len(extra)} files in processed/ or failed/ the journal did not account for: "
                              f"{extra[:5]}")
        if r.counts.get("outputs_committed", 0) != r.counts.get("archived_output", 0):
            r.problems.append(f"the journal names {r.counts.get('outputs_committed', 0)} outputs, output/ held "
                              f"{r.counts.get('archived_output', 0)}")
        if r.counts.get("archived_failed", 0) != r.counts.get("archived_reason", 0):
            r.problems.append(f"{r.counts.get('archived_failed', 0)} files in failed/ but "
                              f"{r.counts.get('archived_reason', 0)} reason files")

    def collect(self) -> None:
        """The figures the threads kept, and the supervisor's log."""
        r = self.result
        if not self.threads:  # stopped before it started
            return
        if not r.counts:  # interrupted before the accounting: the counts so far
            with self.tally.lock:
                r.counts = dict(self.tally.counts)
        r.seconds = round(time.monotonic() - self.started, 1)
        r.kinds = dict(self.producer.kinds)
        r.events = dict(self.follower.events)
        r.rotations = self.follower.rotations
        r.reloads = self.reloader.count
        r.restarts = self.poller.restarts()
        r.requests = {e: summary(v) for e, v in self.poller.latencies.items()}
        r.request_failures = dict(self.poller.failures)
        r.unhealthy = dict(self.poller.unhealthy)
        r.unhealthy_after_sighup_s = [
            round(t - max((h for h in self.reloader.sent_at if h <= t), default=self.started), 1)
            for t in self.poller.unhealthy_at]
        log = self.daemon.log()
        r.log_path = str(self.daemon.log_path)
        r.reloads_logged = log.count("configuration reloaded")
        r.log_lines = log_summary(log)
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        r.cpu_bench_s = round(own.ru_utime + own.ru_stime, 1)
        r.cpu_daemon_s = round(children.ru_utime + children.ru_stime, 1)

    def abort(self) -> None:
        """Whatever happened: no thread writes on, no process of ours is left."""
        for thread in self.threads:
            thread.stop.set()
        if self.daemon is None:
            return
        children = [c.pid for c in self.daemon.children()]
        if self.daemon.alive():
            self.daemon.proc.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(STOP_S)
            except subprocess.TimeoutExpired:  # it would not stop
                self.daemon.kill()
        self.result.exit_code = self.daemon.proc.returncode
        for pid in alive(children):
            psutil.Process(pid).kill()


def summary(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"count": 0}
    ordered = sorted(latencies)
    return {"count": len(ordered), "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
            "max_ms": ordered[-1] * 1000}


def log_summary(log: str) -> dict[str, int]:
    """Traceback, ERROR and WARNING lines of the supervisor's log, by message with names
    and numbers taken out."""
    found: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        if "Traceback" in line or " ERROR " in line or " WARNING " in line:
            text = line.split(" ", 2)[-1] if line[:4].isdigit() else line
            text = re.sub(r"f\d{7}(-\d+)?\.log", "NAME", text)
            text = re.sub(r"\d+(\.\d+)?", "N", text)
            found[text[:160]] += 1
    return dict(found.most_common())


def sample_line(s: Sample) -> str:
    v = s.values
    roles = " ".join(f"{r} {v.get(f'rss_mb.{r}', 0):.0f}MB/{v.get(f'fds.{r}', 0):.0f}fd/"
                     f"{v.get(f'threads.{r}', 0):.0f}th" for r in ROLES)
    return (f"{s.t:7.1f}s {s.done:>9,} done ({s.sent - s.done} out) | {roles} | procs {v.get('procs', 0):.0f} "
            f"| db {v.get('db_mb', 0) + v.get('wal_mb', 0) + v.get('shm_mb', 0):.1f}MB "
            f"rows {v.get('rows.files', 0):.0f}/{v.get('rows.reserved', 0):.0f}/{v.get('rows.digests', 0):.0f} "
            f"| journal {v.get('journal_mb', 0):.1f}MB")


# -- the report ---------------------------------------------------------------------------------


def milestones(samples: list[Sample], parts: int = 10) -> Iterator[Sample]:
    """While files flowed, the first sample at or past each tenth of the files finished;
    then the sample after the drain."""
    running = [s for s in samples if s.phase == "run"]
    total = running[-1].done if running else 0
    shown: set[int] = set()
    for k in range(1, parts + 1):
        index = next((i for i, s in enumerate(running) if s.done >= k * total / parts), len(running) - 1)
        if index not in shown:
            shown.add(index)
            yield running[index]
    yield from (s for s in samples if s.phase != "run")


def cell(values: dict[str, float], key: str, unit: str = "") -> str:
    """A figure for the tables; "-" when no process had that role then (a worker slot
    between a recycled worker and its successor)."""
    if key not in values:
        return "-"
    return f"{values[key]:,.1f}{unit}" if unit else f"{values[key]:,.0f}"


def print_tables(r: Run) -> None:
    rows = list(milestones(r.samples))
    header = ["files", "time", "files/s", *(f"RSS {x}" for x in ROLES), "state.db+wal+shm",
              "rows files / reserved / digests", "journal"]
    print("\n| " + " | ".join(header) + " |\n" + "| ---: " * len(header) + "|")
    previous = Sample(0.0, 0, 0, {})
    for s in rows:
        v = s.values
        rate = (s.done - previous.done) / (s.t - previous.t) if s.t > previous.t else 0.0
        db = v.get("db_mb", 0) + v.get("wal_mb", 0) + v.get("shm_mb", 0)
        when = f"{s.t:.0f} s" + (f" ({s.phase})" if s.phase != "run" else "")
        print(f"| {s.done:,} | {when} | {rate:,.0f} | " + " | ".join(cell(v, f"rss_mb.{x}", " MB") for x in ROLES)
              + f" | {db:.1f} MB | {cell(v, 'rows.files')} / {cell(v, 'rows.reserved')} / {cell(v, 'rows.digests')} "
              f"| {v.get('journal_mb', 0):.1f} MB |")
        previous = s
    header = ["files", "supervisor: fds (claim locks) / threads", *(f"{x}: fds / threads" for x in ROLES[1:]),
              "fds on deleted files", "processes (zombies)"]
    print("\n| " + " | ".join(header) + " |\n" + "| ---: " * len(header) + "|")
    for s in rows:
        v = s.values
        deleted = sum(v.get(f"fd_deleted.{x}", 0) for x in ROLES)
        print(f"| {s.done:,} | {cell(v, 'fds.supervisor')} ({cell(v, 'fd_locks.supervisor')}) / "
              f"{cell(v, 'threads.supervisor')} | "
              + " | ".join(f"{cell(v, f'fds.{x}')} / {cell(v, f'threads.{x}')}" for x in ROLES[1:])
              + f" | {deleted:.0f} | {v.get('procs', 0):.0f} ({v.get('zombies', 0):.0f}) |")


def print_growth(r: Run, warmup: float) -> list[Growth]:
    span, note = after_warmup([s for s in r.samples if s.phase == "run"], warmup)
    if len(span) < 3:
        print("\n(too few samples after the warm-up for the growth table)")
        return []
    print(f"\nGrowth after the warm-up, from {span[0].done:,} files ({span[0].t:.0f} s) to {span[-1].done:,} "
          f"({span[-1].t:.0f} s), {len(span)} samples; slopes per 100,000 files{note}:\n")
    print("| measure | first | last | min - max | slope | slope, 2nd half | fitted growth ± 2 SE | tolerance "
          "| verdict |")
    print("| --- " + "| ---: " * 7 + "| --- |")
    found, zeros = [], []
    for measure, (label, floor) in MEASURES.items():
        g = growth(span, measure, floor)
        if g is None:
            continue
        found.append(g)
        if g.low == g.high == 0:
            zeros.append(label)
            continue
        print(f"| {label} | {g.first:,.1f} | {g.last:,.1f} | {g.low:,.1f} - {g.high:,.1f} | {g.per_100k:+,.2f} "
              f"| {g.late_per_100k:+,.2f} | {g.fitted:+,.2f} ± {g.noise:,.2f} | {g.tolerance:,.1f} | {g.verdict} |")
    if zeros:
        print(f"\nZero in every sample: {', '.join(zeros)}.")
    return found


def slot_occupancy(samples: list[Sample]) -> str:
    """How often each worker slot had no named, live worker when sampled: the share of
    time a recycled worker's successor spends being spawned and importing."""
    running = [s for s in samples if s.phase == "run"]
    if not running:
        return ""
    slots = [role for role in ROLES if role.startswith("worker-")]
    empty = [sum(f"rss_mb.{slot}" not in s.values for s in running) / len(running) for slot in slots]
    return "Worker slots without a running worker in " + " / ".join(f"{e:.0%}" for e in empty) + " of the samples."


def print_summary(r: Run) -> None:
    c = r.counts
    rate = c.get("done", 0) / r.seconds if r.seconds else 0.0
    print(f"\n{c.get('sent', 0):,} files delivered in {r.seconds:.0f} s ({rate:,.0f} files/s); ends: "
          f"{c.get('processed', 0):,} processed, {c.get('duplicate', 0):,} duplicate, {c.get('failed', 0):,} failed; "
          f"{c.get('collision', 0):,} under a collision name. Deliveries by kind: "
          + ", ".join(f"{k} {n:,}" for k, n in sorted(r.kinds.items())) + ".")
    print(f"Archived: {c.get('archived_processed', 0):,} from processed/, {c.get('archived_failed', 0):,} from "
          f"failed/ (+ {c.get('archived_reason', 0):,} reasons), {c.get('archived_output', 0):,} outputs "
          f"(the journal named {c.get('outputs_committed', 0):,}).")
    print(f"Journal: {r.rotations} rotations read; events " + ", ".join(f"{k} {n:,}" for k, n in
                                                                        sorted(r.events.items())) + ".")
    print(f"Reloads: {r.reloads} SIGHUPs, {r.reloads_logged} logged as reloaded. Worker restarts (/metrics): "
          + (", ".join(f"{k} {v:,.0f}" for k, v in sorted(r.restarts.items())) or "none read") + ". "
          + slot_occupancy(r.samples))
    print("Dashboard: " + "; ".join(
        f"/{e} {s['count']:,} ok, p50 {s.get('p50_ms', 0):.1f} ms, p99 {s.get('p99_ms', 0):.1f} ms, "
        f"max {s.get('max_ms', 0):.0f} ms" for e, s in r.requests.items())
        + f"; failures: {r.request_failures or 'none'}; /health 503: {r.unhealthy or 'none'}"
        + (f", {r.unhealthy_after_sighup_s} s after the last SIGHUP" if r.unhealthy_after_sighup_s else "") + ".")
    print(f"Supervisor log ({r.log_path}): "
          + ("; ".join(f"{n:,} x {text}" for text, n in list(r.log_lines.items())[:12]) or "no Traceback, "
             "ERROR or WARNING line") + ".")
    print(f"Stop: exit status {r.exit_code}, surviving children {r.survivors or 'none'}. CPU: the daemon "
          f"{r.cpu_daemon_s:,.0f} s ({r.cpu_daemon_s / max(r.seconds, 1):.2f} cores on average), this benchmark "
          f"{r.cpu_bench_s:,.0f} s ({r.cpu_bench_s / max(r.seconds, 1):.2f} cores).")
    if r.problems:
        print("\nFINDINGS:\n" + "\n".join(f"- {p}" for p in r.problems))
    else:
        print("Every delivery ended exactly once (journal and folders agree); the daemon stopped cleanly.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=250_000,
                        help="files to deliver (about 13 minutes at the ~310 files/s measured on the 2-core machine)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop delivering after this many seconds")
    parser.add_argument("--rate", type=float, default=0.0, help="files/s (0: as fast as the daemon drains)")
    parser.add_argument("--backlog", type=int, default=1000, help="most files outstanding, without --rate")
    parser.add_argument("--reload-every", type=float, default=30.0, help="seconds between SIGHUPs")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--per-worker", type=int, default=500, help="[workers] max_files_per_worker")
    parser.add_argument("--keep", type=float, default=10.0, help="seconds the archiver leaves finished files")
    parser.add_argument("--warmup", type=float, default=0.10, help="fraction of the files left out of the growth")
    parser.add_argument("--dir", type=Path, default=ROOT / ".scratch" / "soak",
                        help="scratch dir, wiped at start (default on the disk)")
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    parser.add_argument("--verbose", action="store_true", help="print every sample")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soak = Soak(args)
    print(f"soak: {args.files:,} files, {f'{args.rate:g} files/s' if args.rate else f'backlog {args.backlog}'}, "
          f"reload every {args.reload_every:g}s, max_files_per_worker {args.per_worker}, in {args.dir}", flush=True)
    try:
        soak.start()
        soak.produce()
        soak.drain()
        soak.stop()
        soak.account()
    except KeyboardInterrupt:
        soak.result.interrupted = True
        soak.result.problems.append("interrupted (Ctrl-C): the figures are partial")
        soak.abort()
    except BaseException:
        soak.abort()
        raise
    soak.collect()
    r = soak.result
    print_tables(r)
    found = print_growth(r, args.warmup)
    print_summary(r)
    if args.json:
        args.json.write_text(json.dumps({**asdict(r), "growth": [asdict(g) for g in found]}, indent=1))
    return 130 if r.interrupted else (1 if r.problems else 0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"soak: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
