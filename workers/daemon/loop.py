"""The daemon's loop: it composes the parts and owns only what is the loop's own (the
inbox every thread writes into, the signals, pause, the stop deadline, the start-up
and the ordered shutdown). One ``step(now)`` reads as huey's consumer loop does: what
came in, what to commit, how the workers are, what to claim, what to publish.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import secrets
import signal
import socket
import sqlite3
import threading
import time
from typing import Any

from workers.config import Config, load_config, pipeline_version, reloaded
from workers.daemon.backend import Backend
from workers.daemon.celery_pool import CeleryPool
from workers.daemon.commit import Commit
from workers.daemon.dashboard import Dashboard
from workers.daemon.intake import Intake
from workers.daemon.ledger import Ledger, event_entry
from workers.daemon.local_pool import LocalPool
from workers.daemon.publisher import Publisher
from workers.daemon.types import (
    SYSTEM_ERRNOS,
    Flight,
    OpenShared,
    Options,
    Report,
    Shared,
    StartDashboard,
    Tally,
    transient,
)
from workers.errors import ConfigError, SystemFailure
from workers.graph import Graph, compile_graph
from workers.names import shown, unshown
from workers.ops import announce
from workers.queue import Candidate, FolderQueue
from workers.state import Stats, errors_from_journal
from workers.store import Journal, StateError, Store, tail_journal

EXIT_OK = 0
EXIT_FATAL = 3
REPEATED_FAILURES = 5  # a loop step that fails this many times in a row is a system failure

log = logging.getLogger("foldermill")


class StartInterrupted(Exception):
    """SIGTERM or SIGINT arrived while the supervisor was still starting."""


class Daemon:
    """The supervisor daemon: the parts, composed, and the loop that turns them."""

    def __init__(self, config: Config, graph: Graph, options: Options, open_shared: OpenShared,
                 start_dashboard: StartDashboard) -> None:
        self.config = config
        self.graph = graph
        self.options = options
        self.open_shared = open_shared
        self.start_dashboard = start_dashboard
        w = config.watch
        self.queue = FolderQueue(w.dir, w.include, w.exclude, w.ready_marker)
        self.intake = Intake(self.queue, w.settle, w.poll_interval, options.once)
        # SimpleQueue: put() is reentrant, so the signal handler may use it.
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"  # as people see it
        # As the state database sees it: unique to this start, even for a pid 1 in a container.
        self.incarnation = f"{self.owner}:{secrets.token_hex(4)}"
        self.pipeline = pipeline_version(config.raw)
        self.tally = Tally()
        self.publisher = Publisher(Stats(time.time(), {}), self.tally, self.owner, options.trace)
        self.signals = 0
        self.stop_deadline = 0.0
        self.paused = False
        self.failures_in_a_row = 0
        self.ctx: Any = mp.get_context("spawn")
        self.shared: Shared | None = None
        self.dashboard: Dashboard | None = None
        self.store: Store | None = None
        self.journal: Journal | None = None
        self.ledger: Ledger | None = None
        self.commit: Commit | None = None
        self.backend: Backend | None = None
        self.announced: Any = None  # .foldermill/supervisor-<pid>.json, for `status`
        self._pump_stop = threading.Event()

    # -- start and stop ----------------------------------------------------------------------

    def catch_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, lambda *_: self.inbox.put(("reload",)))

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        self.inbox.put(("signal", signum))

    def _starting(self) -> None:
        if self.signals:
            raise StartInterrupted

    def start(self) -> None:
        config = self.config
        log.info("starting: watch dir %s, config %s", config.watch.dir, config.path)
        self.queue.prepare()
        if config.web.enabled:
            self.dashboard = Dashboard(self.start_dashboard, config.web.host, config.web.port)
        # The manager is forked first, while this process holds no lock, no database
        # and no thread (forking is ~50x quicker than spawning it). Workers are spawned:
        # they start after claims began, and must inherit nothing.
        self.shared = self.open_shared(mp.get_context("fork"))
        self._starting()
        if self.dashboard is not None:
            self.dashboard.start(self.ctx, config, self.shared)  # it boots while the rest starts
        self.store = store = Store(self.queue.state_dir / "state.db")
        w = config.watch
        self.journal = Journal(w.dir / "input.log", int(w.journal_max_mb * 1024 * 1024), w.journal_keep,
                               self.queue.locks_dir / "journal.lock")
        stats = Stats(time.time(), store.totals())
        stats.recent_errors.extend(errors_from_journal(tail_journal(w.dir / "input.log")))
        self.publisher = Publisher(stats, self.tally, self.owner, self.options.trace)
        self.publisher.attach(self.shared.state)
        self.ledger = Ledger(self.queue, store, self.journal, self.graph, self.owner, self.incarnation,
                             self.options.trace, self.intake.forget)
        self.commit = Commit(self.ledger, store, self.queue, config.workers, stats, self.tally)
        self.backend = self._make_backend(stats)
        self.backend.start(self.inbox)
        self._start_pumps()
        if self.dashboard is not None:
            self.dashboard.wait_ready(20, self._starting)
        self._starting()
        self.intake.watch(self.inbox)
        self._recover(time.monotonic())
        url = ""
        if self.dashboard is not None:
            url = self.dashboard.url()
            self.publisher.serving(url)
            log.info("dashboard at %s (JSON: stats, trace, errors, health; Prometheus: metrics)", url)
        self.announced = announce(self.queue.state_dir, os.getpid(), url, self.owner)
        log.info("foldermill started: watching %s with %d workers (supervisor %s)",
                 self.queue.unprocessed, self.options.workers, self.owner)

    def _make_backend(self, stats: Stats) -> Backend:
        """The one place that knows there are two backends."""
        assert self.shared is not None
        if self.config.workers.backend == "celery":
            return CeleryPool(self.config, self.owner, self.options.trace, self.pipeline)
        return LocalPool(self.ctx, self.shared, self.config, self.options.workers, self.options.trace,
                         self.queue.state_dir / "state.db", stats.restarts)

    def _start_pumps(self) -> None:
        assert self.shared is not None
        self._pump_stop = stop = threading.Event()
        for source, kind in ((self.shared.results, "result"), (self.shared.commands, "command")):
            threading.Thread(target=self._pump, args=(source, kind, stop), name=f"{kind}-pump", daemon=True).start()

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
            if self.options.once:
                self._show_progress(final=True)
            with contextlib.suppress(Exception):
                self.shutdown()
        return code

    def _done(self, now: float) -> bool:
        in_flight = self.ledger.count() if self.ledger else 0
        if self.signals:
            if not self.stop_deadline:
                self.stop_deadline = now + self.config.workers.shutdown_grace
                log.info("stopping: no new claims; %d files in flight get %.0fs to finish",
                         in_flight, self.config.workers.shutdown_grace)
            return not in_flight or now >= self.stop_deadline
        return self.options.once and self.intake.once_idle

    def _wait(self, now: float) -> None:
        busy = self.ledger is not None and self.ledger.count()
        timeout = 0.1 if busy else min(0.25, max(0.01, self.intake.seconds_to_next_scan(now)))
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        self._handle(item)

    def shutdown(self) -> None:
        """Ordered: nothing new comes in, the workers stop, what finished is committed,
        the rest goes back to unprocessed/, the journal is written, the manager goes."""
        self._pump_stop.set()
        self.intake.stop()
        if self.backend is not None:
            self.backend.stop()
        if self.dashboard is not None:
            self.dashboard.kill()
        try:
            if self.store is not None and self.ledger is not None and self.commit is not None:
                self._drain_results()
                self.commit.run()
                self.ledger.return_all("supervisor stopped before it finished")
                self.ledger.flush()
                self.store.close()
        except Exception as exc:  # the disk or the database failed: recovery takes over at the next start
            log.error("could not return every file in flight (%s); the next start recovers them", exc)
        finally:
            if self.journal is not None:
                self.journal.close()
            if self.announced is not None:
                with contextlib.suppress(OSError):
                    self.announced.unlink()
            if self.shared is not None:
                with contextlib.suppress(Exception):
                    self.shared.shutdown()
        log.info("foldermill stopped")

    def _drain_results(self) -> None:
        """Results that arrived but were not handled yet: commit them rather than redo them."""
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "result":
                self._deliver(item[1])

    # -- one step of the loop --------------------------------------------------------------------

    def step(self, now: float) -> None:
        """One turn: what came in, what to commit, how the workers are, what to claim,
        what to publish."""
        assert self.ledger is not None and self.commit is not None
        self._take_in()
        self.commit.run()
        self._check_workers(now)
        self.publisher.beat()
        if not self.signals and not self.paused:
            self._claim_and_dispatch(now)
        else:  # stopping or paused: what waits for a worker waits in unprocessed/
            self.ledger.return_undispatched()
        if self.intake.recover_due(now):
            self._recover(now)
            self.commit.retry_moves()
        self.ledger.flush()
        self.publisher.tick(now, lambda: self._report(now), self.ledger.count())
        if self.options.once:
            self._show_progress()

    def _guarded_step(self, now: float) -> None:
        """One step; whatever one file does is handled inside it. An error that escapes
        is logged once with its traceback, and if every step fails the same way the
        whole system is unusable: SystemFailure (exit 3), never a traceback loop."""
        try:
            self.intake.check_folders()
            self.step(now)
            self.failures_in_a_row = 0
        except SystemFailure:
            raise
        except sqlite3.DatabaseError as exc:
            if transient(exc):
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

    # -- what came in --

    def _take_in(self) -> None:
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(item)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "result":
            self._deliver(item[1])
        elif kind == "command":
            self._on_command(item[1])
        elif kind == "backend":
            assert self.backend is not None
            self.backend.on_message(item[1:])
        elif kind == "reload":
            self._reload()
        elif kind == "fs":
            self.intake.note_event(item[1], item[2])

    def _deliver(self, result: Any) -> None:
        assert self.backend is not None and self.commit is not None
        delivery = self.backend.collect(result)
        if delivery is not None:
            self.commit.deliver(delivery)

    def _on_command(self, command: tuple) -> None:
        """An action from the dashboard (already authorised and validated there)."""
        action = command[0]
        if action == "pause":
            self.paused = True
            log.info("intake paused from the dashboard")
        elif action == "resume":
            self.paused = False
            self.intake.wake()
            log.info("intake resumed from the dashboard")
        elif action == "retry":
            name = unshown(command[1])  # the dashboard speaks in shown names
            problem = self.intake.retry_failed(name)
            if problem:
                log.warning("retry of %s refused: %s", shown(name), problem)
                return
            assert self.ledger is not None
            self.ledger.note(event_entry("retry-requested", name, supervisor=self.owner))
            log.info("retry of failed file %s requested from the dashboard", shown(name))

    def _reload(self) -> None:
        """SIGHUP: read config.toml again. A valid new pipeline (and new [workers] limits)
        apply to files claimed from now on: jobs carry the new pipeline version, local
        workers are recycled after their current job, Celery nodes reload it from the
        job. An invalid file is logged with the key at fault and the running config stays."""
        try:
            new = load_config(self.config.path)
            graph = compile_graph(new.pipeline, str(new.base_dir))
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        self.config, kept = reloaded(self.config, new)
        if kept:
            log.warning("reload: changes to %s need a restart and are ignored", ", ".join(kept))
        self.graph = graph
        self.pipeline = pipeline_version(self.config.raw)
        assert self.ledger is not None and self.commit is not None and self.backend is not None
        self.ledger.reload(graph)
        self.commit.reload(self.config.workers)
        self.backend.reload(self.config, self.pipeline)
        log.info("configuration reloaded: new files get the new pipeline (%d nodes); workers recycled",
                 len(graph.nodes))

    # -- how the workers are --

    def _check_workers(self, now: float) -> None:
        assert self.shared is not None and self.backend is not None and self.commit is not None
        if self.shared.died() is not None and not self.signals:
            self._rebuild_shared()
        for returned in self.backend.check(now, bool(self.signals)):
            self.commit.settle(returned)
        if self.dashboard is not None and not self.signals:
            self.dashboard.check(now, self.ctx, self.config, self.shared)

    def _rebuild_shared(self) -> None:
        """The manager process died: every queue and the state dict went with it. Start a
        new one (spawned: this process now holds locks and threads), and the workers
        and the dashboard that used the old one; their files go out again at no cost."""
        assert self.shared is not None and self.backend is not None and self.commit is not None
        log.error("the manager process died (exit %s): restarting it, the workers and the dashboard",
                  self.shared.died())
        self._pump_stop.set()
        if self.dashboard is not None:
            self.dashboard.kill()
        self.publisher.stats.restarts["manager"] += 1
        self.shared = self.open_shared(self.ctx)
        for returned in self.backend.rebuild(self.shared):
            self.commit.settle(returned)
        self.publisher.attach(self.shared.state)
        self._start_pumps()
        if self.dashboard is not None:
            self.dashboard.start(self.ctx, self.config, self.shared)

    # -- what to claim --

    def _claim_and_dispatch(self, now: float) -> None:
        """Retries due and files waiting for a job first, then new claims, as many as the
        backend has room for; packed into jobs (small files travel together)."""
        assert self.ledger is not None and self.commit is not None and self.backend is not None
        jobs = self.backend.room()
        if not jobs:
            return
        room = jobs * self.config.workers.batch_files
        pending = self.ledger.take_pending(now)
        if len(pending) < room:
            idle = not self.ledger.count()
            claims = self.intake.claim(now, room - len(pending), self.ledger, idle,
                                       idle and self.commit.idle() and self.backend.idle())
            for candidate, reason in claims.rejects:
                self.commit.reject(self.commit.admitted(self._admit([candidate], "claimed")), reason)
            pending += self.commit.admitted(self._admit(claims.files, "claimed"))
        if pending:
            self._dispatch(pending)

    def _admit(self, picked: list[Candidate], event: str) -> list[Flight]:
        """Claims into the ledger; if it cannot record them, they go back where they were."""
        assert self.ledger is not None
        try:
            return self.ledger.admit(picked, event)
        except (sqlite3.DatabaseError, StateError):
            raise
        except Exception as exc:
            self.intake.give_back(picked, exc)
            return []

    def _dispatch(self, flights: list[Flight]) -> None:
        assert self.ledger is not None and self.backend is not None
        w = self.config.workers
        jobs = pack(flights, w.batch_files, w.batch_bytes)
        for k, batch in enumerate(jobs):
            if not self.backend.room():  # the broker went down while dispatching: these wait for it
                self.ledger.hold([f for later in jobs[k:] for f in later])
                return
            job = self.ledger.assign(batch, self.pipeline)
            if not self.backend.submit(job):  # the manager or the broker went away: they go out again
                self.ledger.requeue(job.items)

    def _recover(self, now: float) -> None:
        """Dead owners' files (the intake finds them; the ledger records them)."""
        assert self.ledger is not None and self.commit is not None
        found = self.intake.recover(now, self.ledger.names())
        self.ledger.recovered(found.requeued)
        for candidate, reason in found.rejects:
            self.commit.reject(self.commit.admitted(self._admit([candidate], "claimed")), reason)
        self.ledger.hold(self.commit.admitted(self._admit(found.adopted, "adopted")))
        self.ledger.forget_vanished()

    # -- what to publish --

    def _report(self, now: float) -> Report:
        assert self.ledger is not None and self.backend is not None
        return Report(self.paused, self.ledger.count(), self.intake.counts(), self.intake.oldest_waiting_mtime(),
                      self.backend.workers(now), self.backend.describe(), self.graph.describe())

    def _show_progress(self, final: bool = False) -> None:
        if self.ledger is None or self.backend is None:
            return
        files, size = self.intake.backlog_size()
        self.publisher.progress(self.backend.in_progress(), self.ledger.count() + files,
                                self.ledger.pending_bytes() + size, final)


def pack(flights: list[Flight], batch_files: int, batch_bytes: int) -> list[list[Flight]]:
    """Flights into jobs: up to batch_files files or batch_bytes bytes each."""
    jobs: list[list[Flight]] = []
    size = 0
    for flight in flights:
        if not jobs or len(jobs[-1]) >= batch_files or size + flight.size > batch_bytes:
            jobs.append([])
            size = 0
        jobs[-1].append(flight)
        size += flight.size
    return jobs
