"""What a file's failure costs, in one place for the commit part: the per-file error
policy (``Outcomes.per_file``: a file's own problem costs it an attempt, a fault of the
machine costs nothing, an error of the whole system stops the daemon), attempts and
their backoff, the move to failed/, moves that must be tried again, and the state
writes that follow moves already made (held back by a fault, written later, in order).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from enum import Enum
from typing import Any

from workers.config import WorkersConfig
from workers.daemon.flights import Flight, IllegalTransition, State
from workers.daemon.ledger import Ledger
from workers.daemon.types import RECOVER_EVERY_S, SYSTEM_ERRNOS, FaultSink, Tally
from workers.errors import SystemFailure
from workers.failure import Failure, next_try_s
from workers.faults import DESCRIPTORS, MEMORY, fault_of
from workers.names import reason_name, shown
from workers.outputs import remove_staged
from workers.queue import FolderQueue
from workers.state import Stats
from workers.store import StateError, Store
from workers.worker import ItemResult

log = logging.getLogger("foldermill")

LOCAL_FAULTS_PER_FILE = 3  # faults a worker meets on one file alone, in a row, before the file is charged


class Step(Enum):
    """How one file's step went: done, charged to the file, or held by a machine fault."""

    DONE = "done"
    CHARGED = "charged"
    HELD = "held"


class Outcomes:
    """Attempts, failed/, moves to try again, and state writes owed."""

    def __init__(self, ledger: Ledger, store: Store, queue: FolderQueue, workers: WorkersConfig, stats: Stats,
                 tally: Tally, faults: FaultSink) -> None:
        self.ledger = ledger
        self.store = store
        self.queue = queue
        self.workers = workers
        self.stats = stats
        self.tally = tally
        self.faults = faults
        self.flights = ledger.flights
        self.db_path = str(store.path)
        self.owed: list[tuple[str, Any]] = []  # state writes a fault held back, in order

    def reload(self, workers: WorkersConfig) -> None:
        self.workers = workers

    # -- the per-file error policy -----------------------------------------------------------

    def per_file(self, flight: Flight, what: str, fn: Callable[..., Any], *args: Any) -> tuple[Step, Any]:
        """Run one file's step. What goes wrong with it costs that file (an attempt, with
        the reason), never the loop; a fault of the machine costs nothing (HELD: the
        caller keeps the file where it is). Errors of the whole system still stop it."""
        try:
            return Step.DONE, fn(*args)
        except (SystemFailure, StateError, IllegalTransition, AssertionError):
            raise  # the system's, or a bug of ours: never a file's fault
        except Exception as exc:
            if self.held(exc):
                return Step.HELD, None
            if isinstance(exc, sqlite3.DatabaseError) or (isinstance(exc, OSError) and exc.errno in SYSTEM_ERRNOS):
                raise
            self._file_broke(flight, what, exc)
        return Step.CHARGED, None

    def held(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a fault of the machine (then it is said, and nothing charged)."""
        fault = fault_of(exc, self.db_path if isinstance(exc, sqlite3.DatabaseError) else "")
        if fault is not None:
            self.faults.hit(fault)
        return fault is not None

    def _file_broke(self, flight: Flight, what: str, exc: BaseException) -> None:
        name = flight.record.name
        log.error("%s: %s failed (%s: %s); it costs this file an attempt", shown(name), what,
                  type(exc).__name__, exc, exc_info=exc)
        if self.flights.by_id(flight.record.id) is not flight or flight.state is State.MOVING:
            return
        try:
            self.attempt_failed(flight, Failure(f"{what} failed: {type(exc).__name__}: {exc}", "error"))
        except (IllegalTransition, AssertionError):
            raise
        except Exception as again:  # the state itself refuses: it waits, claimed, for a later try
            log.error("%s: could not record the failed attempt either (%s)", shown(name), again)
            self.held(again)
            if self.flights.by_id(flight.record.id) is flight:
                self.ledger.park(flight, RECOVER_EVERY_S)

    def machines(self, flight: Flight, res: ItemResult) -> bool:
        """Whether a fault a worker met on this file is the machine's. A full disk, a
        quota, a read-only filesystem always are (the probe looks at our folders). No
        descriptors or no memory may be the worker's own doing on this file (a processor
        that leaks, a file that needs too much): met ``LOCAL_FAULTS_PER_FILE`` times in a
        row on one file, it is charged to the file like any failure."""
        if res.fault not in (DESCRIPTORS, MEMORY):
            return True
        if flight.faults + 1 < LOCAL_FAULTS_PER_FILE:
            self.flights.note(flight, faults=flight.faults + 1)
            return True
        self.flights.note(flight, faults=0)
        res.reason += f" (met {LOCAL_FAULTS_PER_FILE} times in a row on this file alone: charged to it)"
        return False

    # -- state writes that follow moves -------------------------------------------------------

    def write_state(self, what: str, rows: Any) -> None:
        """A state write that follows moves already made ("digests", "finished",
        "totals"): held back by a fault, it is written later, in order, never lost and
        never redone."""
        if rows:
            self.owed.append((what, rows))
            self.pay_owed()

    def pay_owed(self) -> None:
        writes: dict[str, Callable[[Any], None]] = {"digests": self.store.add_digests, "finished": self.store.finished,
                                                    "totals": self.store.add_totals}
        while self.owed:
            what, rows = self.owed[0]
            try:
                writes[what](rows)
            except Exception as exc:
                if not self.held(exc):
                    raise
                return
            self.owed.pop(0)

    # -- moves tried again -----------------------------------------------------------------------

    def cannot_move(self, flight: Flight, folder: str, exc: OSError, retry: tuple) -> None:
        """A claimed file that cannot be moved to ``folder`` now (a full disk, a
        permission changed...): it stays claimed where it is, MOVING; said once, tried
        again (``Commit.retry_moves``)."""
        if not self.held(exc) and flight.state is not State.MOVING:
            log.error("cannot move %s to %s/ (%s); it stays in underprocess/ and is tried again every %.0fs",
                      shown(flight.record.name), folder, exc.strerror or exc, RECOVER_EVERY_S)
        self.flights.to(flight, State.MOVING, move=(folder, retry))

    # -- attempts ----------------------------------------------------------------------------------

    def attempt_failed(self, flight: Flight, failure: Failure) -> None:
        """One attempt failed: the file waits out a backoff where it is (claimed, in
        underprocess/, so no new delivery of its name can be replaced by it), or, after
        its last attempt, goes to failed/."""
        record = flight.record
        w = self.workers
        attempts, delay = self.store.attempt_failed(
            record.id, failure.reason, lambda n: next_try_s(n, failure.permanent, w.max_attempts, w.retry_backoff))
        remove_staged(self.queue.output, str(record.id))
        self.stats.attempt_failed(shown(record.name), attempts, failure, delay is None, flight.pipeline)
        if delay is not None:
            self.ledger.park(flight, delay)
            self.tally.retried()
            self.write_state("totals", {"files_retried": 1})
            self.ledger.journal_event("retried", flight, attempt=attempts, retry_in=delay, **failure.fields())
            log.warning("attempt %d of %s failed (%s); retrying in %.1fs", attempts, shown(record.name),
                        failure.reason, delay)
            return
        self.finish_failed(flight, failure.given_up(attempts, w.max_attempts), dict(attempt=attempts,
                                                                                    **failure.fields()))

    def charge(self, flight: Flight, what: str, failure: Failure) -> None:
        """``attempt_failed`` as a file's step; a fault of the machine that keeps it from
        being recorded holds the file, to be sent out again once it clears (the failure,
        if it is one, comes again then)."""
        step, _ = self.per_file(flight, what, self.attempt_failed, flight, failure)
        if step is Step.HELD:
            self.ledger.hold([flight])
            remove_staged(self.queue.output, str(flight.record.id))

    def reject(self, flights: list[Flight], reason: str) -> None:
        """A symlink, a directory, a FIFO...: never opened, straight to failed/."""
        for flight in flights:
            self.charge(flight, "rejecting it", Failure(reason, "input", permanent=True))

    def finish_failed(self, flight: Flight, why: str, fields: dict[str, Any]) -> None:
        """After its last attempt: to failed/, with its reason beside it."""
        record, name = flight.record, flight.record.name
        try:
            self.flights.note(flight, final_name=self.queue.finish(name, record.final_name, "failed", reason=why,
                                                                   durable=self.workers.durable))
        except FileNotFoundError:
            self.ledger.journal_event("vanished", flight,
                                      reason=f"removed from underprocess/ by hand; it had failed: {why}")
            self.write_state("finished", [(record.id, "vanished")])
            self.ledger.forget(flight)
            return
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self.cannot_move(flight, "failed", exc, (why, fields))
            return
        self.tally.failed(flight.size)
        self.write_state("totals", {"files_failed": 1})
        self.write_state("finished", [(record.id, "failed")])
        self.ledger.journal_event("failed", flight, **fields, **_reason_field(flight))
        self.ledger.flush()  # as close to the move as possible
        log.warning("failed %s for good after %d attempt(s): %s", shown(name), fields["attempt"], fields["reason"])
        self.ledger.forget(flight)


def _reason_field(flight: Flight) -> dict[str, str]:
    """The reason file's name in the journal, where it is not simply <final>.reason."""
    final = flight.record.final_name
    derived = reason_name(final)
    return {} if derived == final + ".reason" else {"reason_file": shown(derived)}
