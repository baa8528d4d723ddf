"""The ledger: the book of the files this supervisor holds. It owns the table of
flights (``flights.py``: each claimed file and its state, changed there alone), the
state database's records of claims, requeues and recoveries, and the journal
(``input.log``) entries, written in batches. It decides nothing about a file's outcome
(``commit.py`` does) and moves files only to give them back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from workers.daemon.flights import Flight, Flights, State
from workers.daemon.types import FaultSink, Returned
from workers.faults import fault_of
from workers.names import output_name, reason_name, shown, strip_suffix
from workers.outputs import remove_staged
from workers.pipelines import Pipelines
from workers.queue import Candidate, FolderQueue, PutBack
from workers.store import Journal, Store
from workers.store import journal_entry as event_entry
from workers.worker import Job, JobItem

log = logging.getLogger("foldermill")


UNSTABLE_WAIT_MAX_S = 60.0  # the longest a file caught being written waits to be stable, each time


class Ledger:
    """Files in flight, their records and their journal (also the store's NameRules)."""

    def __init__(self, queue: FolderQueue, store: Store, journal: Journal, pipelines: Pipelines, owner: str,
                 incarnation: str, trace: bool, forgotten: Any, faults: FaultSink, settle_s: float) -> None:
        self.queue = queue
        self.faults = faults
        self.settle_s = settle_s
        self.store = store
        self.journal = journal
        self.pipelines = pipelines
        self.owner = owner  # as people see it
        self.incarnation = incarnation  # as the state database sees it: unique to this start
        self.trace = trace
        self.forgotten = forgotten  # called with a name that left our hands (the intake's readiness)
        self.flights = Flights()  # the one owner of every file in flight and its state
        self.events: list[dict[str, Any]] = []
        self.seq = 0  # the last job's number

    # -- what the intake reads (Records) -------------------------------------------------

    def in_flight(self, name: str) -> bool:
        return self.flights.named(name) is not None

    def backing_off(self) -> dict[tuple[str, int], float]:
        return self.store.waiting_until(time.time())

    def seen_before(self) -> set[tuple[str, int]]:
        return self.store.live()

    def names(self) -> set[str]:
        return self.flights.names()

    def ids(self) -> set[int]:
        return self.flights.ids()

    def count(self) -> int:
        return len(self.flights)

    def pending_bytes(self) -> int:
        return sum(f.size for f in self.flights)

    # -- claims in, jobs out -------------------------------------------------------------

    def replays(self) -> Store:
        """The state database, for a replay to mark its file (``workers/actions.py``)."""
        return self.store

    def admit(self, picked: list[Candidate], event: str) -> list[Flight]:
        """Claimed files into the state and the table of flights, journalled."""
        if not picked:
            return []
        records = self.store.claim(picked, self.incarnation, self)
        flights = []
        # A file claimed before keeps the reservations of then: checked at its dispatch.
        suffixes = frozenset(self.pipelines.side_outputs())
        for candidate, record in zip(picked, records, strict=True):
            flight = Flight(record, candidate.size, mtime_ns=candidate.mtime_ns,
                            suffixes=frozenset() if record.known else suffixes)
            self.flights.add(flight)
            self.journal_event(event, flight, attempt=record.attempts + 1, **self._derived_field(record.final_name))
            if record.replay_begins:  # both names: the earlier outputs stay under the old one
                self.journal_event("replayed", flight, previous=shown(record.replay_of))
            flights.append(flight)
        return flights

    def reserve_anew(self, flights: list[Flight]) -> None:
        """Before dispatch: a flight whose final name reserved fewer side outputs than
        the pipelines now write (a reload added one) reserves them, or gets a new final
        name if another file's outputs use them."""
        now = frozenset(self.pipelines.side_outputs())
        stale = [f for f in flights if not now <= f.suffixes and not f.record.committed]
        if not stale:
            return
        changed = self.store.reserve_anew([(f.record.id, f.record.name, f.record.final_name) for f in stale], self)
        for flight in stale:
            self.flights.note(flight, suffixes=now)
            new = changed.get(flight.record.id)
            if new is not None:
                before = flight.record.final_name
                self.flights.note(flight, final_name=new)
                self.journal_event("renamed", flight, previous=shown(before),
                                   reason="a name it would use now (the pipelines changed since it was "
                                   "claimed) is in use", **self._derived_field(new))
                log.warning("%s: final name %s is now %s (a name its outputs would use now is in use)",
                            shown(flight.record.name), shown(before), shown(new))
        if changed:
            self.flush()  # as close to the state's change as possible

    def take_pending(self, now: float) -> list[Flight]:
        """Flights to dispatch now, WAITING: those waiting for a job, then those whose
        backoff ended, then those that were being written and are stable now."""
        for flight in self.flights.in_state(State.BACKOFF):
            if flight.not_before <= now:
                self.flights.to(flight, State.WAITING)
        for flight in self.flights.in_state(State.UNSETTLED):
            try:
                seen = self.changed_since_claim(flight)
            except OSError:  # not looked at now (a fault of the machine): it waits on
                continue
            if seen is not None:  # still changing: its time starts again
                self.flights.to(flight, State.UNSETTLED, since=now, size=seen[0], mtime_ns=seen[1])
            elif now - flight.since >= flight.stable_s:
                self.flights.to(flight, State.WAITING)
        return self.flights.in_state(State.WAITING)

    # -- inputs still being written -----------------------------------------------------

    def changed_since_claim(self, flight: Flight) -> tuple[int, int] | None:
        """(size, mtime) of its input if they changed since it was claimed (it is still
        being written), else None (a file gone from underprocess/ too: its move says so)."""
        try:
            now = self.queue.stat_claimed(flight.record.name)
        except FileNotFoundError:
            return None
        return None if (now.size, now.mtime_ns) == (flight.size, flight.mtime_ns) else (now.size, now.mtime_ns)

    def unstable(self, flight: Flight, seen: tuple[int, int]) -> None:
        """Its input changed between its claim and its commit: it was still being
        written (a writer foldermill could not see, pausing longer than ``settle``).
        Nothing is committed and no attempt charged: it waits, claimed, until its size
        and mtime have been stable for twice as long as the last time (up to
        ``UNSTABLE_WAIT_MAX_S``), then is processed again."""
        name = flight.record.name
        caught = flight.caught + 1
        stable_s = max(self.settle_s, min(UNSTABLE_WAIT_MAX_S, self.settle_s * 2 ** caught))
        before = (flight.size, flight.mtime_ns)
        self.flights.to(flight, State.UNSETTLED, since=time.monotonic(), stable_s=stable_s, caught=caught,
                        size=seen[0], mtime_ns=seen[1])
        why = (f"it changed while it was processed (size {before[0]} -> {seen[0]} bytes): still being written; "
               f"nothing committed, no attempt charged; processed again once stable for {stable_s:g}s")
        self.journal_event("changed", flight, reason=why)
        log.warning("%s: %s", shown(name), why)

    def route(self, flight: Flight, pipeline: str) -> None:
        """The pipeline its name routes it to now (set at each dispatch)."""
        self.flights.note(flight, pipeline=pipeline)

    def assign(self, batch: list[Flight], pipeline: str) -> Job:
        """A new job for these flights."""
        self.seq += 1
        for f in batch:
            self.flights.to(f, State.DISPATCHED, seq=self.seq)
        return Job(self.seq, tuple(JobItem(f.record.id, f.record.name, f.record.final_name, f.size,
                                             bool(f.record.replay_of), f.pipeline) for f in batch),
                   pipeline)

    def hold(self, flights: list[Flight]) -> None:
        """No backend has room, or a fault of the machine: these wait for a dispatch."""
        for f in flights:
            self.flights.to(f, State.WAITING)

    def park(self, flight: Flight, delay_s: float) -> None:
        """A failed attempt: the file waits out its backoff, claimed."""
        self.flights.to(flight, State.BACKOFF, not_before=time.monotonic() + delay_s)

    def requeue(self, seq: int, items: tuple[JobItem, ...]) -> None:
        """Items of job ``seq``, which will not deliver: they go out again, at no cost
        (those whose result came in meanwhile are not its to give back)."""
        for it in items:
            flight = self.flights.dispatched(it.file_id, seq)
            if flight is not None:
                remove_staged(self.queue.output, str(it.file_id))
                self.flights.to(flight, State.WAITING)

    def requeue_returned(self, returned: Returned) -> None:
        """What a backend gave back, but for a culprit with its failure (the commit part charges it)."""
        culprit = returned.culprit if returned.failure is not None else None
        self.requeue(returned.seq, tuple(it for it in returned.items if it is not culprit))

    def forget(self, flight: Flight) -> None:
        """It left our hands: done, given back or gone."""
        if self.flights.drop(flight):
            self.forgotten(flight.record.name)

    # -- giving files back -----------------------------------------------------------------

    def return_flights(self, flights: list[Flight], why: str, committing: frozenset[int] = frozenset()) -> None:
        """Stopping: put these claimed files back in unprocessed/ (a parked one keeps the
        rest of its backoff). One whose name a new delivery took meanwhile stays in
        underprocess/: recovery (ours at the next start, or another supervisor's)
        adopts it; nothing replaces the new delivery. Those being ``committing`` (their
        ids) keep their staged outputs and that state: their next claim rolls forward."""
        ids, backoff = [], {}
        wall, mono = time.time(), time.monotonic()
        for flight in flights:
            name = flight.record.name
            if flight.record.id not in committing:
                remove_staged(self.queue.output, str(flight.record.id))
            outcome = self.queue.put_back(name)
            if outcome is PutBack.MOVED:
                self.journal_event("requeued", flight, reason=why)
            elif outcome is PutBack.TAKEN:
                self.journal_event("requeued", flight, reason=f"{why}; left in underprocess/: a new delivery of "
                                   "that name waits in unprocessed/ (recovered at the next start)")
            ids.append(flight.record.id)
            if flight.state is State.BACKOFF and flight.not_before > mono:
                backoff[flight.record.id] = wall + flight.not_before - mono
            self.forget(flight)
        self.store.requeued(ids, backoff)

    def return_all(self, why: str, committing: frozenset[int] = frozenset()) -> None:
        self.return_flights(list(self.flights), why, committing)

    def return_undispatched(self) -> None:
        """Stopping or paused: files waiting for a worker (or for their retry) go back."""
        waiting = self.flights.in_state(State.WAITING, State.BACKOFF, State.UNSETTLED)
        if waiting:
            self.return_flights(waiting, "supervisor stopping")

    # -- recovery ----------------------------------------------------------------------------

    def recovered(self, names: list[str]) -> None:
        """Dead owners' files the intake put back in unprocessed/."""
        if names:
            self.store.recovered(names)
            for name in names:
                self.events.append(event_entry("recovered", name, supervisor=self.owner,
                                               reason="its owner died; back to unprocessed/"))

    # -- the journal ---------------------------------------------------------------------------

    def journal_event(self, event: str, flight: Flight, **fields: Any) -> None:
        routed = {"pipeline": flight.pipeline} if flight.pipeline else {}
        self.events.append(event_entry(event, flight.record.name, final=shown(flight.record.final_name),
                                       size=flight.size, supervisor=self.owner, **routed, **fields))
        if self.trace:
            extra = " ".join(f"{k}={v!r}" for k, v in fields.items())
            log.info("%s %r %s", event, shown(flight.record.name), extra)

    def note(self, entry: dict[str, Any]) -> None:
        """A journal entry about no flight of ours (a retry requested)."""
        self.events.append(entry)

    def flush(self) -> None:
        """Write the journal entries so far. On a full disk the journal keeps them and
        writes them first next time; the fault pauses intake."""
        if not self.events and not self.journal.owes():
            return
        events, self.events = self.events, []
        try:
            self.journal.write(events)
        except OSError as exc:
            fault = fault_of(exc, str(self.journal.path))
            if fault is None:
                raise
            self.faults.hit(fault)

    # -- the store's NameRules (workers/store.py) --

    def reload(self, pipelines: Pipelines) -> None:
        self.pipelines = pipelines

    def taken(self, name: str) -> bool:
        return self.queue.taken(name, self.pipelines.side_outputs())

    def left_failed(self, final: str) -> None:
        self.queue.forget_reason(final)

    def derived(self, final: str) -> list[str]:
        """Every name a file with this final name will use, as "folder/name": reserved
        while it is live, so that no other file is given a colliding one."""
        return [f"processed/{final}", f"failed/{final}", f"failed/{reason_name(final)}",
                *(f"output/{output_name(final, s)}" for s in ("", *self.pipelines.side_outputs()))]

    def _derived_field(self, final: str) -> dict[str, Any]:
        """Side-output names that had to be shortened to fit, for the journal."""
        short = {s: shown(output_name(final, s)) for s in self.pipelines.side_outputs()
                 if output_name(final, s) != f"{strip_suffix(final)}.{s}"}
        return {"outputs_shortened": short} if short else {}
