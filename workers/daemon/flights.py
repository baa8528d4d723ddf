"""A file in flight and its one owner: the table of flights, where every change of a
flight's state happens. A flight is a file we claimed (in ``underprocess/``, its lock
held by us) until it leaves our hands: moved to ``processed/`` or ``failed/``, given
back to ``unprocessed/``, or gone. The other parts ask the table which flights are in
which state, decide what becomes of them (``ledger.py``, ``commit.py``,
``outcomes.py``), and ask it for the transition; a transition the diagram below does
not have is a bug, and raises.

::

    claimed --> WAITING --assign--> DISPATCHED --result--> STAGED --mark--> COMMITTING
                 ^   ^                 |   |                 |  |              |
                 |   +---requeue/hold--+   +--failed--+      |  +-changed-> UNSETTLED
                 |   |                                v      |                 |
                 |   +--due------------------------ BACKOFF <+--charged        |
                 |   +--stable-----------------------------------------------+
                 |
                 +-- ROLLING (a roll-forward a fault held back) --rolled--> MOVING / done

    COMMITTING --renamed, moved--> done     COMMITTING/ROLLING/BACKOFF... --move failed--> MOVING
    MOVING --moved--> done                  any state --given back / vanished--> done

``done`` is leaving the table (``Flights.drop``). The state lives in ``Flight.state``;
each state's data (the job's number, the end of a backoff, the result to commit, the
move to try again...) lives beside it and is set by the same transition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from workers.store import FileRecord
from workers.worker import ItemResult


class State(Enum):
    """Where a file in flight is, and what it waits for."""

    WAITING = "waiting"  # claimed, waiting for a job
    DISPATCHED = "dispatched"  # in job ``Flight.seq``: its result is awaited
    BACKOFF = "backoff"  # an attempt failed: it waits, claimed, until ``Flight.not_before``
    UNSETTLED = "unsettled"  # caught changing after its claim: it waits until it has been stable
    STAGED = "staged"  # its result is in, outputs staged: it waits for the next group commit
    COMMITTING = "committing"  # the state database says committing: its renames and move are to do
    ROLLING = "rolling"  # claimed with a commit to roll forward, which a fault of the machine held back
    MOVING = "moving"  # its move to processed/ or failed/ failed (a full disk...): tried again

    # Members are unique objects: hashed by identity, in C (Enum's own hash is a Python
    # call, and the table hashes a state several times per file).
    __hash__ = object.__hash__


W, D, B, U, S, C, R, M = State  # the diagram's letters, for the table below
TRANSITIONS: frozenset[tuple[State, State]] = frozenset({
    (W, W), (W, D), (W, B), (W, R), (W, M),  # held again; a job; rejected or rolled forward
    (D, W), (D, S), (D, B), (D, M),  # given back at no cost; its result; a failed attempt
    (B, W), (B, B), (B, M),  # its backoff is over; a failure recorded later; to failed/
    (U, W), (U, U),  # stable again; still changing
    (S, S), (S, C), (S, U), (S, W), (S, B), (S, M),  # kept for the next commit; marked; changed; held; charged
    (C, C), (C, B), (C, M),  # renames held by a fault (they are idempotent: it stays); charged; its move failed
    (R, R), (R, W), (R, B), (R, M),  # held again; an output gone (processed again); charged; move failed
    (M, M),  # tried again
})
_DATA = frozenset({"seq", "not_before", "since", "stable_s", "result", "pid", "move", "caught", "size", "mtime_ns"})


_FACTS = frozenset({"pipeline", "suffixes", "faults", "final_name"})


class IllegalTransition(RuntimeError):
    """A part asked for a change of state the diagram does not have: a bug."""


@dataclass(eq=False)
class Flight:
    """A claimed file: in underprocess/, its lock held by us. Its state and that state's
    data change only through ``Flights``."""

    record: FileRecord
    size: int
    mtime_ns: int = 0  # as it was claimed: a change before its commit means it is still being written
    state: State = State.WAITING
    seq: int = 0  # DISPATCHED: the job carrying it
    not_before: float = 0.0  # BACKOFF: monotonic, when it may run again
    since: float = 0.0  # UNSETTLED: monotonic, since when it has looked the same
    stable_s: float = 0.0  # UNSETTLED: how long it must look the same
    result: ItemResult | None = None  # STAGED, COMMITTING: what its worker staged
    pid: int = 0  # STAGED, COMMITTING: the worker that produced it
    move: tuple[str, tuple[Any, ...]] | None = None  # MOVING: the folder, and what the move needs
    caught: int = 0  # times it was caught changing after its claim (it waits longer each time)
    faults: int = 0  # faults of the machine its worker met on it in a row (only its own, past a few)
    pipeline: str = ""  # the pipeline its name routes it to, set when it is dispatched
    suffixes: frozenset[str] = frozenset()  # the side outputs its final name reserves


class Flights:
    """The files in flight: by name, by id, and by state (each in the order it got
    there). The one place a flight's state changes."""

    def __init__(self) -> None:
        self._by_name: dict[str, Flight] = {}
        self._by_id: dict[int, Flight] = {}
        self._in: dict[State, dict[int, Flight]] = {s: {} for s in State}

    def add(self, flight: Flight) -> None:
        """A new claim, WAITING. A name is claimed once at a time: a second flight of a
        name in flight would leave the first claimed, with nobody to finish it."""
        old = self._by_name.get(flight.record.name)
        if old is not None or flight.record.id in self._by_id:
            raise IllegalTransition(f"{flight.record.name!r} is in flight already")
        flight.state = State.WAITING
        self._by_name[flight.record.name] = flight
        self._by_id[flight.record.id] = flight
        self._in[State.WAITING][flight.record.id] = flight

    def to(self, flight: Flight, state: State, **data: Any) -> None:
        """``flight`` goes to ``state`` with that state's data (``seq``, ``not_before``,
        ``since``/``stable_s``, ``result``/``pid``, ``move``); it goes to the end of
        its new state's order unless it stays where it is."""
        if self._by_id.get(flight.record.id) is not flight:
            raise IllegalTransition(f"{flight.record.name!r} is not in flight (to {state.value})")
        if (flight.state, state) not in TRANSITIONS:
            raise IllegalTransition(f"{flight.record.name!r}: {flight.state.value} -> {state.value}")
        if not _DATA.issuperset(data):
            raise IllegalTransition(f"{flight.record.name!r}: {sorted(set(data) - _DATA)} are not a state's data")
        if state is not State.DISPATCHED:
            flight.seq = 0
        if state not in (State.STAGED, State.COMMITTING):
            flight.result, flight.pid = None, 0
        if state is not State.MOVING:
            flight.move = None
        for key, value in data.items():
            setattr(flight, key, value)
        if flight.state is not state:
            del self._in[flight.state][flight.record.id]
            self._in[state][flight.record.id] = flight
            flight.state = state

    def note(self, flight: Flight, **facts: Any) -> None:
        """What was learnt of ``flight`` that is not its state: its pipeline (at
        dispatch), the side outputs its name reserves, its final name (``final_name``:
        changed by a reload, or by a collision at its move), its faults in a row."""
        unknown = set(facts) - _FACTS
        if unknown:
            raise IllegalTransition(f"{flight.record.name!r}: {sorted(unknown)} are not facts of a flight")
        final = facts.pop("final_name", None)
        if final is not None and final != flight.record.final_name:
            flight.record = dataclasses.replace(flight.record, final_name=final)
        for key, value in facts.items():
            setattr(flight, key, value)

    def drop(self, flight: Flight) -> bool:
        """``flight`` left our hands (done, given back, gone). False if it was not here."""
        if self._by_id.get(flight.record.id) is not flight:
            return False
        del self._by_id[flight.record.id]
        del self._in[flight.state][flight.record.id]
        if self._by_name.get(flight.record.name) is flight:
            del self._by_name[flight.record.name]
        return True

    # -- what the parts ask --

    def named(self, name: str) -> Flight | None:
        return self._by_name.get(name)

    def by_id(self, file_id: int) -> Flight | None:
        return self._by_id.get(file_id)

    def dispatched(self, file_id: int, seq: int) -> Flight | None:
        """The flight of this file if it still waits for the result of job ``seq``."""
        flight = self._by_id.get(file_id)
        return flight if flight is not None and flight.state is State.DISPATCHED and flight.seq == seq else None

    def in_state(self, *states: State) -> list[Flight]:
        """The flights in these states, each state's in the order they got there."""
        return [f for s in states for f in self._in[s].values()]

    def any_in(self, *states: State) -> bool:
        return any(self._in[s] for s in states)

    def counts(self) -> dict[str, int]:
        """How many flights are in each state (the dashboard and /metrics show them)."""
        return {s.value: len(self._in[s]) for s in State}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Flight]:
        return iter(list(self._by_id.values()))

    def names(self) -> set[str]:
        return set(self._by_name)

    def ids(self) -> set[int]:
        return set(self._by_id)
