"""The daemon's loop: it composes the parts and owns only what is the loop's own: the
running configuration and pipeline version, pause, and what to do with each item of
the inbox. One ``step(now)`` reads as huey's consumer loop does: what came in, what to
commit, how the workers are, what to claim, what to publish. ``service.py`` builds the
parts, runs the steps and stops them.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.actions import ACTIONS, journal_fields
from workers.config import Config, load_config, pipeline_version, reloaded
from workers.daemon.backend import Backend
from workers.daemon.commit import Commit
from workers.daemon.dashboard import Dashboard
from workers.daemon.faults import Faults
from workers.daemon.flights import Flight
from workers.daemon.inbox import Inbox
from workers.daemon.intake import Intake
from workers.daemon.ledger import Ledger
from workers.daemon.publisher import Publisher
from workers.daemon.reconcile import Reconcile
from workers.daemon.retention import Retention
from workers.daemon.types import OpenShared, Options, Report, Shared, database_fault
from workers.errors import ConfigError
from workers.faults import DESCRIPTORS, fault_of
from workers.messages import BrokerNews, Command, FileEvent, FileEvents, JobDone, Message, Reload, StopSignal
from workers.names import shown, unshown
from workers.pipelines import Pipelines, compile_pipelines
from workers.queue import Candidate
from workers.state import Stats
from workers.store import StateError, state_db_path
from workers.store import journal_entry as event_entry

log = logging.getLogger("foldermill")


@dataclass
class Parts:
    """The daemon's parts, built by ``service.py`` once the state database is open."""

    intake: Intake
    ledger: Ledger
    commit: Commit
    backend: Backend
    publisher: Publisher
    stats: Stats
    inbox: Inbox
    shared: Shared
    dashboard: Dashboard | None
    retention: Retention
    faults: Faults
    reconcile: Reconcile


class Loop:
    """The parts composed: one step at a time."""

    def __init__(self, parts: Parts, config: Config, pipelines: Pipelines, options: Options, owner: str,
                 open_shared: OpenShared, ctx: Any, stopping: Callable[[], bool]) -> None:
        self.parts = parts
        self.config = config
        self.pipelines = pipelines
        self.options = options
        self.owner = owner
        self.open_shared = open_shared
        self.ctx = ctx
        self.stopping = stopping  # a signal asked us to stop: no new claims
        self.pipeline = pipeline_version(config.raw)
        self.paused = False
        self.last_report: Report | None = None
        self.db_path = str(state_db_path(config.watch.dir))

    def shared(self) -> Shared:
        """The manager in use now (a new one if the first died)."""
        return self.parts.shared

    def in_flight(self) -> int:
        return self.parts.ledger.count()

    def finish(self) -> None:
        """Stopping, the workers gone: results that arrived are committed rather than
        redone, every other file in flight goes back to unprocessed/, the journal is written."""
        while (item := self.parts.inbox.get_nowait()) is not None:
            if isinstance(item, JobDone):
                self.deliver(item.result)
        self.parts.commit.run()
        self.parts.ledger.return_all("supervisor stopped before it finished", self.parts.commit.committing())
        self.parts.ledger.flush()

    # -- one step of the loop --------------------------------------------------------------------

    def step(self, now: float) -> None:
        """One turn: what came in, what to commit, how the workers are, what to claim,
        what to publish."""
        self._take_in()
        if self.parts.faults.cleared(now):  # a fault of the machine is over: intake resumes
            self.parts.intake.wake()
        machine_ok = not self.parts.faults.paused()
        if not machine_ok and (self.parts.faults.describe() or {}).get("kind") == DESCRIPTORS:
            self.parts.intake.release_descriptors()  # the lock descriptors kept between claims
        if machine_ok:
            self.parts.commit.run()
        self._check_workers(now)
        self.parts.publisher.beat()
        if self.stopping() or self.paused:  # stopping or paused: what waits for a worker waits in unprocessed/
            self.parts.ledger.return_undispatched()
            self.parts.intake.refresh(now)
        elif machine_ok:
            self._claim_and_dispatch(now)
        # else a fault of the machine: claimed files wait where they are, claimed; nothing new comes in
        if self.parts.reconcile.recover_due(now):
            self.parts.faults.look()
            self.recover(now)
            if machine_ok:
                self.parts.commit.retry_moves()
        self.parts.ledger.flush()
        self.parts.retention.step(now)
        self.parts.intake.tidy(now, self.config.watch.empty_dirs_after)
        self.parts.publisher.tick(now, lambda: self._report(now), self.parts.ledger.count())
        if self.options.once:
            self.show_progress()

    # -- what came in --

    def _take_in(self) -> None:
        while (item := self.parts.inbox.get_nowait()) is not None:
            self.handle(item)

    def handle(self, item: Message) -> None:
        """One message from the inbox."""
        match item:
            case JobDone(result):
                self.deliver(result)
            case Command():
                self._on_command(item)
            case BrokerNews():
                self.parts.backend.on_message(item)
            case Reload():
                self._reload()
            case FileEvent(kind, name):
                self.parts.intake.note_event(kind, name)
            case FileEvents(events):
                self._note_events(events)
            case StopSignal():
                pass  # the service counts it (its handler); the message only wakes the loop

    def _note_events(self, events: tuple[FileEvent, ...]) -> None:
        """One read's events, each on its own: one that fails (an lstat refused) costs
        only itself, and a pass over the folder then finds what it was about."""
        note, failed = self.parts.intake.note_event, None
        for event in events:
            try:
                note(event.kind, event.name)
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            self.parts.intake.events_lost()
            raise failed

    def deliver(self, result: Any) -> None:
        """A job's result, through the backend that ran it, to the commit part."""
        delivery = self.parts.backend.collect(result)
        if delivery is not None:
            self.parts.commit.deliver(delivery)

    def _on_command(self, command: Command) -> None:
        """An action from the dashboard (already authorised and validated there)."""
        action = command.action
        if action == "pause":
            self.paused = True
            log.info("intake paused from the dashboard")
        elif action == "resume":
            self.paused = False
            self.parts.intake.wake()
            log.info("intake resumed from the dashboard")
        elif action in ACTIONS:
            name = unshown(command.name)  # the dashboard speaks in shown names
            done = self.parts.intake.act(action, name, self.parts.ledger.replays())
            if done.problem:  # the folder changed since the dashboard checked: said where the file is looked up
                log.warning("%s of %s refused: %s", action, shown(name), done.problem)
                self.parts.ledger.note(event_entry("action-refused", name, action=action, reason=done.problem,
                                             supervisor=self.owner, by="dashboard"))
                return
            event, fields = journal_fields(done)
            self.parts.ledger.note(event_entry(event, name, supervisor=self.owner, by="dashboard", **fields))
            log.info("%s of %s done from the dashboard", action, shown(name))

    def _reload(self) -> None:
        """SIGHUP: read config.toml again. Valid new pipelines and routes (and new
        [workers] limits) apply to files dispatched from now on: jobs carry the new version, local
        the backend runs each job with the pipeline it needs
        (backend.reload). An invalid file is logged with the key at fault and the running config stays."""
        try:
            new = load_config(self.config.path)
            pipelines = compile_pipelines(new, str(new.base_dir))
            self.config, kept = reloaded(self.config, new)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        if kept:
            log.warning("reload: changes to %s need a restart and are ignored", ", ".join(kept))
        self.pipelines = pipelines
        self.pipeline = pipeline_version(self.config.raw)
        self.parts.ledger.reload(pipelines)
        self.parts.commit.reload(self.config.workers)
        self.parts.backend.reload(self.config, self.pipeline)
        log.info("configuration reloaded: files dispatched from now on get the new pipelines (%s: %d nodes) "
                 "and %d routes; workers recycled", ", ".join(pipelines.graphs), pipelines.node_count(),
                 len(pipelines.routes))

    # -- how the workers are --

    def _check_workers(self, now: float) -> None:
        if self.parts.shared.died() is not None and not self.stopping():
            self._rebuild_shared()
        for returned in self.parts.backend.check(now, self.stopping()):
            self.parts.commit.settle(returned)
        if self.parts.dashboard is not None and not self.stopping():
            self.parts.dashboard.check(now, self.ctx, self.config, self.parts.shared)

    def _rebuild_shared(self) -> None:
        """The manager process died: every queue and the state dict went with it. Start a
        new one (spawned: this process now holds locks and threads), and the workers
        and the dashboard that used the old one; their files go out again at no cost."""
        log.error("the manager process died (exit %s): restarting it, the workers and the dashboard",
                  self.parts.shared.died())
        self.parts.inbox.stop_pumps()
        if self.parts.dashboard is not None:
            self.parts.dashboard.kill()
        self.parts.stats.restarts["manager"] += 1
        self.parts.shared = self.open_shared(self.ctx)
        for returned in self.parts.backend.rebuild(self.parts.shared):
            self.parts.commit.settle(returned)
        self.parts.publisher.attach(self.parts.shared.state)
        self.parts.inbox.pump_from(self.parts.shared)
        if self.parts.dashboard is not None:
            self.parts.dashboard.start(self.ctx, self.config, self.parts.shared)

    # -- what to claim --

    def _claim_and_dispatch(self, now: float) -> None:
        """Retries due and files waiting for a job first, then new claims, as many as the
        backend has room for; packed into jobs (small files travel together)."""
        jobs = self.parts.backend.room()
        if not jobs:
            self.parts.intake.refresh(now)  # no room: the counts stay right all the same
            return
        room = jobs * self.config.workers.batch_files
        self._take_in()  # the file events of the last moments (an open) before judging files
        pending = self.parts.ledger.take_pending(now)  # they stay WAITING until a job carries them
        if len(pending) < room:
            idle = not self.parts.ledger.count()
            claims = self.parts.intake.claim(now, room - len(pending), self.parts.ledger, idle,
                                       idle and self.parts.commit.idle() and self.parts.backend.idle())
            if claims.fault is not None:
                self.parts.faults.hit(claims.fault)
            for candidate, reason in claims.rejects:
                self.parts.commit.reject(self.parts.commit.admitted(self._admit([candidate], "claimed")), reason)
            pending += self.parts.commit.admitted(self._admit(claims.files, "claimed"))
        if pending:
            self._dispatch(pending)

    def _admit(self, picked: list[Candidate], event: str) -> list[Flight]:
        """Claims into the ledger; if it cannot record them, they go back where they were
        (a fault of the machine, a full disk say, pauses intake too)."""
        try:
            return self.parts.ledger.admit(picked, event)
        except Exception as exc:
            fault = database_fault(exc, self.db_path) or fault_of(exc)
            if fault is None and isinstance(exc, (sqlite3.DatabaseError, StateError)):
                raise
            if fault is not None:
                self.parts.faults.hit(fault)
            self.parts.intake.give_back(picked, None if fault else exc)
            return []

    def _dispatch(self, flights: list[Flight]) -> None:
        w = self.config.workers
        routed = self._route(flights)
        try:
            self.parts.ledger.reserve_anew(routed)
        except sqlite3.OperationalError as exc:
            fault = database_fault(exc, self.db_path)
            if fault is None:
                raise
            self.parts.faults.hit(fault)
            return  # the database is busy or full: they wait, claimed

        jobs = pack(routed, w.batch_files, w.batch_bytes)
        for batch in jobs:
            if not self.parts.backend.room():  # the broker went down while dispatching: the rest wait, WAITING
                return
            job = self.parts.ledger.assign(batch, self.pipeline)
            if not self.parts.backend.submit(job):  # the manager or the broker went away: they go out again
                self.parts.ledger.requeue(job.seq, job.items)

    def _route(self, flights: list[Flight]) -> list[Flight]:
        """Each file's pipeline, by its name and the routes now; a file no route
        matches goes to failed/ with the routes it was tried on."""
        routed = []
        for flight in flights:
            name = flight.record.name
            pipeline = self.pipelines.route(name)
            if pipeline is None:
                self.parts.commit.reject([flight], f"{shown(name)}: {self.pipelines.unrouted(name)}")
            else:
                self.parts.ledger.route(flight, pipeline)
                routed.append(flight)
        return routed

    def recover(self, now: float) -> None:
        """Dead owners' files (the intake finds them; the ledger records them)."""
        found = self.parts.reconcile.recover(now, self.parts.ledger.names())
        if found.requeued:
            self.parts.intake.wake()
        try:
            self.parts.ledger.recovered(found.requeued)
        except Exception as exc:  # the files are back in unprocessed/ whatever the state says
            fault = database_fault(exc, self.db_path)
            if fault is None:
                raise
            self.parts.faults.hit(fault)
        for candidate, reason in found.rejects:
            self.parts.commit.reject(self.parts.commit.admitted(self._admit([candidate], "claimed")), reason)
        self.parts.ledger.hold(self.parts.commit.admitted(self._admit(found.adopted, "adopted")))
        for entry in self.parts.reconcile.reconcile(self.parts.ledger.ids()):
            self.parts.ledger.note(entry)

    # -- what to publish --

    def _report(self, now: float) -> Report:
        """The figures to publish. Gathering them needs descriptors (a recount, /proc):
        with none left, the last ones are published again, with the fault that says so."""
        p = self.pipelines
        try:
            self.last_report = Report(self.paused, self.parts.ledger.count(), self.parts.intake.counts(),
                                      self.parts.intake.oldest_waiting_mtime(), self.parts.backend.workers(now),
                                      self.parts.backend.describe(), p.describe(), p.layout(), list(p.graphs))
        except OSError as exc:
            fault = fault_of(exc)
            if fault is None or self.last_report is None:
                raise
            self.parts.faults.hit(fault)
        faults = self.parts.faults
        return dataclasses.replace(self.last_report, machine=faults.describe(), faults=faults.counts(),
                                   file_events=self.parts.intake.events_problem())

    def show_progress(self, final: bool = False) -> None:
        """--once: the progress bar or lines."""
        files, size = self.parts.intake.backlog_size()
        self.parts.publisher.progress(self.parts.backend.in_progress(), self.parts.ledger.count() + files,
                                self.parts.ledger.pending_bytes() + size, final)


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
