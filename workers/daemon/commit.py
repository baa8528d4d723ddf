"""The commit part: what becomes of each file in flight. It owns the results waiting
for the next group commit and the files whose last move failed (tried again), and it
decides every outcome: outputs committed (one sync for a batch, the state marked
``committing`` before the renames, so that an owner's death from there on rolls the
file forward instead of redoing it), an attempt charged, a file moved to processed/ or
failed/, a duplicate by content.

Ordering on the commit path (``run``), which crash safety rests on: staged outputs
synced -> state ``committing`` -> outputs renamed into place -> output dir synced ->
input moved to processed/ -> journal written -> state ``processed``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.config import WorkersConfig
from workers.daemon.ledger import Ledger
from workers.daemon.types import RECOVER_EVERY_S, SYSTEM_ERRNOS, Delivery, Flight, Returned, Tally, transient
from workers.errors import SystemFailure
from workers.fs import fsync_dir, syncfs
from workers.names import reason_name, shown
from workers.outputs import remove_staged, rename_staged
from workers.queue import FolderQueue
from workers.state import Stats
from workers.store import StateError, Store
from workers.worker import ItemResult

log = logging.getLogger("foldermill")


class Commit:
    """Results to outcomes: group commit, roll-forward, attempts, moves, de-duplication."""

    def __init__(self, ledger: Ledger, store: Store, queue: FolderQueue, workers: WorkersConfig, stats: Stats,
                 tally: Tally) -> None:
        self.ledger = ledger
        self.store = store
        self.queue = queue
        self.workers = workers
        self.stats = stats
        self.tally = tally
        self.to_commit: list[tuple[Flight, ItemResult, int]] = []
        self.unmoved: dict[str, tuple[str, tuple]] = {}  # claimed files whose last move failed: retried

    def reload(self, workers: WorkersConfig) -> None:
        self.workers = workers

    def idle(self) -> bool:
        return not self.to_commit

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
            flight = self.ledger.current(res.file_id, delivery.seq)
            if flight is None:
                self.discard_staged(res)  # stale: its file was sent again meanwhile
            elif res.file_id in delivery.resend:
                log.warning("%s: a staged output of its job %d is missing: processing it again",
                            shown(flight.record.name), delivery.seq)
                self.discard_staged(res)
                self.ledger.hold([flight])
            else:
                self.per_file(flight, "handling its result", self._on_item, flight, res, delivery.pid)

    def _on_item(self, flight: Flight, res: ItemResult, pid: int) -> None:
        name = flight.record.name
        if res.ok:
            self.to_commit.append((flight, res, pid))
            for line_no, route in res.routes:
                self.stats.routes.appendleft({"file": shown(name), "line": line_no, "route": route})
                log.info("route %r line %d: %s", shown(name), line_no, " -> ".join(route))
        else:
            cause = "input" if res.permanent else "error"
            self.attempt_failed(flight, res.reason, res.permanent, pid, cause, res.error_node, res.error_line,
                                res.seconds)

    def settle(self, returned: Returned) -> None:
        """A backend gave files back: the culprit costs an attempt, the rest go out again."""
        if returned.culprit is not None:
            flight = self.ledger.current(returned.culprit.file_id, returned.seq)
            if flight is not None:
                self.attempt_failed(flight, returned.reason, False, returned.pid, returned.cause)
        self.ledger.requeue_returned(returned)

    def discard_staged(self, res: ItemResult) -> None:
        pending = {temp for _, r, _ in self.to_commit for temp, _ in r.staged}
        for temp, _ in res.staged:
            if temp not in pending:
                (self.queue.output / temp).unlink(missing_ok=True)

    def per_file(self, flight: Flight, what: str, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run one file's step: (True, what it returned), or (False, None) when it went
        wrong, which costs that file (an attempt, with the reason), never the loop.
        Errors of the whole system still stop it."""
        try:
            return True, fn(*args)
        except (SystemFailure, StateError):
            raise
        except sqlite3.DatabaseError as exc:
            if not transient(exc):
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
        if not self.ledger.in_flight(name) or name in self.unmoved:
            return
        try:
            self.attempt_failed(flight, f"{what} failed: {type(exc).__name__}: {exc}", False, 0, "error")
        except Exception as again:  # the state itself refuses: it waits, claimed, for a later try
            log.error("%s: could not record the failed attempt either (%s)", shown(name), again)
            self.ledger.park(flight, RECOVER_EVERY_S)

    # -- claims that need no processing --------------------------------------------------------

    def admitted(self, flights: list[Flight]) -> list[Flight]:
        """Flights just admitted, less those rolled forward: one that was being committed
        when its owner died is finished here instead of redone."""
        out = []
        for flight in flights:
            record = flight.record
            if record.committed:
                ok, rolled = self.per_file(flight, "rolling its commit forward", self._roll_forward, flight)
                if rolled or not ok:  # done, or it failed and cost the file an attempt
                    continue
            if record.known:  # an earlier execution's leftovers
                remove_staged(self.queue.output, str(record.id))
            out.append(flight)
        return out

    def reject(self, flights: list[Flight], reason: str) -> None:
        """A symlink, a directory, a FIFO...: never opened, straight to failed/."""
        for flight in flights:
            self.attempt_failed(flight, reason, True, 0, "input")

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
        status = self._move_committed(flight, ItemResult(flight.record.id, True, list(pairs)), 0)
        if status:
            self.store.finished([(flight.record.id, status)])
        log.info("%s: its outputs were committed before its owner died; moved to processed/ without redoing it",
                 shown(flight.record.name))
        return True

    # -- the group commit -------------------------------------------------------------------------

    def run(self) -> None:
        """Group commit: one sync for every output staged since the last step. Each
        file's outputs are renamed into place only once the state says it is being
        committed, so an owner that dies from here on is rolled forward, not redone."""
        batch, self.to_commit = self.to_commit, []
        if not batch:
            return
        durable = self.workers.durable
        out = self.queue.output
        find_duplicates(batch, self.store, self.queue.output)
        ready = []
        for flight, res, pid in batch:
            missing = [t for t, _ in res.staged if not os.path.lexists(out / t)]
            if missing:  # another execution removed it, or a person did: this attempt is void
                self.per_file(flight, "committing", self.attempt_failed, flight,
                              f"its staged output {missing[0]} disappeared before the commit", False, pid, "error")
            else:
                ready.append((flight, res, pid))
        if not ready:
            return
        if durable and not all(r.synced for _, r, _ in ready):
            syncfs(out)
        self.store.committing([(f.record.id, r.staged) for f, r, _ in ready if r.staged])
        ready = [item for item in ready if self.per_file(item[0], "committing its outputs", rename_staged, out,
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
        self.ledger.flush()  # as close to the moves as possible: a SIGKILL loses less
        if digests:
            self.store.add_digests(digests)
        self.store.finished(done)
        self.store.add_totals({"files_processed": len(done), "lines_processed": sum(r.lines_in for _, r, _ in ready)})

    def _move_committed(self, flight: Flight, res: ItemResult, pid: int) -> str:
        """The input of a committed file to processed/; its status ("processed", or
        "vanished" if someone removed it from underprocess/), or "" if it cannot be
        moved now: it stays claimed, and the move is tried again (retry_moves)."""
        name = flight.record.name
        outputs = [shown(final) for _, final in res.staged]
        try:
            flight.record = dataclasses.replace(flight.record, final_name=self.queue.finish(
                name, flight.record.final_name, "processed"))
        except FileNotFoundError:
            self.ledger.journal_event("vanished", flight, output=outputs,
                                      reason="it was removed from underprocess/ before it could be moved to "
                                      "processed/ (its outputs were committed)")
            log.warning("%s vanished from underprocess/ before it was moved; its outputs are committed", shown(name))
            self.ledger.forget(name)
            return "vanished"
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self._cannot_move(flight, "processed", exc, (res, pid))
            return ""
        self.unmoved.pop(name, None)
        self.ledger.forget(name)
        self.stats.processed(shown(name), res.lines_in, res.seconds, pid, time.time(), flight.pipeline)
        self.tally.processed(res.lines_in, flight.size)
        if res.duplicate_of:
            self.ledger.journal_event("duplicate", flight, worker=pid, of=res.duplicate_of,
                                      output=[res.duplicate_of], reason="its content was processed before")
        else:
            self.ledger.journal_event("processed", flight, worker=pid, seconds=round(res.seconds, 6),
                                      lines_in=res.lines_in, lines_out=res.lines_out, skipped=len(res.skipped),
                                      output=outputs)
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

    def retry_moves(self) -> None:
        """Moves that failed (a full disk...), tried again."""
        for name, (folder, retry) in list(self.unmoved.items()):
            flight = self.ledger.flight(name)
            if flight is None:
                self.unmoved.pop(name, None)
            elif folder == "processed":
                status = self._move_committed(flight, *retry)
                if status:
                    self.store.finished([(flight.record.id, status)])
            else:
                self._finish_failed(flight, *retry)

    # -- attempts ----------------------------------------------------------------------------------

    def attempt_failed(self, flight: Flight, reason: str, permanent: bool, worker: int, cause: str,
                       node: str = "", line: int | None = None, seconds: float | None = None) -> None:
        """One attempt failed: the file waits out a backoff where it is (claimed, in
        underprocess/, so no new delivery of its name can be replaced by it), or, after
        its last attempt, goes to failed/. ``seconds``: how long the attempt ran, when
        its worker said (the journal's timeline shows it)."""
        timing = {"seconds": round(seconds, 6)} if seconds is not None else {}
        record = flight.record
        w = self.workers
        attempts, final = self.store.attempt_failed(record.id, reason, w.max_attempts, w.retry_backoff, permanent)
        remove_staged(self.queue.output, str(record.id))
        name = record.name
        self.stats.attempt_failed(shown(name), attempts, reason, cause, final, worker, node, line,
                                  pipeline=flight.pipeline)
        if not final:
            delay = w.retry_backoff * 2 ** (attempts - 1)
            self.ledger.park(flight, delay)
            self.tally.retried()
            self.store.add_totals({"files_retried": 1})
            self.ledger.journal_event("retried", flight, attempt=attempts, worker=worker, cause=cause, reason=reason,
                                      node=node, line=line, retry_in=delay, **timing)
            log.warning("attempt %d of %s failed (%s); retrying in %.1fs", attempts, shown(name), reason, delay)
            return
        why = reason if permanent else f"{reason} (attempt {attempts} of {w.max_attempts}; giving up)"
        self._finish_failed(flight, why, dict(attempt=attempts, worker=worker, cause=cause, reason=reason,
                                              node=node, line=line, **timing))

    def _finish_failed(self, flight: Flight, why: str, fields: dict[str, Any]) -> None:
        """After its last attempt: to failed/, with its reason beside it."""
        record, name = flight.record, flight.record.name
        try:
            flight.record = dataclasses.replace(record, final_name=self.queue.finish(
                name, record.final_name, "failed", reason=why))
        except FileNotFoundError:
            self.ledger.journal_event("vanished", flight,
                                      reason=f"removed from underprocess/ by hand; it had failed: {why}")
            self.store.finished([(record.id, "vanished")])
            self.ledger.forget(name)
            return
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self._cannot_move(flight, "failed", exc, (why, fields))
            return
        self.unmoved.pop(name, None)
        self.tally.failed(flight.size)
        self.store.add_totals({"files_failed": 1})
        self.store.finished([(record.id, "failed")])
        self.ledger.journal_event("failed", flight, **fields, **_reason_field(flight))
        self.ledger.flush()  # as close to the move as possible
        log.warning("failed %s for good after %d attempt(s): %s", shown(name), fields["attempt"], fields["reason"])
        self.ledger.forget(name)


def find_duplicates(batch: list[tuple[Flight, ItemResult, int]], store: Store, out: Path) -> None:
    """With dedupe on: a file whose content another file committed first (since its
    worker looked, or earlier in this batch) becomes a duplicate; its outputs go."""
    seen: dict[str, str] = {}
    for flight, res, _ in batch:
        if not res.digest or res.duplicate_of or flight.record.replay_of:
            continue
        earlier = seen.get(res.digest) or store.digest_owner(res.digest)
        if earlier:
            for temp, _ in res.staged:
                (out / temp).unlink(missing_ok=True)
            res.staged, res.duplicate_of = [], earlier
        else:
            seen[res.digest] = shown(flight.record.final_name)


def _reason_field(flight: Flight) -> dict[str, str]:
    """The reason file's name in the journal, where it is not simply <final>.reason."""
    final = flight.record.final_name
    derived = reason_name(final)
    return {} if derived == final + ".reason" else {"reason_file": shown(derived)}
