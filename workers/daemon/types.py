"""The small named types that cross between the daemon's parts. No part reaches into
another's attributes: what one part tells another is one of these."""

from __future__ import annotations

import errno
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.failure import Failure
from workers.faults import Fault, fault_of
from workers.names import shown
from workers.queue import Candidate
from workers.worker import ItemResult, JobItem

# The errors that say the whole system is unusable, not one file (exit status 3). A
# full disk, a read-only remount, no descriptors... are faults of the machine instead
# (workers/faults.py): intake pauses until they clear.
SYSTEM_ERRNOS = frozenset({errno.EIO})
RECOVER_EVERY_S = 5.0  # recovery, and the retry of moves that failed


class FaultSink(Protocol):
    """Where a part says it met a fault of the machine (``workers/daemon/faults.py``)."""

    def hit(self, fault: Fault, now: float | None = None) -> None:
        """Intake pauses until ``fault`` clears; the part keeps its file where it is."""


def database_fault(exc: BaseException, db_path: str) -> Fault | None:
    """A fault of the machine behind an error of the state database (full, busy...)."""
    return fault_of(exc, db_path) if isinstance(exc, sqlite3.DatabaseError) else None


@dataclass(frozen=True)
class Options:
    """The daemon's command-line options."""

    once: bool = False
    trace: bool = False
    workers: int = 1


@dataclass
class Delivery:
    """A job's result as its backend took it in: what the commit part handles."""

    seq: int
    pid: int
    accepted: bool  # False: a late or duplicate execution; none of it is committed
    items: list[ItemResult]
    nodes: dict[str, tuple[int, int, int, float]] = field(default_factory=dict)
    # Files whose staged output vanished before the result arrived: sent again at no cost.
    resend: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Returned:
    """Files a backend gives back: a dead worker's job, an orphaned one, a job the
    broker lost. The culprit (the file a dead worker was on) costs one attempt, with
    the reason; every other item goes out again at no cost."""

    seq: int
    items: tuple[JobItem, ...]
    culprit: JobItem | None = None
    failure: Failure | None = None  # what the culprit's attempt is charged with


@dataclass
class Claims:
    """What one intake round took from unprocessed/ (all of it claimed, locks held)."""

    files: list[Candidate] = field(default_factory=list)
    rejects: list[tuple[Candidate, str]] = field(default_factory=list)  # not regular files, with the reason
    fault: Fault | None = None  # a fault of the machine stopped the round


@dataclass
class Recovery:
    """What one recovery round found of dead owners' files."""

    requeued: list[str] = field(default_factory=list)  # back in unprocessed/
    adopted: list[Candidate] = field(default_factory=list)  # claimed in place (a new delivery has the name)
    rejects: list[tuple[Candidate, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """What the loop hands the publisher for one snapshot."""

    paused: bool
    in_flight: int
    folders: dict[str, int]
    oldest_waiting_mtime: float | None
    workers: list[dict[str, Any]]
    backend: dict[str, Any]
    graph: list[str]
    layout: list[dict[str, Any]]  # each pipeline's nodes and edges, for the dashboard's drawing
    pipelines: list[str]  # their names, in the order configured
    machine: dict[str, Any] | None = None  # the fault of the machine that pauses intake
    faults: dict[str, Any] = field(default_factory=dict)  # episodes by kind
    file_events: str = ""  # why some files are found by passes alone ("" if events tell of all)


class Tally:
    """Counts of outcomes for the summary lines and the --once progress (the publisher
    reads them; the commit part adds to them)."""

    def __init__(self) -> None:
        self.summary = {"files": 0, "lines": 0, "failed": 0, "retried": 0}  # since the last summary line
        self.done_files = 0  # since the start, for --once's progress
        self.done_bytes = 0

    def processed(self, lines: int, size: int) -> None:
        self.summary["files"] += 1
        self.summary["lines"] += lines
        self.done_files += 1
        self.done_bytes += size

    def failed(self, size: int) -> None:
        self.summary["failed"] += 1
        self.done_files += 1
        self.done_bytes += size

    def retried(self) -> None:
        self.summary["retried"] += 1

    def take_summary(self) -> dict[str, int]:
        s, self.summary = self.summary, dict.fromkeys(self.summary, 0)
        return s


class Records(Protocol):
    """What the intake reads of the ledger's records when it scans."""

    def in_flight(self, name: str) -> bool:
        """This name is claimed by us now."""

    def backing_off(self) -> dict[tuple[str, int], float]:
        """(name, inode) of files waiting in unprocessed/ for a retry."""

    def seen_before(self) -> set[tuple[str, int]]:
        """(name, inode) of files claimed before and not finished (their marker is used up)."""


class Shared(Protocol):
    """The multiprocessing manager and its proxies (``supervisor.py`` creates it)."""

    state: Any  # dict proxy: the published snapshot
    results: Any  # queue proxy: job results from local workers
    commands: Any  # queue proxy: actions from the dashboard

    def new_queue(self) -> Any:
        """A new manager queue (a worker's job queue)."""

    def died(self) -> int | None:
        """The manager process's exit code if it died, else None."""

    def shutdown(self) -> None:
        """Stop the manager process."""


# What the daemon gets from outside: supervisor.py creates the manager and knows the
# dashboard's process (workers/ never imports web/).
OpenShared = Callable[[Any], Shared]  # (multiprocessing context) -> Shared
StartDashboard = Callable[..., tuple[Any, Any]]  # (ctx, config, port, shared) -> (process, ready event)


def not_regular(candidate: Candidate) -> str:
    """Why a symlink, a directory, a FIFO... is rejected (never opened)."""
    return (f"{shown(candidate.name)} is {_kind_of(candidate.mode)}, not a regular file: not processed "
            "(symlinks are never followed)")


def _kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"
