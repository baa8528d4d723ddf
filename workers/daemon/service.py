"""The daemon as a service: it builds the parts (``loop.py`` composes them), runs the
loop one guarded step at a time, and stops in order. Signal handlers only count
signals and wake the inbox; the loop acts.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import secrets
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from workers.config import Config
from workers.daemon.backend import Backend
from workers.daemon.celery_pool import CeleryPool
from workers.daemon.commit import Commit
from workers.daemon.dashboard import Dashboard
from workers.daemon.faults import Faults
from workers.daemon.inbox import Inbox
from workers.daemon.intake import Intake
from workers.daemon.ledger import Ledger
from workers.daemon.local_pool import LocalPool
from workers.daemon.loop import Loop, Parts
from workers.daemon.publisher import Publisher
from workers.daemon.reconcile import Reconcile
from workers.daemon.retention import Retention
from workers.daemon.types import SYSTEM_ERRNOS, OpenShared, Options, Shared, StartDashboard, Tally, database_fault
from workers.errors import SystemFailure
from workers.faults import fault_of
from workers.messages import Reload, StopSignal
from workers.ops import announce
from workers.pipelines import Pipelines
from workers.queue import FolderQueue
from workers.readiness import see_writers
from workers.state import Stats, errors_from_journal
from workers.store import Journal, StateError, Store, state_db_path, tail_journal

EXIT_OK = 0
EXIT_FATAL = 3
REPEATED_FAILURES = 5  # a loop step that fails this many times in a row is a system failure

log = logging.getLogger("foldermill")


class StartInterrupted(Exception):
    """SIGTERM or SIGINT arrived while the supervisor was still starting."""


class Daemon:
    """The supervisor daemon: start, run, stop. What it holds until the loop exists is
    only what start-up and shutdown need."""

    def __init__(self, config: Config, pipelines: Pipelines, options: Options, open_shared: OpenShared,
                 start_dashboard: StartDashboard) -> None:
        self.config = config
        self.pipelines = pipelines
        self.options = options
        self.open_shared = open_shared
        self.start_dashboard = start_dashboard
        w = config.watch
        self.queue = FolderQueue(w.dir, w.include, w.exclude, w.ready_marker, w.recursive, w.max_depth,
                           w.dir_ready_marker)
        self.intake = Intake(self.queue, w.settle, w.poll_interval, options.once, w.backlog_window)
        # Probed before intake resumes: where outputs and the state database are written (the
        # queue folders are on output/'s filesystem: prepare() checks it). Not underprocess/:
        # recovery (another supervisor's too) takes whatever it finds there.
        self.faults = Faults([self.queue.output, self.queue.state_dir])
        self.inbox = Inbox()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"  # as people see it
        # As the state database sees it: unique to this start, even for a pid 1 in a container.
        self.incarnation = f"{self.owner}:{secrets.token_hex(4)}"
        self.signals = 0
        self.stop_deadline = 0.0
        self.failures_in_a_row = 0
        self.ctx: Any = mp.get_context("spawn")
        self.shared: Shared | None = None
        self.dashboard: Dashboard | None = None
        self.store: Store | None = None
        self.journal: Journal | None = None
        self.backend: Backend | None = None
        self.loop: Loop | None = None
        self.announced: Any = None  # .foldermill/supervisor-<pid>.json, for `status`

    # -- start ---------------------------------------------------------------------------------

    def catch_signals(self, early: list[int] | None = None) -> None:
        """Signals are the loop's from now on; ``early``: those that came before (while
        the supervisor was importing its modules), counted once the handlers are in
        place, so that none falls between the two."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.signals += len(early or ())
        signal.signal(signal.SIGHUP, lambda *_: self.inbox.put(Reload()))

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        self.inbox.put(StopSignal(signum))

    def _starting(self) -> None:
        if self.signals:
            raise StartInterrupted

    def start(self) -> None:
        config = self.config
        log.info("starting: watch dir %s, config %s", config.watch.dir, config.path)
        self._starting()
        self.queue.prepare()
        if config.web.enabled:
            self.dashboard = Dashboard(self.start_dashboard, config.web.host, config.web.port)
        # The manager is forked first, while this process holds no lock, no database
        # and no thread (forking is ~50x quicker than spawning it). Workers are spawned:
        # they start after claims began, and must inherit nothing.
        self.shared = shared = self.open_shared(mp.get_context("fork"))
        self._starting()
        if self.dashboard is not None:
            self.dashboard.start(self.ctx, config, shared)  # it boots while the rest starts; awaited below
        self.store = store = Store(state_db_path(config.watch.dir))
        w = config.watch
        self.journal = Journal(w.dir / "input.log", int(w.journal_max_mb * 1024 * 1024), w.journal_keep,
                               self.queue.locks_dir / "journal.lock")
        stats = Stats(time.time(), store.totals())
        stats.recent_errors.extend(errors_from_journal(tail_journal(w.dir / "input.log")))
        tally = Tally()
        publisher = Publisher(stats, tally, self.owner, self.options.trace)
        publisher.attach(shared.state)
        faults = self.faults
        ledger = Ledger(self.queue, store, self.journal, self.pipelines, self.owner, self.incarnation,
                        self.options.trace, self.intake.forget, faults, w.settle)
        commit = Commit(ledger, store, self.queue, config.workers, stats, tally, faults)
        reconcile = Reconcile(self.queue, store, self.owner, self.incarnation)
        self.backend = self._make_backend(shared, stats)
        retention = Retention(store, w.state_retention_days, w.dedupe_retention_days, self.queue.holds_failed)
        parts = Parts(self.intake, ledger, commit, self.backend, publisher, stats, self.inbox, shared,
                      self.dashboard, retention, faults, reconcile)
        self.loop = Loop(parts, config, self.pipelines, self.options, self.owner, self.open_shared, self.ctx,
                         lambda: self.signals > 0)
        self.backend.start(self.inbox.items)
        self.inbox.pump_from(shared)
        if self.dashboard is not None:
            self.dashboard.wait_ready(20, self._starting)
        self._starting()
        self.intake.watch(self.inbox.items)
        sight = see_writers(str(self.queue.unprocessed), True, w.settle)  # said once: what settle alone covers
        log.info("writers are seen by: %s", "; ".join(sight.describe()))
        publisher.writers_seen(sight.as_dict())
        reconcile.sweep_debris()
        self.loop.recover(time.monotonic())
        url = ""
        if self.dashboard is not None:
            url = self.dashboard.url()
            publisher.serving(url)
            log.info("dashboard at %s (JSON: stats, trace, errors, health; Prometheus: metrics)", url)
        try:
            self.announced = announce(self.queue.state_dir, os.getpid(), url, self.owner)
        except OSError as exc:  # a full disk, say: `status` reads the folders instead
            log.warning("cannot announce this supervisor in %s (%s): `status` will not find it",
                        self.queue.state_dir, exc.strerror or exc)
        log.info("foldermill started: watching %s with %d workers (supervisor %s)",
                 self.queue.unprocessed, self.options.workers, self.owner)

    def _make_backend(self, shared: Shared, stats: Stats) -> Backend:
        """The one place that knows there are two backends."""
        if self.config.workers.backend == "celery":
            from workers.config import pipeline_version

            return CeleryPool(self.config, self.owner, self.options.trace, pipeline_version(self.config.raw))
        return LocalPool(self.ctx, shared, self.config, self.options.workers, self.options.trace,
                         state_db_path(self.config.watch.dir), stats.restarts)

    # -- run -----------------------------------------------------------------------------------

    def run(self) -> int:
        assert self.loop is not None
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
                self.loop.show_progress(final=True)
            with contextlib.suppress(Exception):
                self.shutdown()
        return code

    def _guarded_step(self, now: float) -> None:
        """One step; whatever one file does is handled inside it."""
        assert self.loop is not None
        loop = self.loop

        def step() -> None:
            self.intake.check_folders()
            loop.step(now)

        if self._guarded(step):
            self.failures_in_a_row = 0

    def _guarded(self, work: Callable[[], None]) -> bool:
        """Run a step of the loop (or an inbox item handled while waiting). A fault of the
        machine pauses intake; an error that escapes is logged once with its traceback,
        and if every step fails the same way the whole system is unusable: SystemFailure
        (exit 3), never a traceback loop. True if it went through."""
        try:
            work()
            return True
        except SystemFailure:
            raise
        except sqlite3.DatabaseError as exc:
            fault = database_fault(exc, str(state_db_path(self.config.watch.dir)))
            if fault is not None:  # full, busy: the machine's, intake waits for it
                self.faults.hit(fault)
                return False
            raise SystemFailure(f"the state database {state_db_path(self.config.watch.dir)} failed: {exc}") from None
        except StateError as exc:
            raise SystemFailure(str(exc)) from None
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise SystemFailure(f"{exc.strerror} ({exc.filename}): the watch dir cannot be written") from None
            fault = fault_of(exc)
            if fault is not None:
                self.faults.hit(fault)
                return False
            self._step_failed(exc)
        except Exception as exc:
            self._step_failed(exc)
        return False

    def _step_failed(self, exc: Exception) -> None:
        self.failures_in_a_row += 1
        if self.failures_in_a_row == 1:
            log.exception("a loop step failed (%s); going on", exc)
        if self.failures_in_a_row >= REPEATED_FAILURES:
            raise SystemFailure(f"{REPEATED_FAILURES} loop steps in a row failed, last with "
                                f"{type(exc).__name__}: {exc}") from None
        threading.Event().wait(0.2 * self.failures_in_a_row)

    def _done(self, now: float) -> bool:
        assert self.loop is not None
        grace = self.loop.config.workers.shutdown_grace
        if self.signals:
            if not self.stop_deadline:
                self.stop_deadline = now + grace
                log.info("stopping: no new claims; %d files in flight get %.0fs to finish",
                         self.loop.in_flight(), grace)
            return not self.loop.in_flight() or now >= self.stop_deadline
        return self.options.once and self.intake.once_idle

    def _wait(self, now: float) -> None:
        assert self.loop is not None
        busy = self.loop.in_flight()
        timeout = 0.1 if busy else min(0.25, max(0.01, self.intake.seconds_to_next_scan(now)))
        item = self.inbox.get(timeout)
        if item is not None:
            loop = self.loop
            self._guarded(lambda: loop.handle(item))

    # -- stop ----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """In order: nothing new comes in, the workers stop, what finished is committed,
        the rest goes back to unprocessed/, the journal is written, the manager goes."""
        self.inbox.stop_pumps()
        self.intake.stop()
        if self.backend is not None:
            self.backend.stop()
        if self.dashboard is not None:
            self.dashboard.kill()
        try:
            if self.loop is not None and self.store is not None:
                self.loop.finish()
                self.store.close()
        except Exception as exc:  # the disk or the database failed: recovery takes over at the next start
            log.error("could not return every file in flight (%s); the next start recovers them", exc)
        finally:
            if self.journal is not None:
                if self.journal.owes():
                    log.error("journal lines could not be written to %s before the stop (the disk is full); "
                              "the folders and the state database have what they said", self.journal.path)
                self.journal.close()
            if self.announced is not None:
                with contextlib.suppress(OSError):
                    self.announced.unlink()
            shared = self.loop.shared() if self.loop is not None else self.shared
            if shared is not None:
                with contextlib.suppress(Exception):
                    shared.shutdown()
        log.info("foldermill stopped")
