"""The intake: what comes into the daemon. It owns the backlog of ``unprocessed/`` in
claim order (``workers/daemon/backlog.py``: a bounded window of the oldest files, kept
from file events and passes over the folder), which of its files are ready
(``workers/readiness.py``, asked only of the files about to be claimed), claims (a lock
and a rename, ``workers/queue.py``), rejects of what is not a regular file, recovery of
dead owners' files, and the folder counts (``workers/daemon/census.py``). It records
nothing: what it claimed goes to the ledger.
"""

from __future__ import annotations

import logging
import time

from workers.actions import SOURCE, Done, Replays, perform
from workers.daemon.arrivals import Arrivals
from workers.daemon.backlog import WINDOW, Backlog
from workers.daemon.census import COST_SHARE, Census
from workers.daemon.claimer import Claimer, Facts
from workers.daemon.events import EventSink, Fence, Watching
from workers.daemon.types import Claims, Records, not_regular
from workers.faults import fault_of
from workers.queue import Candidate, FolderQueue
from workers.readiness import Readiness, WriterWatch

log = logging.getLogger("foldermill")

DUE_SHARE = 5.0  # a pass asked for (events lost, a wake) takes at most 1/5 of the time


class Intake:
    """The backlog, readiness, claims, rejects, recovery and counts of one watch dir."""

    def __init__(self, queue: FolderQueue, settle_s: float, poll_interval_s: float, once: bool,
                 window: int = WINDOW) -> None:
        self.queue = queue
        self.readiness = Readiness(settle_s)
        self.poll_interval_s = poll_interval_s
        self.once = once
        self.backlog = Backlog(window)
        self.census = Census(queue)
        self.claimer = Claimer(queue)
        self.next_look = float("inf")  # monotonic: when a parked file may be ready
        self.pass_due = True  # a pass over the folder is wanted (start, overflow, a wake)
        self.last_pass = float("-inf")
        self.claimed_since_pass = 0
        self.once_idle = False  # --once: nothing left to do
        self.writers = WriterWatch(str(queue.unprocessed))
        self.fence = Fence(queue.unprocessed)
        self.events = Watching(queue.unprocessed, queue.enters if queue.recursive else None)
        self.looking = False  # this round met a file that waits for the next look at /proc
        self.last_tidy = 0.0
        self.arrivals = Arrivals(queue, self.backlog, self.readiness, self.writers, self.fence, self.events_lost,
                                 self.events.cover)

    # -- what came in ------------------------------------------------------------------

    def watch(self, sink: EventSink) -> None:
        """File events come through ``sink`` (``FileEvents`` messages)."""
        self.events.start(sink)
        self.writers.trusted = self.events.active()

    def events_lost(self, why: str = "inotify queue overflow") -> None:
        """Events were lost (an overflow, one that could not be noted): a pass soon."""
        log.warning("file events were lost (%s): looking at the whole of unprocessed/; "
                    "files open then are judged by /proc and settle alone", why)
        self.readiness.events_lost()
        self.writers.events_lost()
        self.pass_due = True

    def release_descriptors(self) -> None:
        """No descriptors left: those kept open between claims go first."""
        self.queue.close_kept()

    def stop(self) -> None:
        self.events.stop()

    def note_event(self, kind: str, name: str) -> None:
        """A file event (``workers/daemon/arrivals.py``)."""
        self.arrivals.note(kind, name)

    def tidy(self, now: float, after_s: float) -> None:
        """Directories the queue emptied, removed once they stayed empty ``after_s``."""
        if self.queue.emptied and now - self.last_tidy >= 1.0:
            self.last_tidy = now
            self.queue.remove_empty(now, after_s)

    def events_problem(self) -> str:
        """Why some files are found by passes alone ("" if file events tell of all)."""
        return self.events.problem()

    def wake(self) -> None:
        """Something changed that events may not tell (a resume, a retry): look again."""
        self.backlog.unpark()
        self.pass_due = True

    def forget(self, name: str) -> None:
        """A file left our hands: a new delivery of its name is seen afresh."""
        self.readiness.forget(name)
        self.backlog.unpark([name])

    def check_folders(self) -> None:
        self.queue.check_folders()

    def seconds_to_next_scan(self, now: float) -> float:
        every = max(self.poll_interval_s, COST_SHARE * self.backlog.pass_cost)
        return min(self.last_pass + every, self.next_look) - now

    def counts(self) -> dict[str, int]:
        return self.census.counts(time.monotonic(), self.backlog.total)

    def oldest_waiting_mtime(self) -> float | None:
        oldest = self.backlog.oldest_mtime_ns()
        return oldest / 1e9 if oldest is not None else None

    def backlog_size(self) -> tuple[int, int]:
        """Files waiting in unprocessed/, and their bytes."""
        return self.backlog.total, self.backlog.total_bytes

    # -- claims --------------------------------------------------------------------------

    def claim(self, now: float, limit: int, records: Records, no_flights: bool, settled: bool) -> Claims:
        """Up to ``limit`` ready files, oldest first, claimed (locks held, in
        underprocess/); what is not a regular file is claimed to be rejected."""
        backlog = self.backlog
        # --once also passes over the folder as soon as it runs dry, to see that it is done.
        dry = self.once and no_flights and backlog.peek() is None
        claims = Claims()
        eligible = 0
        try:
            eligible = self._claim_round(now, limit, records, dry, claims)
        except Exception as exc:  # a fault of the machine stops the round: what it claimed is kept
            claims.fault = fault_of(exc)
            if claims.fault is None:
                raise
        wait = self.readiness.next_check_in(now)
        if wait is not None:
            self.next_look = min(self.next_look, now + wait)
        self.once_idle = (self.once and dry and backlog.complete and not eligible and settled
                          and not claims.files and not claims.rejects)
        return claims

    def _claim_round(self, now: float, limit: int, records: Records, dry: bool, claims: Claims) -> int:
        """Judge and claim into ``claims``; how many parked files will be ready by themselves."""
        backlog = self.backlog
        passed = self._pass_wanted(now, dry)
        if passed:
            self._pass(now)
        elif now >= self.next_look:
            self.next_look = float("inf")
            backlog.unpark(timed_only=True)
        eligible = 0
        facts: Facts | None = None
        self.looking = False  # a file waits for the next look at /proc: the round claims nothing after it
        while len(claims.files) < limit and not self.looking:  # rejects cost no room
            if facts is None and backlog.peek() is not None:  # asked before anything is taken
                facts = Facts(records, self.queue.ready_marker != "")
            picked = self._pick(limit - len(claims.files))
            if not picked:
                if passed or not self._pass_wanted(now, False):
                    break
                self._pass(now)  # the window ran dry on the way: refill it, once a round
                passed = True
                continue
            assert facts is not None
            eligible += self._judge(picked, claims, facts, now)
        return eligible

    def _pass_wanted(self, now: float, dry: bool) -> bool:
        """A pass over the folder: at start; to refill a window that ran dry after claims;
        when events were lost or a wake asks (at most ``1 / DUE_SHARE`` of the time);
        and every ``poll_interval`` as the safety net (at most ``1 / COST_SHARE`` of the
        time, so at a million files waiting, one every few minutes)."""
        backlog, since = self.backlog, now - self.last_pass
        if dry or (self.pass_due and since >= DUE_SHARE * backlog.pass_cost):
            return True
        if not backlog.complete and backlog.peek() is None and self.claimed_since_pass > 0:
            return True
        return since >= max(self.poll_interval_s, COST_SHARE * backlog.pass_cost)

    def refresh(self, now: float) -> None:
        """Paused or stopping: no claims, but the counts stay right (the periodic pass)."""
        if now - self.last_pass >= max(self.poll_interval_s, COST_SHARE * self.backlog.pass_cost):
            self._pass(now)

    def _pass(self, now: float) -> None:
        """One streaming pass over unprocessed/: the window, the count, made exact.
        Parked files take none of the window's room; the timed ones are looked at again,
        and the others too when events may have been lost (or none come at all)."""
        if self.events.renew():  # a watch that ended, or never began, set up again: what it missed
            self.events_lost("the folder's watch ended, and a new one began")
        self.writers.trusted = self.events.active()
        everything = self.pass_due or not self.events.active()
        self.pass_due = False
        self.last_pass = now
        self.claimed_since_pass = 0
        if len(self.arrivals.claimed_out) > self.backlog.window:  # no events come (no inotify here)
            self.arrivals.claimed_out.clear()
        fence = self.fence.put() if self.events.active() else ""
        self.next_look = float("inf")
        self.backlog.refill(self.queue.waiting(entering=self.events.cover))
        self.fence.raised(fence)  # events count again once the fence's own event comes
        self.backlog.unpark(timed_only=not everything)  # looked at again, in their turn
        self.readiness.bound(self.backlog.window)
        if not self.backlog.complete and self.backlog.pass_cost > 1.0:
            log.info("%d files wait in unprocessed/; a pass over them took %.1fs, the %d oldest are in claim order",
                     self.backlog.total, self.backlog.pass_cost, len(self.backlog))

    def _pick(self, count: int) -> list[Candidate]:
        """The next ``count`` files of the window in order, as they are now (lstat)."""
        backlog, picked = self.backlog, list[Candidate]()
        while len(picked) < count and (key := backlog.take()) is not None:
            mtime_ns, name = key
            seen = self.queue.look(name)
            if seen is None:
                continue  # gone meanwhile (its event says so)
            if seen.mtime_ns != mtime_ns:  # written since: its turn moved
                if backlog.admits(seen.mtime_ns, name):
                    backlog.put(name, seen.mtime_ns)
                else:
                    self.readiness.forget(name)  # beyond the horizon: a later pass finds it
                continue
            picked.append(seen)
        return picked

    def _judge(self, picked: list[Candidate], claims: Claims, facts: Facts, now: float) -> int:
        """Claim what is ready among ``picked``; park the rest. Returns how many parked
        files will be ready by themselves (settling, backing off, or a claim that failed
        now and may not later). Whatever goes wrong, no picked file is left out."""
        backlog, queue = self.backlog, self.queue
        eligible = 0
        done = 0
        try:
            writing, unseen = self.writers.of(picked, now)
            for c in picked:
                if unseen and (c.name in unseen or self.looking):  # after the last look at /proc: at the next
                    backlog.park(c.name, c.mtime_ns, timed=True)
                    eligible += 1
                    self.looking = True
                    self.next_look = min(self.next_look, self.writers.next_look())
                elif facts.records.in_flight(c.name):  # a new delivery of a name in flight: when it is done
                    backlog.park(c.name, c.mtime_ns)
                elif (c.name, c.ino) in facts.backing_off:
                    backlog.park(c.name, c.mtime_ns, timed=True)
                    eligible += 1
                    until = facts.backing_off[c.name, c.ino] - time.time()
                    self.next_look = min(self.next_look, now + max(0.0, until))
                elif (queue.ready_marker and c.is_regular and (c.name, c.ino) not in facts.seen_before
                        and not queue.has_marker(c.name)):
                    backlog.park(c.name, c.mtime_ns)  # until its marker comes
                elif not c.is_regular or self.readiness.ready(c, writing, now):
                    if not self._claim_one(c):  # taken by another claimer, stranded, refused: later
                        self.readiness.forget(c.name)
                        backlog.park(c.name, c.mtime_ns, timed=True)
                        self.next_look = min(self.next_look, now + self.poll_interval_s)
                        eligible += 1
                    elif c.is_regular:
                        claims.files.append(c)
                    else:
                        claims.rejects.append((c, not_regular(c)))
                elif self.readiness.is_open(c.name):  # open (inotify): looked at again when it is closed
                    backlog.park(c.name, c.mtime_ns, timed=True)  # (or its count has gone stale)
                else:  # being written (/proc), or settling: looked at again when its time comes
                    backlog.park(c.name, c.mtime_ns, timed=True)
                    if c.name in writing:
                        self.next_look = min(self.next_look, now + self.poll_interval_s)
                    else:
                        eligible += 1
                done += 1
        except BaseException:
            for c in picked[done:]:
                backlog.put(c.name, c.mtime_ns)
            raise
        return eligible

    def give_back(self, picked: list[Candidate], exc: Exception | None) -> None:
        self.claimer.give_back(picked, exc)

    def _claim_one(self, candidate: Candidate) -> bool:
        claimed = self.claimer.claim(candidate.name)
        if claimed:
            self.backlog.departed(candidate.size)
            self.arrivals.claimed_out.add(candidate.name)
            self.claimed_since_pass += 1
            self.readiness.forget(candidate.name)
        return claimed

    # -- recovery and retries ----------------------------------------------------------

    def act(self, action: str, name: str, replays: Replays) -> Done:
        """An operator's action on a file (``workers/actions.py``); the counts follow it."""
        done = perform(self.queue, action, name, replays)
        if not done.problem:
            self.queue.moved_by_hand(SOURCE[action])
            self.queue.left(SOURCE[action], name)  # failed/acme/ or processed/acme/ may be empty now
            self.pass_due = True
        return done
