"""The commit part: what becomes of each file in flight. It owns the results waiting
for the next group commit and the files between their ``committing`` mark and their
renames; it decides every outcome: outputs committed, a duplicate by content, an input
that was still being written (never committed: it waits until it is stable), and,
through ``outcomes.py``, an attempt charged or a file moved to failed/.

Ordering on the commit path (``run``), which crash and power-cut safety rest on:
staged outputs synced, and with them the state database's record of each claim (its
final name) -> state ``committing`` -> outputs renamed into place -> output dir synced
-> input moved to processed/ -> journal written -> state ``processed``. A claim's
record reaches the disk before any output takes its final name, so after a power cut
a file whose outputs are in place is always known, and is never given a second name.

A fault of the machine (a full disk, a busy database...) on this path charges no
file: what was in progress stays at its step, and goes on from there once it clears.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

from workers.config import WorkersConfig
from workers.daemon.flights import Flight, State
from workers.daemon.ledger import Ledger
from workers.daemon.outcomes import Outcomes, Step
from workers.daemon.types import SYSTEM_ERRNOS, Delivery, FaultSink, Returned, Tally
from workers.failure import Failure
from workers.faults import Fault
from workers.fs import fsync_dir, syncfs
from workers.names import shown
from workers.outputs import remove_staged, rename_staged
from workers.queue import FolderQueue
from workers.state import Stats
from workers.store import Store
from workers.worker import ItemResult

log = logging.getLogger("foldermill")


class Commit:
    """Results to outcomes: group commit, roll-forward, attempts, moves, de-duplication."""

    def __init__(self, ledger: Ledger, store: Store, queue: FolderQueue, workers: WorkersConfig, stats: Stats,
                 tally: Tally, faults: FaultSink) -> None:
        self.ledger = ledger
        self.store = store
        self.queue = queue
        self.workers = workers
        self.stats = stats
        self.tally = tally
        self.faults = faults
        self.outcomes = Outcomes(ledger, store, queue, workers, stats, tally, faults)
        self.per_file, self.held = self.outcomes.per_file, self.outcomes.held
        self.flights = ledger.flights  # STAGED, COMMITTING, ROLLING and MOVING are this part's to move on
        self.db_apart = _device(store.path.parent) != _device(queue.output)  # syncfs(output/) does not cover it

    def reload(self, workers: WorkersConfig) -> None:
        self.workers = workers
        self.outcomes.reload(workers)

    def idle(self) -> bool:
        return not self.flights.any_in(State.STAGED, State.COMMITTING)

    def committing(self) -> frozenset[int]:
        """Files whose state says committing (a fault stopped them on the way): a stop
        leaves them so, with their staged outputs, for their next claim to roll forward."""
        moving = {f.record.id for f in self.flights.in_state(State.MOVING) if f.move and f.move[0] == "processed"}
        return frozenset({f.record.id for f in self.flights.in_state(State.COMMITTING, State.ROLLING)} | moving)

    # -- results ---------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """A job's result: each item still waited for is queued for the commit or
        charged; what nobody will commit has its staged files removed."""
        if not delivery.accepted:
            for res in delivery.items:
                self.discard_staged(res)
            return
        self.stats.merge_nodes(delivery.nodes)
        for res in delivery.items:
            flight = self.flights.dispatched(res.file_id, delivery.seq)
            if flight is None:
                self.discard_staged(res)  # stale: its file was sent again meanwhile
            elif res.file_id in delivery.resend:
                log.warning("%s: a staged output of its job %d is missing: processing it again",
                            shown(flight.record.name), delivery.seq)
                self.discard_staged(res)
                self.ledger.hold([flight])
            elif res.fault and self.outcomes.machines(flight, res):  # no attempt: it goes out again once it clears
                self.faults.hit(Fault(res.fault, res.fault_path, res.reason))
                self._hold(flight, res)
            else:
                step, _ = self.per_file(flight, "handling its result", self._on_item, flight, res, delivery.pid)
                if step is Step.HELD:
                    self._hold(flight, res)

    def _hold(self, flight: Flight, res: ItemResult) -> None:
        """Back to wait for a dispatch (first: the cleanup may meet the fault itself)."""
        self.ledger.hold([flight])
        with contextlib.suppress(OSError):
            self.discard_staged(res)
        remove_staged(self.queue.output, str(flight.record.id))

    def _on_item(self, flight: Flight, res: ItemResult, pid: int) -> None:
        name = flight.record.name
        self.flights.note(flight, faults=0)  # a result of its own: the faults in a row are over
        if res.ok:
            self.flights.to(flight, State.STAGED, result=res, pid=pid)
            for line_no, route in res.routes:
                self.stats.route_traced(shown(name), line_no, route)
                log.info("route %r line %d: %s", shown(name), line_no, " -> ".join(route))
        else:
            self.outcomes.attempt_failed(flight, Failure(res.reason, "input" if res.permanent else "error",
                                                         res.permanent, pid, res.error_node, res.error_line,
                                                         res.seconds))

    def settle(self, returned: Returned) -> None:
        """A backend gave files back: the culprit costs an attempt, the rest go out again."""
        if returned.culprit is not None and returned.failure is not None:
            flight = self.flights.dispatched(returned.culprit.file_id, returned.seq)
            if flight is not None:
                self.outcomes.charge(flight, "recording its failed attempt", returned.failure)
        self.ledger.requeue_returned(returned)

    def discard_staged(self, res: ItemResult) -> None:
        pending = {temp for f in self.flights.in_state(State.STAGED, State.COMMITTING) if f.result is not None
                   for temp, _ in f.result.staged}
        for temp, _ in res.staged:
            if temp not in pending:
                (self.queue.output / temp).unlink(missing_ok=True)

    # -- claims that need no processing --------------------------------------------------------

    def admitted(self, flights: list[Flight]) -> list[Flight]:
        """Flights just admitted, less those rolled forward: one that was being committed
        when its owner died is finished here instead of redone."""
        out = []
        for flight in flights:
            record = flight.record
            if record.committed:
                step, rolled = self.per_file(flight, "rolling its commit forward", self._roll_forward, flight)
                if step is Step.HELD:  # a fault of the machine: rolled forward once it clears, not redone
                    self.flights.to(flight, State.ROLLING)
                if rolled or step is not Step.DONE:  # done, held, or it failed and cost the file an attempt
                    continue
            out.append(flight)
            if record.known:  # an earlier execution's leftovers
                remove_staged(self.queue.output, str(record.id))
        return out

    def _roll_forward(self, flight: Flight) -> bool:
        """Its outputs were committed (or were being renamed into place) when its owner
        died: finish the renames and move it to processed/, without processing it again.
        False if an output is gone altogether: then it is processed again."""
        out = self.queue.output
        pairs = flight.record.committed
        if any(not os.path.lexists(out / t) and not os.path.lexists(out / f) for t, f in pairs):
            return False
        rename_staged(out, list(pairs), self.workers.durable)
        status = self._move_committed(flight, ItemResult(flight.record.id, True, list(pairs)), 0)
        if status:
            self.outcomes.write_state("finished", [(flight.record.id, status)])
        log.info("%s: its outputs were committed before its owner died; moved to processed/ without redoing it",
                 shown(flight.record.name))
        return True

    # -- the group commit -------------------------------------------------------------------------

    def run(self) -> None:
        """Group commit: one sync for every output staged since the last step, and the
        state's records of their claims with it. Each file's outputs are renamed into
        place only once the state says it is being committed, so an owner that dies from
        here on is rolled forward, not redone."""
        self.outcomes.pay_owed()
        rolling = self.flights.in_state(State.ROLLING)
        if rolling:
            self.ledger.hold(self.admitted(rolling))  # back: an output was gone, it is processed again
        batch = self.flights.in_state(State.STAGED)
        if batch:
            self._mark(batch)
        if self.flights.any_in(State.COMMITTING):
            self._rename_marked()

    def _mark(self, batch: list[Flight]) -> None:
        """Staged -> committing: made durable, then files whose staged outputs vanished or
        whose input changed since its claim set aside (looked at after the sync, the
        slowest step: as late as can be), duplicates found among the rest, and those
        marked. A fault of the machine: what is left waits, unchanged."""
        try:
            self._make_durable(batch)
        except Exception as exc:
            if not self.held(exc):
                raise
            return  # they stay STAGED
        ready = [flight for flight in batch if self._still_ready(flight, _result(flight), flight.pid)]
        try:
            find_duplicates(ready, self.store, self.queue.output)
            self.store.committing([(f.record.id, _result(f).staged) for f in ready if _result(f).staged])
        except Exception as exc:
            if not self.held(exc):
                raise
            return
        for flight in ready:
            self.flights.to(flight, State.COMMITTING)

    def _still_ready(self, flight: Flight, res: ItemResult, pid: int) -> bool:
        """Its staged outputs are all there, and its input is as it was claimed: one
        whose size or mtime changed since was still being written, and is never
        committed (it waits, claimed, until it is stable; no attempt)."""
        out = f"{self.queue.output}/"
        missing = [t for t, _ in res.staged if not os.path.lexists(out + t)]
        if missing:  # another execution removed it, or a person did: this attempt is void
            self.outcomes.charge(flight, "committing", Failure(
                f"its staged output {missing[0]} disappeared before the commit", "error", worker=pid))
            return False
        try:
            now = self.ledger.changed_since_claim(flight)
        except OSError as exc:  # not looked at (a fault of the machine): it waits, and is done again
            if not self.held(exc):
                raise
            self._hold(flight, res)
            return False
        if now is None:
            return True
        self.ledger.unstable(flight, now)  # first: its staged outputs are then no longer awaited
        with contextlib.suppress(OSError):
            self.discard_staged(res)
        self.stats.input_changed()
        return False

    def _make_durable(self, ready: list[Flight]) -> None:
        """Staged outputs and the claims' records on disk before any rename (durable)."""
        if not self.workers.durable or not ready:
            return
        if not all(_result(f).synced for f in ready):
            syncfs(self.queue.output)  # the staged outputs, and the state's WAL on the same disk
            if not self.db_apart:
                return
        self.store.sync()

    def _rename_marked(self) -> None:
        """Committing -> outputs in place -> input in processed/. A fault stops it where
        it is; the renames are idempotent, so the next try goes on from there."""
        out, renamed, into = self.queue.output, [], set[str]()
        for flight in self.flights.in_state(State.COMMITTING):
            step, dirs = self.per_file(flight, "committing its outputs", rename_staged, out, _result(flight).staged,
                                       False, self.workers.durable)
            if step is Step.HELD:  # it and those after it stay COMMITTING
                break
            if step is Step.DONE:
                renamed.append((flight, _result(flight), flight.pid))
                into |= dirs
        if self.workers.durable and renamed:
            try:
                if len(into) > 1:  # outputs in several directories (recursive): one sync for all
                    syncfs(out)
                else:
                    parent = next(iter(into), "")
                    fsync_dir(f"{out}/{parent}" if parent else out)
            except OSError as exc:
                if not self.held(exc):
                    raise
                return  # they stay COMMITTING: renames are idempotent
        self._move_all(renamed)

    def _move_all(self, renamed: list[tuple[Flight, ItemResult, int]]) -> None:
        done, digests = [], []
        for flight, res, pid in renamed:
            status = self._move_committed(flight, res, pid)
            if status:
                done.append((flight.record.id, status))
            if status == "processed" and res.digest and not res.duplicate_of:
                digests.append((res.digest, flight.record.final_name, flight.record.id))
        self.ledger.flush()  # as close to the moves as possible: a SIGKILL loses less
        self.outcomes.write_state("digests", digests)
        self.outcomes.write_state("finished", done)
        lines = sum(r.lines_in for _, r, _ in renamed)
        self.outcomes.write_state("totals", {"files_processed": len(done), "lines_processed": lines})

    def _move_committed(self, flight: Flight, res: ItemResult, pid: int) -> str:
        """The input of a committed file to processed/; its status ("processed", or
        "vanished" if someone removed it from underprocess/), or "" if it cannot be
        moved now: it stays claimed, and the move is tried again (retry_moves)."""
        name = flight.record.name
        outputs = [shown(final) for _, final in res.staged]
        try:
            self.flights.note(flight, final_name=self.queue.finish(name, flight.record.final_name, "processed"))
        except FileNotFoundError:
            self.ledger.journal_event("vanished", flight, output=outputs,
                                      reason="it was removed from underprocess/ before it could be moved to "
                                      "processed/ (its outputs were committed)")
            log.warning("%s vanished from underprocess/ before it was moved; its outputs are committed", shown(name))
            self.ledger.forget(flight)
            return "vanished"
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self.outcomes.cannot_move(flight, "processed", exc, (res, pid))
            return ""
        self.ledger.forget(flight)
        self.stats.processed(shown(name), res.lines_in, res.seconds, pid, time.time(), flight.pipeline)
        self.tally.processed(res.lines_in, flight.size)
        if res.duplicate_of:
            self.ledger.journal_event("duplicate", flight, worker=pid, of=res.duplicate_of,
                                      output=[res.duplicate_of], reason="its content was processed before")
        else:
            self.ledger.journal_event("processed", flight, worker=pid, seconds=round(res.seconds, 6),
                                      lines_in=res.lines_in, lines_out=res.lines_out, skipped=res.skipped_count,
                                      output=outputs)
        return "processed"

    def retry_moves(self) -> None:
        """Moves that failed (a full disk...), tried again."""
        for flight in self.flights.in_state(State.MOVING):
            if flight.move is None:
                continue
            folder, retry = flight.move
            if folder == "processed":
                status = self._move_committed(flight, *retry)
                if status:
                    self.outcomes.write_state("finished", [(flight.record.id, status)])
            else:
                self.outcomes.finish_failed(flight, *retry)

    # -- what the loop asks of attempts -------------------------------------------------------

    def reject(self, flights: list[Flight], reason: str) -> None:
        self.outcomes.reject(flights, reason)


def find_duplicates(batch: list[Flight], store: Store, out: Any) -> None:
    """With dedupe on: a file whose content another file committed first (since its
    worker looked, or earlier in this batch) becomes a duplicate; its outputs go. A
    file is never a duplicate of itself (its digest kept from a commit a crash cut
    short)."""
    seen: dict[str, str] = {}
    for flight in batch:
        res = _result(flight)
        if not res.digest or res.duplicate_of or flight.record.replay_of:
            continue
        earlier = seen.get(res.digest) or store.digest_owner(res.digest, flight.record.id)
        if earlier:
            for temp, _ in res.staged:
                (out / temp).unlink(missing_ok=True)
            res.staged, res.duplicate_of = [], earlier
        else:
            seen[res.digest] = shown(flight.record.final_name)


def _result(flight: Flight) -> ItemResult:
    """The result a STAGED or COMMITTING flight carries."""
    assert flight.result is not None, f"{flight.record.name!r} is {flight.state.value} without a result"
    return flight.result


def _device(path: Any) -> int:
    try:
        return os.stat(path).st_dev
    except OSError:
        return -1
