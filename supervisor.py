"""foldermill: a fault-tolerant hot-folder processor.

    python supervisor.py -c config.toml [--once] [--trace] [--workers N]   the daemon
    python supervisor.py -c config.toml check          validate, print the routing graph
    python supervisor.py -c config.toml run FILE...    run the pipeline on files directly

Exit status: 0 success or a clean stop, 1 some file failed (``run``), 2 bad
configuration or usage, 3 another fatal start-up error.

The supervisor is the only process that moves queue files, holds claim locks, and
creates the multiprocessing manager; workers (``workers/worker.py``) only read claimed
files and stage outputs. Its loop is one short step at a time (``step``); signal
handlers only count signals.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import multiprocessing as mp
import os
import queue
import secrets
import signal
import socket
import sqlite3
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import psutil

from workers import __version__
from workers.config import Config, load_config
from workers.engine import run_file
from workers.errors import ConfigError, InputError, SystemFailure
from workers.fs import fsync_dir, syncfs
from workers.graph import Graph, compile_graph
from workers.intake import MOVED_IN, start_observer
from workers.names import output_name, reason_name, shown, unshown
from workers.ops import announce, retry_one
from workers.outputs import StagedOutputs, remove_staged, rename_staged, unique_name
from workers.progress import Progress
from workers.queue import Candidate, FolderQueue, QueueSetupError
from workers.readiness import Readiness, open_for_writing
from workers.state import Stats, errors_from_journal
from workers.store import FileRecord, Journal, StateError, Store, tail_journal
from workers.worker import (
    P_BYTES,
    P_ITEM,
    P_JOB,
    P_LINES,
    P_PID,
    P_SENT,
    P_STARTED,
    SLOT_SIZE,
    ItemResult,
    Job,
    JobItem,
    JobResult,
    WorkerArgs,
    manager_init,
    worker_main,
)

EXIT_OK = 0
EXIT_FILES_FAILED = 1
EXIT_USAGE = 2
EXIT_FATAL = 3

PREFETCH_JOBS = 2  # jobs per worker: one running, one waiting
RECOVER_EVERY_S = 5.0
PUBLISH_EVERY_S = 0.5
MEMORY_CHECK_EVERY_S = 0.25
QUICK_DEATH_S = 5.0  # a worker that dies this soon after start, before any job, is flapping
FLAP_DEATHS = 3  # ... this many times in a row: its slot backs off
FLAP_BACKOFF_MAX_S = 60.0
ORPHAN_WAIT_S = 5.0
SUMMARY_EVERY_S = 10.0
WEB_RESTART_EVERY_S = 2.0  # a dashboard that keeps dying is restarted at most this often

log = logging.getLogger("foldermill")


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supervisor.py", description="foldermill hot-folder processor")
    parser.add_argument("-c", "--config", default="config.toml", help="path to config.toml (default: %(default)s)")
    parser.add_argument("--once", action="store_true", help="process what is ready, wait for it, exit 0")
    parser.add_argument("--trace", action="store_true", help="trace line routes and log every file transition")
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes (overrides [workers] count)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines on stderr")
    parser.add_argument("--version", action="version", version=f"foldermill {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("check", help="validate the config and print the routing graph")
    status = sub.add_parser("status", help="queue counts, workers, recent failures (running or not)")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    retry = sub.add_parser("retry", help="move failed files back to unprocessed/ with fresh attempts")
    retry.add_argument("names", nargs="*", metavar="NAME")
    retry.add_argument("--all", action="store_true", help="every file in failed/")
    history = sub.add_parser("history", help="every journal entry for one file")
    history.add_argument("name", metavar="NAME")
    history.add_argument("--json", action="store_true", help="JSON lines")
    run = sub.add_parser("run", help="run the pipeline on files directly (no folders, no pool)")
    run.add_argument("files", nargs="+", type=Path, metavar="FILE")
    run.add_argument("--output-dir", type=Path, help="where outputs go (default: the watch dir's output/)")
    run.add_argument("--trace", action="store_true", help="print the route of sampled lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        config = load_config(args.config)
        graph = compile_graph(config.pipeline, str(config.base_dir))
    except ConfigError as exc:
        print(f"foldermill: configuration error in {args.config}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        return cmd_check(config, graph)
    if args.command == "run":
        return cmd_run(config, graph, args.files, args.output_dir, args.trace)
    if args.command in ("status", "retry", "history"):
        return cmd_ops(config, args)
    setup_logging(args.log_format)
    options = Options(once=args.once, trace=args.trace, workers=args.workers or config.workers.worker_count())
    supervisor = Supervisor(config, graph, options)
    supervisor.catch_signals()  # before anything starts: a SIGTERM during start-up stops cleanly
    try:
        supervisor.start()
    except (QueueSetupError, SystemFailure, StateError, OSError) as exc:
        log.error("cannot start: %s", exc)
        supervisor.shutdown()
        return EXIT_FATAL
    except StartInterrupted:
        log.info("stopped by a signal while starting")
        supervisor.shutdown()
        return EXIT_OK
    return supervisor.run()


def cmd_ops(config: Config, args: argparse.Namespace) -> int:
    """status, retry, history: the operator's verbs (workers/ops.py)."""
    from workers import ops

    if args.command == "status":
        s = ops.status(config)
        print(json.dumps(s) if args.json else ops.format_status(s))
        return EXIT_OK
    if args.command == "retry":
        if bool(args.names) == bool(args.all):
            print("foldermill: retry needs NAME... or --all (not both)", file=sys.stderr)
            return EXIT_USAGE
        moved, problems = ops.retry(config, args.names, args.all)
        for name in moved:
            print(f"{name}: back in unprocessed/, with fresh attempts")
        for problem in problems:
            print(f"foldermill: {problem}", file=sys.stderr)
        return EXIT_FILES_FAILED if problems else EXIT_OK
    entries = ops.history(config, args.name)
    if not entries:
        print(f"foldermill: no journal entry for {args.name!r}", file=sys.stderr)
        return EXIT_FILES_FAILED
    print("\n".join(json.dumps(e) for e in entries) if args.json else ops.format_history(entries))
    return EXIT_OK


def cmd_check(config: Config, graph: Graph) -> int:
    print(f"config {config.path} is valid")
    print(f"watch dir: {config.watch.dir}")
    print("routing graph (tag -> processor -> tags it may emit):")
    for line in graph.describe():
        print(f"  {line}")
    return EXIT_OK


def cmd_run(config: Config, graph: Graph, files: list[Path], output_dir: Path | None, trace: bool) -> int:
    out_dir = output_dir or config.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [_size(p) for p in files]
    view = Progress(sys.stderr)
    failed, done_bytes = 0, 0
    for i, (path, size) in enumerate(zip(files, sizes, strict=True)):
        def report(bytes_done: int, _lines: int, path: Path = path, size: int = size, i: int = i,
                   before: int = done_bytes) -> None:
            view.update(i, len(files), before + bytes_done, sum(sizes), [(shown(path.name), bytes_done, size)])

        if not _run_one(graph, path, out_dir, trace, report):
            failed += 1
        done_bytes += size
    view.update(len(files), len(files), done_bytes, sum(sizes), [], final=True)
    return EXIT_FILES_FAILED if failed else EXIT_OK


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _run_one(graph: Graph, path: Path, out_dir: Path, trace: bool, report: Any = None) -> bool:
    suffixes = graph.side_outputs()

    def taken(name: str) -> bool:
        return any(os.path.lexists(out_dir / output_name(name, s)) for s in ("", *suffixes))

    started = time.monotonic()
    where = shown(str(path))
    try:
        source = open(path, "rb")  # noqa: SIM115 - the with block below closes it
    except OSError as exc:
        print(f"{where}: cannot open: {exc.strerror}", file=sys.stderr)
        return False
    with source:
        staged = StagedOutputs(out_dir, unique_name(path.name, taken), graph.settings.encoding)
        try:
            result = run_file(graph, path.name, source, staged.sink, report, trace_every=100 if trace else 0)
        except InputError as exc:
            staged.abort()
            print(f"{where}: failed: {exc}", file=sys.stderr)
            return False
        except BaseException:
            staged.abort()
            raise
    finals = staged.commit()
    seconds = time.monotonic() - started
    for error in result.errors:
        print(f"{where}: line {error['line']} (node {error['node']!r}) skipped: {error['message']}", file=sys.stderr)
    finals_shown = ", ".join(shown(str(p)) for p in finals)
    print(f"{where}: {result.lines_in} lines in, {result.lines_out} out, "
          f"{result.error_count} skipped, {seconds:.3f}s -> {finals_shown}")
    for line_no, route in result.routes:
        print(f"  trace line {line_no}: {' -> '.join(route)}")
    return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record), "level": record.levelname.lower(), "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


# -- the daemon ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    once: bool = False
    trace: bool = False
    workers: int = 1


@dataclass
class Flight:
    """A claimed file: in underprocess/, its lock held by us."""

    record: FileRecord
    size: int
    seq: int = 0  # the job carrying it, 0 while waiting for dispatch
    not_before: float = 0.0  # monotonic: after a failed attempt, when it may run again


class StartInterrupted(Exception):
    """SIGTERM or SIGINT arrived while the supervisor was still starting."""


# The errors that say the whole system is unusable, not one file (exit status 3).
SYSTEM_ERRNOS = frozenset({errno.EROFS, errno.EIO})
REPEATED_FAILURES = 5  # a loop step that fails this many times in a row is a system failure


@dataclass
class Slot:
    """One worker position: the process in it is replaced when it dies."""

    index: int
    process: Any = None
    jobs: Any = None  # its manager queue
    assigned: dict[int, Job] = field(default_factory=dict)
    started_at: float = 0.0
    kill_cause: str = ""  # why we killed it (timeout, memory), if we did
    recycling: bool = False
    quick_deaths: int = 0
    not_before: float = 0.0
    files_done: int = 0
    rss: int = 0
    restarts: int = 0
    cpu: Any = None  # psutil.Process, for CPU %
    capacity: int = PREFETCH_JOBS  # jobs it may hold at once


class Supervisor:
    def __init__(self, config: Config, graph: Graph, options: Options) -> None:
        self.config = config
        self.graph = graph
        self.options = options
        w = config.watch
        self.queue = FolderQueue(w.dir, w.include, w.exclude, w.ready_marker)
        self.readiness = Readiness(w.settle)
        # SimpleQueue: put() is reentrant, so the signal handler may use it.
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"  # as people see it
        # As the state database sees it: unique to this start, even for a pid 1 in a container.
        self.incarnation = f"{self.owner}:{secrets.token_hex(4)}"
        self.flights: dict[str, Flight] = {}
        self.by_id: dict[int, str] = {}
        self.redispatch: list[str] = []
        self.unclaimable: set[str] = set()  # names a claim failed on (said once)
        self.unmoved: dict[str, tuple[str, tuple]] = {}  # claimed files whose last move failed: retried
        self.parked: set[str] = set()  # flights waiting out the backoff of a failed attempt
        self.failures_in_a_row = 0
        self.to_commit: list[tuple[Flight, ItemResult, int]] = []
        self.orphans: dict[int, tuple[Job, float]] = {}
        self.backlog: deque[Candidate] = deque()
        self.next_settle = float("inf")  # when a settling file may become ready
        self.events: list[dict[str, Any]] = []
        self.slots: list[Slot] = []
        self.seq = 0
        self.signals = 0
        self.stop_deadline = 0.0
        self.scan_due = True
        self.last_scan = self.last_recover = self.last_publish = self.last_memory = 0.0
        self.last_summary = time.monotonic()
        self.summary = {"files": 0, "lines": 0, "failed": 0, "retried": 0}
        self.summary_total = {"files": 0, "bytes": 0}  # for --once's progress
        self.once_view: Progress | None = None
        self.stats = Stats(time.time(), {})
        self.paused = False
        self.waiting: dict[str, float] = {}  # unprocessed/ at the last scan: name -> mtime
        self.web: Any = None
        self.remote: Any = None  # the Celery backend, when [workers] backend = "celery"
        self.remote_slot: Slot | None = None
        self.remote_sent: dict[int, float] = {}  # Celery job seq -> when it was sent
        self.announced: Path | None = None  # .foldermill/supervisor-<pid>.json, for `status`
        self.web_url = ""
        self.loop_tick = time.time()
        self.once_idle = False
        self.manager: Any = None
        self.store: Store | None = None
        self.journal: Journal | None = None
        self.observer: Any = None
        self._pump_stop = threading.Event()
        self._remote_stop = threading.Event()

    # -- start and stop ----------------------------------------------------------------------

    def catch_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, lambda *_: self.inbox.put(("reload",)))

    def _starting(self) -> None:
        if self.signals:
            raise StartInterrupted

    def start(self) -> None:
        log.info("starting: watch dir %s, config %s", self.config.watch.dir, self.config.path)
        self.queue.prepare()
        if self.config.web.enabled:
            self.web_port = _check_port(self.config.web.host, self.config.web.port)
        # The manager is forked first, while this process holds no lock, no database
        # and no thread (forking is ~50x quicker than spawning it). Workers are spawned:
        # they start after claims began, and must inherit nothing.
        self.ctx = mp.get_context("spawn")
        self._start_manager(mp.get_context("fork"))
        self._starting()
        if self.config.web.enabled:
            self._start_web(wait=False)  # it boots while the rest starts; awaited below
        self.store = Store(self.queue.state_dir / "state.db")
        w = self.config.watch
        self.journal = Journal(w.dir / "input.log", int(w.journal_max_mb * 1024 * 1024), w.journal_keep,
                               self.queue.locks_dir / "journal.lock")
        self.stats = Stats(time.time(), self.store.totals())
        self.stats.recent_errors.extend(errors_from_journal(tail_journal(w.dir / "input.log")))
        self.progress = self.ctx.RawArray("d", self.options.workers * SLOT_SIZE)
        if self.config.workers.backend == "celery":
            self._start_remote()
        else:
            self.slots = [Slot(i) for i in range(self.options.workers)]
        self._start_pumps()
        if self.web is not None and (not self._await_web(20) or not self.web.is_alive()):
            raise QueueSetupError(f"the dashboard could not start on {self.config.web.host}:{self.web_port}")
        self._starting()
        self.observer = start_observer(self.queue.unprocessed, self.inbox)
        self._recover(time.monotonic())
        if self.web is not None:
            self.web_url = f"http://{_url_host(self.config.web.host)}:{self.web_port}/"
            log.info("dashboard at %s (JSON: stats, trace, errors, health; Prometheus: metrics)", self.web_url)
        self.announced = announce(self.queue.state_dir, os.getpid(), self.web_url, self.owner)
        log.info("foldermill started: watching %s with %d workers (supervisor %s)",
                 self.queue.unprocessed, self.options.workers, self.owner)

    def _await_web(self, timeout_s: float) -> bool:
        """Wait for the dashboard to be ready, but stop waiting at a signal."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.web_ready.wait(0.1):
                return True
            self._starting()
        return False

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        self.inbox.put(("signal", signum))

    def _start_remote(self) -> None:
        """Celery worker nodes do the processing; this process claims, commits, moves."""
        from workers.remote import BackendMissing, CeleryBackend, JobWatch

        self.remote = CeleryBackend(self.config, self.owner, 100 if self.options.trace else 0)
        try:
            self.remote.preflight()
        except BackendMissing as exc:
            raise QueueSetupError(str(exc)) from None
        self.remote_watch = JobWatch(self.config, self.remote_sent)
        self.remote_slot = Slot(-1, capacity=self.config.celery.prefetch_jobs)
        self.remote_slot.jobs = _RemoteJobs(self.remote)
        threading.Thread(target=self.remote.pump, args=(self.inbox, self._remote_stop), name="celery-pump",
                         daemon=True).start()
        log.info("backend: celery, broker %s, queue %r, replies on %s", self.config.celery.broker_url,
                 self.config.celery.queue, self.remote.reply)

    def _start_manager(self, ctx: Any) -> None:
        self.manager = SyncManager(ctx=ctx)
        self.manager.start(initializer=manager_init, initargs=(os.getpid(),))
        self.state = self.manager.dict()
        self.results = self.manager.Queue()
        self.commands = self.manager.Queue()

    def _start_pumps(self) -> None:
        self._pump_stop = stop = threading.Event()
        for source, kind in ((self.results, "result"), (self.commands, "command")):
            threading.Thread(target=self._pump, args=(source, kind, stop), name=f"{kind}-pump", daemon=True).start()

    def _manager_died(self) -> bool:
        process = getattr(self.manager, "_process", None)
        return process is not None and not process.is_alive()

    def _rebuild_manager(self) -> None:
        """The manager process died: every queue and the state dict went with it. Start a
        new one (spawned: this process now holds locks and threads), and the workers
        and the dashboard that used the old one; their files go out again at no cost."""
        code = self.manager._process.exitcode
        log.error("the manager process died (exit %s): restarting it, the workers and the dashboard", code)
        self._pump_stop.set()
        for slot in self.slots:
            for job in slot.assigned.values():
                self._requeue_items(job.items)
            slot.assigned.clear()
            self._stop_process(slot)
        for job, _ in self.orphans.values():
            self._requeue_items(job.items)
        self.orphans.clear()
        if self.web is not None:
            self.web.kill()
            self.web.join(timeout=5)
        self.stats.restarts["manager"] += 1
        self._start_manager(self.ctx)
        self._start_pumps()
        if self.web is not None:
            self._start_web(wait=False)

    def _pump(self, source: Any, kind: str, stop: threading.Event) -> None:
        """Move job results (or dashboard commands) from a manager queue to the inbox."""
        while not stop.is_set():
            try:
                item = source.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            self.inbox.put((kind, item))

    def _start_web(self, wait: bool = True) -> None:
        """The dashboard runs in its own process: a slow or hostile client cannot stall
        the loop, and if it dies it is started again (without waiting for it)."""
        from web.server import WebArgs, serve_web  # Flask and waitress only when serving

        web = self.config.web
        # Kept on self: the child unpickles it after start() returns.
        self.web_ready = ready = self.ctx.Event()
        self.web_started = time.monotonic()
        self.web = self.ctx.Process(target=serve_web, name="foldermill-web", daemon=True,
                                    args=(WebArgs(os.getpid(), str(self.config.path), dict(self.config.raw),
                                                  web.host, self.web_port), self.state, self.commands, ready))
        self.web.start()
        if wait and (not ready.wait(20) or not self.web.is_alive()):
            raise QueueSetupError(f"the dashboard could not start on {web.host}:{self.web_port}")

    def run(self) -> int:
        code = EXIT_OK
        try:
            while True:
                now = time.monotonic()
                if self.signals >= 2:
                    log.warning("second signal: stopping at once; files in flight are recovered on the next start")
                    break
                self._guarded_step(now)
                if self._done(now):
                    break
                self._wait(now)
        except SystemFailure as exc:
            log.error("stopping: %s", exc)
            code = EXIT_FATAL
        finally:
            if self.options.once and self.once_view is not None:
                self._show_progress(final=True)
            with contextlib.suppress(Exception):
                self.shutdown()
        return code

    def _guarded_step(self, now: float) -> None:
        """One step; whatever one file does is handled inside it. An error that escapes
        is logged once with its traceback, and if every step fails the same way the
        whole system is unusable: SystemFailure (exit 3), never a traceback loop."""
        try:
            self._check_system()
            self.step(now)
            self.failures_in_a_row = 0
        except SystemFailure:
            raise
        except sqlite3.DatabaseError as exc:
            if _transient(exc):
                self._step_failed(exc)
                return
            raise SystemFailure(f"the state database {self.queue.state_dir / 'state.db'} failed: {exc}") from None
        except StateError as exc:
            raise SystemFailure(str(exc)) from None
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise SystemFailure(f"{exc.strerror} ({exc.filename}): the watch dir cannot be written") from None
            self._step_failed(exc)
        except Exception as exc:
            self._step_failed(exc)

    def _step_failed(self, exc: Exception) -> None:
        self.failures_in_a_row += 1
        if self.failures_in_a_row == 1:
            log.exception("a loop step failed (%s); going on", exc)
        if self.failures_in_a_row >= REPEATED_FAILURES:
            raise SystemFailure(f"{REPEATED_FAILURES} loop steps in a row failed, last with "
                                f"{type(exc).__name__}: {exc}") from None
        threading.Event().wait(0.2 * self.failures_in_a_row)

    def _check_system(self) -> None:
        """The folders must still be there (a watch dir removed or unmounted)."""
        q = self.queue
        for folder in (q.unprocessed, q.underprocess, q.processed, q.failed, q.output):
            if not folder.is_dir():
                raise SystemFailure(f"{folder} is gone (was the watch dir removed or unmounted?)")

    def _done(self, now: float) -> bool:
        if self.signals:
            if not self.stop_deadline:
                self.stop_deadline = now + self.config.workers.shutdown_grace
                log.info("stopping: no new claims; %d files in flight get %.0fs to finish",
                         len(self.flights), self.config.workers.shutdown_grace)
            return not self.flights or now >= self.stop_deadline
        return self.options.once and self.once_idle

    def _wait(self, now: float) -> None:
        timeout = 0.1 if self.flights else min(0.25, max(0.01, self.last_scan + self.config.watch.poll_interval - now))
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        self._handle(item)

    def shutdown(self) -> None:
        self._pump_stop.set()
        self._remote_stop.set()
        if self.observer is not None:
            self.observer.stop()
        for slot in self.slots:
            self._stop_process(slot)
        if self.web is not None:
            self.web.kill()
            self.web.join(timeout=5)
        try:
            if self.store is not None:
                self._drain_results()
                self._commit()
                self._return_flights(list(self.flights), "supervisor stopped before it finished")
                self._flush_journal()
                self.store.close()
        except Exception as exc:  # the disk or the database failed: recovery takes over at the next start
            log.error("could not return every file in flight (%s); the next start recovers them", exc)
        finally:
            if self.journal is not None:
                self.journal.close()
            if self.announced is not None:
                with contextlib.suppress(OSError):
                    self.announced.unlink()
            if self.manager is not None:
                with contextlib.suppress(Exception):
                    self.manager.shutdown()
        log.info("foldermill stopped")

    def _return_flights(self, names: list[str], why: str) -> None:
        """Stopping: put these claimed files back in unprocessed/ (a parked one keeps the
        rest of its backoff). One whose name a new delivery took meanwhile stays in
        underprocess/: recovery (ours at the next start, or another supervisor's)
        adopts it; nothing replaces the new delivery."""
        assert self.store is not None
        ids, backoff = [], {}
        wall, mono = time.time(), time.monotonic()
        for name in names:
            flight = self.flights.get(name)
            if flight is None:
                continue
            remove_staged(self.queue.output, str(flight.record.id))
            outcome = self.queue.put_back(name)
            if outcome == "moved":
                self._journal("requeued", flight, reason=why)
            elif outcome == "taken":
                self._journal("requeued", flight, reason=f"{why}; left in underprocess/: a new delivery of that "
                              "name waits in unprocessed/ (recovered at the next start)")
            ids.append(flight.record.id)
            if flight.not_before > mono:
                backoff[flight.record.id] = wall + flight.not_before - mono
            self._forget(name)
        self.store.requeued(ids, backoff)

    def _drain_results(self) -> None:
        """Results that arrived but were not handled yet: commit them rather than redo them."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "result":
                self._on_result(item[1])

    def _stop_process(self, slot: Slot) -> None:
        p = slot.process
        if p is None:
            return
        if p.is_alive():
            p.kill()
        p.join(timeout=5)
        slot.process = None

    # -- one step of the loop --------------------------------------------------------------------

    def step(self, now: float) -> None:
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            self._handle(item)
        self._commit()
        self._check_workers(now)
        self.loop_tick = time.time()
        if not self.signals and not self.paused:
            self._intake(now)
        elif self.redispatch or self.parked:  # stopping or paused: they wait in unprocessed/
            self._return_undispatched()
        if now - self.last_recover >= RECOVER_EVERY_S:
            self._recover(now)
            self._retry_moves()
        self._flush_journal()
        if now - self.last_publish >= PUBLISH_EVERY_S:
            self._publish(now)
        if now - self.last_summary >= SUMMARY_EVERY_S:
            self._log_summary(now)
        if self.options.once:
            self._show_progress()

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "result":
            self._on_result(item[1])
        elif kind == "command":
            self._on_command(item[1])
        elif kind == "broker":
            self._on_broker(item[1], item[2])
        elif kind == "reload":
            self._reload()
        elif kind == "fs":
            if item[1] == MOVED_IN:
                self.readiness.note_moved_in(item[2])
            else:
                self.readiness.note_written(item[2])
            self.scan_due = True

    def _reload(self) -> None:
        """SIGHUP: read config.toml again. A valid new pipeline (and new [workers] limits)
        apply to files claimed from now on: workers are recycled after their current job.
        An invalid file is logged with the key at fault and the running config stays."""
        try:
            new = load_config(self.config.path)
            graph = compile_graph(new.pipeline, str(new.base_dir))
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        kept = [key for key, old, now in (("watch", self.config.watch, new.watch), ("web", self.config.web, new.web),
                                          ("celery", self.config.celery, new.celery))
                if old != now]
        if new.workers.backend != self.config.workers.backend or new.workers.count != self.config.workers.count:
            kept.append("workers.backend/count")
        if kept:
            log.warning("reload: changes to %s need a restart and are ignored", ", ".join(kept))
        workers = dataclasses.replace(new.workers, backend=self.config.workers.backend,
                                      count=self.config.workers.count)
        # Workers parse the raw tables: give them the running [watch], [web] and [celery].
        raw = {**new.raw, **{k: self.config.raw[k] for k in ("watch", "web", "celery") if k in self.config.raw}}
        for k in ("watch", "web", "celery"):
            if k not in self.config.raw:
                raw.pop(k, None)
        raw.setdefault("workers", {})
        raw["workers"] = {**raw["workers"], "backend": workers.backend, "count": workers.count}
        self.config = dataclasses.replace(self.config, pipeline=new.pipeline, workers=workers, raw=raw)
        self.graph = graph
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                self._recycle(slot)
        log.info("configuration reloaded: new files get the new pipeline (%d nodes); workers recycled",
                 len(graph.nodes))

    def _on_broker(self, ok: bool, error: str) -> None:
        """The broker went away or came back. The jobs that were out stay out: their
        executions may still run (and their results arrive); only those the broker
        really lost are sent again, by _check_remote, once that is known."""
        if not ok:
            log.error("the broker is unreachable (%s): claimed files wait; new claims stop", error)
            return
        log.warning("the broker is back: %d job(s) out are kept; any the broker lost go out again",
                    len(self.remote_slot.assigned))
        self.remote_watch.outage_over(time.monotonic(), list(self.remote_slot.assigned))

    def _on_command(self, command: tuple) -> None:
        """An action from the dashboard (already authorised and validated there)."""
        action = command[0]
        if action == "pause":
            self.paused = True
            log.info("intake paused from the dashboard")
        elif action == "resume":
            self.paused = False
            self.scan_due = True
            log.info("intake resumed from the dashboard")
        elif action == "retry":
            self._retry_failed(command[1])

    def _retry_failed(self, name: str) -> None:
        """Move a failed file back to unprocessed/ (its reason file goes); it starts again
        with fresh attempts, as when an operator moves it by hand."""
        name = unshown(name)  # the dashboard speaks in shown names
        problem = retry_one(self.queue, name)
        if problem:
            log.warning("retry of %s refused: %s", shown(name), problem)
            return
        self.events.append(_event("retry-requested", name, supervisor=self.owner))
        log.info("retry of failed file %s requested from the dashboard", shown(name))
        self.scan_due = True

    # -- results and commits ---------------------------------------------------------------------

    def _on_result(self, result: JobResult) -> None:
        if result.slot == -1:
            slot = self.remote_slot
            if not self._accept_remote(result):
                return
        else:
            slot = self.slots[result.slot] if result.slot < len(self.slots) else None
        job = slot.assigned.pop(result.seq, None) if slot else None
        if job is None:
            orphan = self.orphans.pop(result.seq, None)
            job = orphan[0] if orphan else None
        if job is None:
            return  # stale: its files were requeued after a crash
        self.stats.merge_nodes(result.nodes)
        if slot is not None:
            slot.rss = result.rss_bytes
            slot.files_done += len(result.items)
            if result.rss_bytes > self.config.workers.max_memory_mb * 1024 * 1024 and slot.process is not None:
                log.info("worker %d uses %d MB (> max_memory_mb): recycling it", result.pid, result.rss_bytes >> 20)
                self._recycle(slot)
        for res in result.items:
            name = self.by_id.get(res.file_id)
            flight = self.flights.get(name) if name else None
            if flight is None or flight.seq != result.seq:
                continue
            self._per_file(flight, "handling its result", self._on_item, flight, res, result.pid)

    def _on_item(self, flight: Flight, res: ItemResult, pid: int) -> None:
        name = flight.record.name
        if res.ok:
            self.to_commit.append((flight, res, pid))
            for line_no, route in res.routes:
                self.stats.routes.appendleft({"file": shown(name), "line": line_no, "route": route})
                log.info("route %r line %d: %s", shown(name), line_no, " -> ".join(route))
        else:
            cause = "input" if res.permanent else "error"
            self._attempt_failed(flight, res.reason, res.permanent, pid, cause, res.error_node, res.error_line)

    def _per_file(self, flight: Flight, what: str, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run one file's step: (True, what it returned), or (False, None) when it went
        wrong, which costs that file (an attempt, with the reason), never the loop.
        Errors of the whole system still stop it."""
        try:
            return True, fn(*args)
        except (SystemFailure, StateError):
            raise
        except sqlite3.DatabaseError as exc:
            if not _transient(exc):
                raise
            self._file_broke(flight, what, exc)
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self._file_broke(flight, what, exc)
        except Exception as exc:
            self._file_broke(flight, what, exc)
        return False, None

    def _file_broke(self, flight: Flight, what: str, exc: BaseException) -> None:
        name = flight.record.name
        log.error("%s: %s failed (%s: %s); it costs this file an attempt", shown(name), what,
                  type(exc).__name__, exc, exc_info=exc)
        if name not in self.flights or name in self.unmoved:
            return
        try:
            self._attempt_failed(flight, f"{what} failed: {type(exc).__name__}: {exc}", False, 0, "error")
        except Exception as again:  # the state itself refuses: it waits, claimed, for a later try
            log.error("%s: could not record the failed attempt either (%s)", shown(name), again)
            flight.seq, flight.not_before = 0, time.monotonic() + RECOVER_EVERY_S
            self.parked.add(name)

    def _commit(self) -> None:
        """Group commit: one sync for every output staged since the last step. Each
        file's outputs are renamed into place only once the state says it is being
        committed, so an owner that dies from here on is rolled forward, not redone."""
        batch, self.to_commit = self.to_commit, []
        if not batch:
            return
        durable = self.config.workers.durable
        out = self.queue.output
        assert self.store is not None
        self._find_duplicates(batch)
        ready = []
        for flight, res, pid in batch:
            missing = [t for t, _ in res.staged if not os.path.lexists(out / t)]
            if missing:  # another execution removed it, or a person did: this attempt is void
                self._per_file(flight, "committing", self._attempt_failed, flight,
                               f"its staged output {missing[0]} disappeared before the commit", False, pid, "error")
            else:
                ready.append((flight, res, pid))
        if not ready:
            return
        if durable and not all(r.synced for _, r, _ in ready):
            syncfs(out)
        self.store.committing([(f.record.id, r.staged) for f, r, _ in ready if r.staged])
        ready = [item for item in ready if self._per_file(item[0], "committing its outputs", rename_staged, out,
                                                            item[1].staged, False)[0]]
        if durable:
            fsync_dir(out)
        done, digests = [], []
        for flight, res, pid in ready:
            status = self._move_committed(flight, res, pid)
            if status:
                done.append((flight.record.id, status))
            if status == "processed" and res.digest and not res.duplicate_of:
                digests.append((res.digest, flight.record.final_name, flight.record.id))
        self._flush_journal()  # as close to the moves as possible: a SIGKILL loses less
        if digests:
            self.store.add_digests(digests)
        self.store.finished(done)
        self.store.add_totals({"files_processed": len(done), "lines_processed": sum(r.lines_in for _, r, _ in ready)})

    def _move_committed(self, flight: Flight, res: ItemResult, pid: int) -> str:
        """The input of a committed file to processed/; its status ("processed", or
        "vanished" if someone removed it from underprocess/), or "" if it cannot be
        moved now: it stays claimed, and the move is tried again (_retry_moves)."""
        name = flight.record.name
        outputs = [shown(final) for _, final in res.staged]
        try:
            flight.record = dataclasses.replace(flight.record, final_name=self.queue.finish(
                name, flight.record.final_name, "processed"))
        except FileNotFoundError:
            self._journal("vanished", flight, output=outputs,
                          reason="it was removed from underprocess/ before it could be moved to processed/ "
                          "(its outputs were committed)")
            log.warning("%s vanished from underprocess/ before it was moved; its outputs are committed", shown(name))
            self._forget(name)
            return "vanished"
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self._cannot_move(flight, "processed", exc, (res, pid))
            return ""
        self.unmoved.pop(name, None)
        self._forget(name)
        self.stats.processed(shown(name), res.lines_in, res.seconds, pid, time.time())
        self.summary_total["files"] += 1
        self.summary_total["bytes"] += flight.size
        self.summary["files"] += 1
        self.summary["lines"] += res.lines_in
        if res.duplicate_of:
            self._journal("duplicate", flight, worker=pid, of=res.duplicate_of,
                          output=[res.duplicate_of], reason="its content was processed before")
        else:
            self._journal("processed", flight, worker=pid, seconds=round(res.seconds, 6), lines_in=res.lines_in,
                          lines_out=res.lines_out, skipped=len(res.skipped), output=outputs)
        return "processed"

    def _cannot_move(self, flight: Flight, folder: str, exc: OSError, retry: tuple) -> None:
        """A claimed file that cannot be moved to ``folder`` now (a full disk, a
        permission changed...): it stays claimed where it is; said once, tried again."""
        name = flight.record.name
        if name not in self.unmoved:
            log.error("cannot move %s to %s/ (%s); it stays in underprocess/ and is tried again every %.0fs",
                      shown(name), folder, exc.strerror or exc, RECOVER_EVERY_S)
        flight.seq = 0
        self.unmoved[name] = (folder, retry)

    def _retry_moves(self) -> None:
        assert self.store is not None
        for name, (folder, retry) in list(self.unmoved.items()):
            flight = self.flights.get(name)
            if flight is None:
                self.unmoved.pop(name, None)
            elif folder == "processed":
                status = self._move_committed(flight, *retry)
                if status:
                    self.store.finished([(flight.record.id, status)])
            else:
                self._finish_failed(flight, *retry)

    def _find_duplicates(self, batch: list[tuple[Flight, ItemResult, int]]) -> None:
        """With dedupe on: a file whose content another file committed first (since its
        worker looked, or earlier in this batch) becomes a duplicate; its outputs go."""
        seen: dict[str, str] = {}
        for flight, res, _ in batch:
            if not res.digest or res.duplicate_of:
                continue
            earlier = seen.get(res.digest) or self.store.digest_owner(res.digest)
            if earlier:
                for temp, _ in res.staged:
                    (self.queue.output / temp).unlink(missing_ok=True)
                res.staged, res.duplicate_of = [], earlier
            else:
                seen[res.digest] = shown(flight.record.final_name)

    def _attempt_failed(self, flight: Flight, reason: str, permanent: bool, worker: int, cause: str,
                        node: str = "", line: int | None = None) -> None:
        """One attempt failed: the file waits out a backoff where it is (claimed, in
        underprocess/, so no new delivery of its name can be replaced by it), or, after
        its last attempt, goes to failed/."""
        assert self.store is not None
        record = flight.record
        w = self.config.workers
        attempts, final = self.store.attempt_failed(record.id, reason, w.max_attempts, w.retry_backoff, permanent)
        remove_staged(self.queue.output, str(record.id))
        name = record.name
        self.stats.attempt_failed(shown(name), attempts, reason, cause, final, worker, node, line)
        if not final:
            delay = w.retry_backoff * 2 ** (attempts - 1)
            flight.seq, flight.not_before = 0, time.monotonic() + delay
            self.parked.add(name)
            self.summary["retried"] += 1
            self.store.add_totals({"files_retried": 1})
            self._journal("retried", flight, attempt=attempts, worker=worker, cause=cause, reason=reason,
                          node=node, line=line, retry_in=delay)
            log.warning("attempt %d of %s failed (%s); retrying in %.1fs", attempts, shown(name), reason, delay)
            return
        why = reason if permanent else f"{reason} (attempt {attempts} of {w.max_attempts}; giving up)"
        self._finish_failed(flight, why, dict(attempt=attempts, worker=worker, cause=cause, reason=reason,
                                              node=node, line=line))

    def _finish_failed(self, flight: Flight, why: str, fields: dict[str, Any]) -> None:
        """After its last attempt: to failed/, with its reason beside it."""
        assert self.store is not None
        record, name = flight.record, flight.record.name
        try:
            flight.record = dataclasses.replace(record, final_name=self.queue.finish(
                name, record.final_name, "failed", reason=why))
        except FileNotFoundError:
            self._journal("vanished", flight, reason=f"removed from underprocess/ by hand; it had failed: {why}")
            self.store.finished([(record.id, "vanished")])
            self._forget(name)
            return
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self._cannot_move(flight, "failed", exc, (why, fields))
            return
        self.unmoved.pop(name, None)
        self.summary["failed"] += 1
        self.summary_total["files"] += 1
        self.summary_total["bytes"] += flight.size
        self.store.add_totals({"files_failed": 1})
        self.store.finished([(record.id, "failed")])
        self._journal("failed", flight, **fields, **self._reason_field(flight))
        self._flush_journal()  # as close to the move as possible
        log.warning("failed %s for good after %d attempt(s): %s", shown(name), fields["attempt"], fields["reason"])
        self._forget(name)

    def _reason_field(self, flight: Flight) -> dict[str, str]:
        """The reason file's name in the journal, where it is not simply <final>.reason."""
        final = flight.record.final_name
        derived = reason_name(final)
        return {} if derived == final + ".reason" else {"reason_file": shown(derived)}

    def _forget(self, name: str) -> None:
        flight = self.flights.pop(name, None)
        if flight is not None:
            self.by_id.pop(flight.record.id, None)
        self.parked.discard(name)
        self.readiness.forget(name)

    # -- workers ---------------------------------------------------------------------------------

    def _check_workers(self, now: float) -> None:
        if self._manager_died() and not self.signals:
            self._rebuild_manager()
        if self.remote_slot is not None:
            self._check_remote(now)
        check_memory = now - self.last_memory >= MEMORY_CHECK_EVERY_S
        if check_memory:
            self.last_memory = now
        if (self.web is not None and not self.web.is_alive() and not self.signals
                and now - self.web_started >= WEB_RESTART_EVERY_S):
            log.warning("the dashboard process died (exit %s); starting it again", self.web.exitcode)
            self._start_web(wait=False)
        for slot in self.slots:
            if slot.process is None:
                if not self.signals and now >= slot.not_before:
                    self._start_worker(slot, now)
            elif slot.process.exitcode is not None:
                self._on_death(slot, now)
            else:
                self._watch_limits(slot, check_memory)
        for seq, (job, deadline) in list(self.orphans.items()):
            if now >= deadline:  # its result never came: treat its files as not started
                del self.orphans[seq]
                self._requeue_items(job.items)

    def _check_remote(self, now: float) -> None:
        """Jobs the broker really lost (workers/remote.py JobWatch) go out again; a job
        with a live execution never does, however long it takes."""
        watch, jobs = self.remote_watch, self.remote_slot.assigned
        if not jobs or not self.remote.broker_ok or not watch.due(now):
            return
        states = self.remote.job_states(list(jobs))
        for seq in watch.lost(now, jobs, states or {}):
            job = jobs.pop(seq)
            watch.forget(seq)
            log.warning("job %d (%d files) was lost by the broker: sending its files again", seq, len(job.items))
            self._requeue_items(job.items)

    def _accept_remote(self, result: JobResult) -> bool:
        """A Celery result: the first of a job's executions to arrive is the one
        committed. Any other (a late or duplicate execution, or a job sent again) never
        is: its staged files go, never those of an accepted result. An item whose staged
        file is gone is not committed either: its file goes out again."""
        self.remote_watch.forget(result.seq)
        job = self.remote_slot.assigned.get(result.seq)
        keep = []
        for res in result.items:
            name = self.by_id.get(res.file_id)
            flight = self.flights.get(name) if name else None
            if job is None or flight is None or flight.seq != result.seq:
                self._discard_staged(res)
            elif res.ok and not all(os.path.exists(self.queue.output / temp) for temp, _ in res.staged):
                log.warning("%s: a staged output of its job %d is missing: processing it again",
                            shown(name), result.seq)
                self._discard_staged(res)
                flight.seq = 0
                self.redispatch.append(name)
            else:
                keep.append(res)
        result.items = keep
        return job is not None

    def _discard_staged(self, res: ItemResult) -> None:
        pending = {temp for _, r, _ in self.to_commit for temp, _ in r.staged}
        for temp, _ in res.staged:
            if temp not in pending:
                (self.queue.output / temp).unlink(missing_ok=True)

    def _start_worker(self, slot: Slot, now: float) -> None:
        base = slot.index * SLOT_SIZE
        for k in range(SLOT_SIZE):
            self.progress[base + k] = 0
        self.progress[base + P_ITEM] = -1
        try:
            slot.jobs = self.manager.Queue()
        except (OSError, EOFError):
            return  # the manager is gone: rebuilt on the next step
        args = WorkerArgs(slot.index, os.getpid(), str(self.config.path), dict(self.config.raw),
                          100 if self.options.trace else 0, self.config.workers.durable,
                          self.config.workers.max_files_per_worker,
                          str(self.queue.state_dir / "state.db") if self.config.watch.dedupe == "content" else "")
        process = self.ctx.Process(target=worker_main, args=(args, slot.jobs, self.results, self.progress),
                                   name=f"foldermill-worker-{slot.index}", daemon=True)
        process.start()
        slot.process = process
        slot.started_at = now
        slot.kill_cause = ""
        slot.recycling = False
        slot.rss = 0

    def _watch_limits(self, slot: Slot, check_memory: bool) -> None:
        base = slot.index * SLOT_SIZE
        busy = self.progress[base + P_ITEM] >= 0 and int(self.progress[base + P_JOB]) in slot.assigned
        if busy and time.monotonic() - self.progress[base + P_STARTED] > self.config.workers.file_timeout:
            self._kill(slot, "timeout")
            return
        if check_memory:
            slot.rss = _rss_of(slot.process.pid)
            if slot.rss > self.config.workers.max_memory_mb * 1024 * 1024:
                if busy:
                    self._kill(slot, "memory")
                elif not slot.recycling:
                    self._recycle(slot)

    def _kill(self, slot: Slot, cause: str) -> None:
        slot.kill_cause = cause
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.process.pid, signal.SIGKILL)

    def _recycle(self, slot: Slot) -> None:
        """Let the worker finish its current job, then exit (SIGTERM)."""
        slot.recycling = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.process.pid, signal.SIGTERM)

    def _on_death(self, slot: Slot, now: float) -> None:
        process = slot.process
        process.join(timeout=1)
        code = process.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        cause = slot.kill_cause or ("recycled" if slot.recycling or (code == 0) else "crashed")
        self.stats.restarts[cause] += 1
        slot.restarts += 1
        base = slot.index * SLOT_SIZE
        ran_a_job = self.progress[base + P_JOB] > 0
        self._settle_jobs(slot, process.pid, how, cause)
        slot.process = None
        slot.assigned.clear()
        if cause == "crashed" and not ran_a_job and now - slot.started_at < QUICK_DEATH_S:
            slot.quick_deaths += 1
        elif ran_a_job:
            slot.quick_deaths = 0
        if slot.quick_deaths >= FLAP_DEATHS:
            delay = min(FLAP_BACKOFF_MAX_S, 2.0 ** (slot.quick_deaths - FLAP_DEATHS + 1))
            slot.not_before = now + delay
            log.error("worker slot %d is crash-looping (%d deaths right after start, last: %s); "
                      "next start in %.0fs", slot.index, slot.quick_deaths, how, delay)
        elif cause != "recycled":
            log.warning("worker %d %s (%s); starting a new one", process.pid, how, cause)

    def _settle_jobs(self, slot: Slot, pid: int, how: str, cause: str) -> None:
        """Decide what a worker's death means for each job it held (rq's work-horse
        monitor does the same): the file it was on costs one attempt; the others were
        fine or not started, and go out again."""
        base = slot.index * SLOT_SIZE
        current = int(self.progress[base + P_JOB])
        sent = int(self.progress[base + P_SENT])
        item = int(self.progress[base + P_ITEM])
        same_pid = int(self.progress[base + P_PID]) == pid
        reasons = {"timeout": f"took longer than file_timeout = {self.config.workers.file_timeout:g}s",
                   "memory": f"used more than max_memory_mb = {self.config.workers.max_memory_mb}"}
        for seq, job in list(slot.assigned.items()):
            if same_pid and seq == sent:
                self.orphans[seq] = (job, time.monotonic() + ORPHAN_WAIT_S)  # its result is on the way
                continue
            if same_pid and seq == current and 0 <= item < len(job.items):
                culprit = job.items[item]
                name = self.by_id.get(culprit.file_id)
                flight = self.flights.get(name) if name else None
                if flight is not None and flight.seq == seq:
                    reason = f"worker {pid} {how} while processing it"
                    if cause in reasons:
                        reason = f"{reasons[cause]}: worker {pid} {how}"
                    self._attempt_failed(flight, reason, False, pid, cause if cause in reasons else "crash")
                self._requeue_items(job.items[:item] + job.items[item + 1:])
            else:
                self._requeue_items(job.items)

    def _return_undispatched(self) -> None:
        """Stopping or paused: files waiting for a worker (or for their retry) go back."""
        names, self.redispatch = self.redispatch, []
        waiting = [n for n in (*names, *self.parked) if n in self.flights and not self.flights[n].seq]
        self._return_flights(list(dict.fromkeys(waiting)), "supervisor stopping")

    def _requeue_items(self, items: tuple[JobItem, ...]) -> None:
        for it in items:
            name = self.by_id.get(it.file_id)
            flight = self.flights.get(name) if name else None
            if flight is not None and flight.seq:
                flight.seq = 0
                remove_staged(self.queue.output, str(it.file_id))
                self.redispatch.append(name)

    # -- intake ----------------------------------------------------------------------------------

    def _free_jobs(self) -> list[Slot]:
        """Live slots with room for another job, least loaded first."""
        if self.remote_slot is not None:
            room = self.remote.broker_ok and len(self.remote_slot.assigned) < self.remote_slot.capacity
            return [self.remote_slot] if room else []
        live = [s for s in self.slots if s.process is not None and not s.recycling]
        return sorted((s for s in live if len(s.assigned) < s.capacity), key=lambda s: len(s.assigned))

    def _intake(self, now: float) -> None:
        slots = self._free_jobs()
        if not slots:
            return
        room = sum(s.capacity - len(s.assigned) for s in slots) * self.config.workers.batch_files
        pending = [self.flights[n] for n in self.redispatch if n in self.flights]
        self.redispatch = []
        for name in [n for n in self.parked if self.flights[n].not_before <= now]:
            self.parked.discard(name)
            pending.append(self.flights[name])
        if len(pending) < room:
            pending += self._claim(now, room - len(pending))
        if pending:
            self._dispatch(pending)

    def _claim(self, now: float, limit: int) -> list[Flight]:
        # --once also rescans as soon as it runs dry, to notice promptly that it is done.
        dry = self.options.once and not self.backlog and not self.flights
        if self.scan_due or dry or now - self.last_scan >= self.config.watch.poll_interval or self._settling_due(now):
            self._scan(now)
        picked = []
        while self.backlog and len(picked) < limit:
            candidate = self.backlog.popleft()
            if not candidate.is_regular:
                self._reject(candidate)
            elif self._claim_one(candidate):
                picked.append(candidate)
        if self.queue.stranded:  # a dead owner's file has the name of a new delivery
            self.last_recover = 0.0
        return self._record_claims(picked, "claimed")

    def _claim_one(self, candidate: Candidate) -> bool:
        try:
            claimed = self.queue.claim(candidate.name)
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self._note_unclaimable(candidate.name, exc)
            return False
        if claimed:
            self.waiting.pop(candidate.name, None)
            self.readiness.forget(candidate.name)
        return claimed

    def _note_unclaimable(self, name: str, exc: OSError) -> None:
        """A file we cannot even move into underprocess/: it stays where it is (said once)."""
        if name not in self.unclaimable:
            self.unclaimable.add(name)
            log.error("cannot claim %s: %s; it stays in unprocessed/", shown(name), exc.strerror or exc)

    def _record_claims(self, picked: list[Candidate], event: str) -> list[Flight]:
        """Claimed files into the state and the table of flights. One that was being
        committed when its owner died is rolled forward here instead of redone."""
        if not picked:
            return []
        assert self.store is not None
        try:
            records = self.store.claim(picked, self.incarnation, self)
        except (sqlite3.DatabaseError, StateError):
            raise
        except Exception as exc:  # nothing recorded: the files go back where they were, said once
            for c in picked:
                self.queue.put_back(c.name)
                self._note_unclaimable(c.name, OSError(0, f"{type(exc).__name__}: {exc}"))
            return []
        flights = []
        for candidate, record in zip(picked, records, strict=True):
            flight = Flight(record, candidate.size)
            self.flights[record.name] = flight
            self.by_id[record.id] = record.name
            self._journal(event, flight, attempt=record.attempts + 1, **self._derived_field(record.final_name))
            if record.committed:
                ok, rolled = self._per_file(flight, "rolling its commit forward", self._roll_forward, flight)
                if rolled or not ok:  # done, or it failed and cost the file an attempt
                    continue
            if record.known:  # an earlier execution's leftovers
                remove_staged(self.queue.output, str(record.id))
            flights.append(flight)
        return flights

    def _roll_forward(self, flight: Flight) -> bool:
        """Its outputs were committed (or were being renamed into place) when its owner
        died: finish the renames and move it to processed/, without processing it again.
        False if an output is gone altogether: then it is processed again."""
        out = self.queue.output
        pairs = flight.record.committed
        if any(not os.path.lexists(out / t) and not os.path.lexists(out / f) for t, f in pairs):
            return False
        for temp, final in pairs:
            if os.path.lexists(out / temp):
                os.replace(out / temp, out / final)
        assert self.store is not None
        status = self._move_committed(flight, ItemResult(flight.record.id, True, list(pairs)), 0)
        if status:
            self.store.finished([(flight.record.id, status)])
        log.info("%s: its outputs were committed before its owner died; moved to processed/ without redoing it",
                 shown(flight.record.name))
        return True

    def _settling_due(self, now: float) -> bool:
        return now >= self.next_settle

    def _scan(self, now: float) -> None:
        """Rescan unprocessed/: what is ready goes to the backlog, oldest first."""
        self.scan_due = False
        self.last_scan = now
        assert self.store is not None
        candidates = self.queue.scan()
        writing = open_for_writing(str(self.queue.unprocessed), candidates) if candidates else set()
        backing_off = self.store.waiting_until(time.time())
        # A file claimed before (now back for its retry, or recovered) used up its marker.
        seen_before = self.store.live() if self.queue.ready_marker else set()
        ready, eligible = deque(), 0
        self.readiness.keep_only({c.name for c in candidates})
        for c in candidates:
            if c.name in self.flights:
                continue
            if (c.name, c.ino) in backing_off:
                eligible += 1
                continue
            if (self.queue.ready_marker and c.is_regular and (c.name, c.ino) not in seen_before
                    and not self.queue.has_marker(c.name)):
                continue
            if not c.is_regular or self.readiness.ready(c, writing, now):
                ready.append(c)
                eligible += 1
            elif c.name not in writing:
                eligible += 1  # still settling
        self.backlog = ready
        self.waiting = {c.name: c.mtime_ns / 1e9 for c in candidates if c.name not in self.flights}
        wait = self.readiness.next_check_in(now, exclude={c.name for c in ready})
        self.next_settle = now + wait if wait is not None else float("inf")
        self.once_idle = (self.options.once and not eligible and not self.flights and not self.redispatch
                          and not self.to_commit and not self.orphans)

    # -- the store's NameRules (workers/store.py) --

    def taken(self, name: str) -> bool:
        return self.queue.taken(name, self.graph.side_outputs())

    def left_failed(self, final: str) -> None:
        self.queue.forget_reason(final)

    def derived(self, final: str) -> list[str]:
        """Every name a file with this final name will use, as "folder/name": reserved
        while it is live, so that no other file is given a colliding one."""
        return [f"processed/{final}", f"failed/{final}", f"failed/{reason_name(final)}",
                *(f"output/{output_name(final, s)}" for s in ("", *self.graph.side_outputs()))]

    def _derived_field(self, final: str) -> dict[str, Any]:
        """Side-output names that had to be shortened to fit, for the journal."""
        short = {s: shown(output_name(final, s)) for s in self.graph.side_outputs()
                 if output_name(final, s) != f"{final}.{s}"}
        return {"outputs_shortened": short} if short else {}

    def _reject(self, candidate: Candidate) -> None:
        """A symlink, a directory, a FIFO...: never opened, straight to failed/."""
        if self._claim_one(candidate):
            self._reject_claimed(candidate)

    def _reject_claimed(self, candidate: Candidate) -> None:
        kind = _kind_of(candidate.mode)
        reason = f"{shown(candidate.name)} is {kind}, not a regular file: not processed (symlinks are never followed)"
        for flight in self._record_claims([candidate], "claimed"):
            self._attempt_failed(flight, reason, True, 0, "input")

    def _dispatch(self, flights: list[Flight]) -> None:
        """Pack flights into jobs (small files travel together) and hand them out."""
        w = self.config.workers
        jobs: list[list[Flight]] = []
        size = 0
        for flight in flights:
            if not jobs or len(jobs[-1]) >= w.batch_files or size + flight.size > w.batch_bytes:
                jobs.append([])
                size = 0
            jobs[-1].append(flight)
            size += flight.size
        for k, batch in enumerate(jobs):
            free = self._free_jobs()
            if not free:  # the broker went down while dispatching: these wait for it
                for f in (f for later in jobs[k:] for f in later):
                    f.seq = 0
                    self.redispatch.append(f.record.name)
                return
            slot = min(free, key=lambda s: len(s.assigned))
            self.seq += 1
            job = Job(self.seq, tuple(JobItem(f.record.id, f.record.name, f.record.final_name, f.size)
                                      for f in batch))
            for f in batch:
                f.seq = self.seq
            slot.assigned[self.seq] = job
            if slot is self.remote_slot:
                self.remote_sent[self.seq] = time.monotonic()
            try:
                slot.jobs.put(job)
            except (OSError, EOFError):  # the manager died: the next step rebuilds it
                del slot.assigned[self.seq]
                self._requeue_items(job.items)

    # -- recovery, journal, state ----------------------------------------------------------------

    def _recover(self, now: float) -> None:
        """Dead owners' files: back to unprocessed/ (at no cost: their owner's death says
        nothing about them), or adopted where a new delivery took the name meanwhile."""
        self.last_recover = now
        assert self.store is not None
        names, adopted = self.queue.recover(set(self.flights))
        if names:
            self.store.recovered(names)
            for name in names:
                self.events.append(_event("recovered", name, supervisor=self.owner,
                                          reason="its owner died; back to unprocessed/"))
            log.warning("recovered %d file(s) whose owner died: %s", len(names), ", ".join(map(shown, names[:5])))
            self.scan_due = True
        if adopted:
            self._adopt(adopted)
        self._forget_vanished()

    def _adopt(self, names: list[str]) -> None:
        """Claimed in place (recover() holds their locks): their attempts go on."""
        picked = []
        for name in names:
            try:
                picked.append(self.queue.stat_claimed(name))
            except FileNotFoundError:
                self.queue.release(name)
        log.warning("adopted %d file(s) whose owner died, as new deliveries of their names wait: %s",
                    len(picked), ", ".join(shown(c.name) for c in picked[:5]))
        for c in [c for c in picked if not c.is_regular]:
            self._reject_claimed(c)
        self.redispatch += [f.record.name for f in self._record_claims([c for c in picked if c.is_regular],
                                                                       "adopted")]

    def _forget_vanished(self) -> None:
        """Live records whose file is in neither unprocessed/ nor underprocess/ (removed
        by hand while waiting, or by a dead owner's operator): they reserve no name."""
        assert self.store is not None
        gone = []
        q = self.queue
        for file_id, name, ino, final in self.store.live_rows():
            if file_id in self.by_id:
                continue  # in flight here
            index = q.lock_index(name)
            if not q.locks.try_acquire(index):
                continue  # a live owner's: only the lock holder moves a file
            try:
                present = (any(_inode(folder, name) == ino for folder in (q.unprocessed, q.underprocess))
                           or any(_inode(folder, final) == ino for folder in (q.processed, q.failed)))
            finally:
                q.locks.release(index)
            if not present:
                gone.append((file_id, "vanished"))
                self.events.append(_event("vanished", name, reason="no longer in unprocessed/ or underprocess/"))
        if gone:
            self.store.finished(gone)

    def _journal(self, event: str, flight: Flight, **fields: Any) -> None:
        self.events.append(_event(event, flight.record.name, final=shown(flight.record.final_name), size=flight.size,
                                  supervisor=self.owner, **fields))
        if self.options.trace:
            extra = " ".join(f"{k}={v!r}" for k, v in fields.items())
            log.info("%s %r %s", event, shown(flight.record.name), extra)

    def _flush_journal(self) -> None:
        if self.events and self.journal is not None:
            events, self.events = self.events, []
            self.journal.write(events)

    def _publish(self, now: float) -> None:
        """One snapshot into the manager dict (one round trip) for the dashboard."""
        self.last_publish = now
        wall = time.time()
        snapshot = {
            "time": wall, "owner": self.owner, "started": self.stats.started, "loop_tick": self.loop_tick,
            "intake_paused": self.paused, "in_flight": len(self.flights), "folders": self.queue.counts(),
            "oldest_unprocessed_age_s": max(0.0, wall - min(self.waiting.values())) if self.waiting else None,
            "workers": [self._worker_row(slot, now) for slot in self.slots]
            + (self.remote.workers() if self.remote is not None and self.remote.broker_ok else []),
            "graph": self.graph.describe(), **self._remote_part(),
            "tracing": self.options.trace, "url": self.web_url, **self.stats.snapshot_part(wall),
        }
        with contextlib.suppress(Exception):  # the manager may be gone while stopping
            self.state["snapshot"] = snapshot

    def _remote_part(self) -> dict[str, Any]:
        if self.remote is None:
            return {"backend": "local"}
        ok = self.remote.broker_ok
        return {"backend": "celery",
                "broker": {"ok": ok, "error": self.remote.broker_error,
                           "queue_depth": self.remote.queue_depth() if ok else None}}

    def _worker_row(self, slot: Slot, now: float) -> dict[str, Any]:
        base = slot.index * SLOT_SIZE
        process = slot.process
        row: dict[str, Any] = {"slot": slot.index, "pid": process.pid if process else None,
                               "alive": bool(process and process.is_alive()), "files_done": slot.files_done,
                               "restarts": slot.restarts, "rss": slot.rss, "file": None, "progress_percent": None,
                               "lines_done": 0, "cpu_percent": 0.0,
                               "uptime_s": round(now - slot.started_at, 1) if process else 0.0}
        if process is None:
            row["state"] = "backoff" if slot.not_before > now else "starting"
            return row
        if int(self.progress[base + P_PID]) != process.pid:
            row["state"] = "starting"
            return row
        job = slot.assigned.get(int(self.progress[base + P_JOB]))
        item = int(self.progress[base + P_ITEM])
        if job is not None and 0 <= item < len(job.items):
            it = job.items[item]
            done = self.progress[base + P_BYTES]
            row.update(state="busy", file=shown(it.name), lines_done=int(self.progress[base + P_LINES]),
                       progress_percent=round(min(100.0, 100.0 * done / it.size), 1) if it.size else 100.0)
        else:
            row["state"] = "idle"
        try:
            if slot.cpu is None or slot.cpu.pid != process.pid:
                slot.cpu = psutil.Process(process.pid)
            row["cpu_percent"] = slot.cpu.cpu_percent(None)
        except psutil.Error:
            pass
        return row

    def _show_progress(self, final: bool = False) -> None:
        """--once: a bar on a terminal, periodic lines otherwise (workers/progress.py)."""
        if self.once_view is None:
            self.once_view = Progress(sys.stderr)
        in_flight = []
        for slot in self.slots:
            base = slot.index * SLOT_SIZE
            job = slot.assigned.get(int(self.progress[base + P_JOB]))
            item = int(self.progress[base + P_ITEM])
            if job is not None and 0 <= item < len(job.items):
                it = job.items[item]
                in_flight.append((shown(it.name), int(self.progress[base + P_BYTES]), it.size))
        done = self.summary_total["files"]
        waiting = len(self.flights) + len(self.backlog)
        pending_bytes = sum(f.size for f in self.flights.values()) + sum(c.size for c in self.backlog)
        self.once_view.update(done, done + waiting, self.summary_total["bytes"] + sum(d for _, d, _ in in_flight),
                              self.summary_total["bytes"] + pending_bytes, in_flight, final=final)

    def _log_summary(self, now: float) -> None:
        s = self.summary
        if any(s.values()):
            log.info("last %.0fs: %d files processed (%d lines), %d retried, %d failed; %d in flight",
                     now - self.last_summary, s["files"], s["lines"], s["retried"], s["failed"], len(self.flights))
        self.summary = dict.fromkeys(s, 0)
        self.last_summary = now


class _RemoteJobs:
    """What a slot's job queue is for the Celery backend: put() sends the job."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def put(self, job: Job) -> None:
        self.backend.send(job)


def _event(event: str, name: str, **fields: Any) -> dict[str, Any]:
    """A journal entry: the file's name shown (workers/names.py), exact and printable."""
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return {"ts": ts, "event": event, "file": shown(name), **fields}


def _check_port(host: str, port: int) -> int:
    """Fail early and clearly if the dashboard's port is taken; with port 0, pick one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise QueueSetupError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror} "
                                  "(set [web] port, or [web] enabled = false)") from None
        return s.getsockname()[1]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _transient(exc: sqlite3.DatabaseError) -> bool:
    """A busy or locked database (another supervisor holds it long): not a corruption."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _inode(folder: Path, name: str) -> int:
    try:
        return os.lstat(folder / name).st_ino
    except OSError:
        return -1


def _rss_of(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"


if __name__ == "__main__":
    sys.exit(main())
