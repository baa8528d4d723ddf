"""The intake: what comes into the daemon. It owns the scan of ``unprocessed/``, which
files are ready (``workers/readiness.py``), the backlog in order, claims (a lock and a
rename, ``workers/queue.py``), rejects of what is not a regular file, and recovery of
dead owners' files. It records nothing: what it claimed goes to the ledger.
"""

from __future__ import annotations

import logging
import stat
from collections import deque

from workers.daemon.events import MOVED_IN, start_observer
from workers.daemon.types import RECOVER_EVERY_S, SYSTEM_ERRNOS, Claims, Records, Recovery
from workers.errors import SystemFailure
from workers.names import shown
from workers.ops import retry_one
from workers.queue import Candidate, FolderQueue
from workers.readiness import Readiness, open_for_writing

log = logging.getLogger("foldermill")


class Intake:
    """Scans, readiness, the backlog, claims, rejects and recovery of one watch dir."""

    def __init__(self, queue: FolderQueue, settle_s: float, poll_interval_s: float, once: bool) -> None:
        self.queue = queue
        self.readiness = Readiness(settle_s)
        self.poll_interval_s = poll_interval_s
        self.once = once
        self.backlog: deque[Candidate] = deque()
        self.waiting: dict[str, float] = {}  # unprocessed/ at the last scan: name -> mtime
        self.unclaimable: set[str] = set()  # names a claim failed on (said once)
        self.next_settle = float("inf")  # when a settling file may become ready
        self.scan_due = True
        self.last_scan = self.last_recover = 0.0
        self.once_idle = False  # --once: the last scan found nothing left to do
        self.observer: object | None = None

    # -- what came in ------------------------------------------------------------------

    def watch(self, inbox: object) -> None:
        """File events wake the loop through ``inbox`` (("fs", kind, name) items)."""
        self.observer = start_observer(self.queue.unprocessed, inbox)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()  # type: ignore[attr-defined]

    def note_event(self, kind: str, name: str) -> None:
        """A file event: readiness learns how the file arrived; a scan is due."""
        if kind == MOVED_IN:
            self.readiness.note_moved_in(name)
        else:
            self.readiness.note_written(name)
        self.scan_due = True

    def wake(self) -> None:
        """Something changed in unprocessed/ (a resume, a retry, a recovery): scan soon."""
        self.scan_due = True

    def forget(self, name: str) -> None:
        """A file left our hands: a new delivery of its name is seen afresh."""
        self.readiness.forget(name)

    def check_folders(self) -> None:
        """The folders must still be there (a watch dir removed or unmounted)."""
        q = self.queue
        for folder in (q.unprocessed, q.underprocess, q.processed, q.failed, q.output):
            if not folder.is_dir():
                raise SystemFailure(f"{folder} is gone (was the watch dir removed or unmounted?)")

    def seconds_to_next_scan(self, now: float) -> float:
        return self.last_scan + self.poll_interval_s - now

    def counts(self) -> dict[str, int]:
        return self.queue.counts()

    def oldest_waiting_mtime(self) -> float | None:
        return min(self.waiting.values()) if self.waiting else None

    def backlog_size(self) -> tuple[int, int]:
        """Files ready and waiting to be claimed, and their bytes."""
        return len(self.backlog), sum(c.size for c in self.backlog)

    # -- claims --------------------------------------------------------------------------

    def claim(self, now: float, limit: int, records: Records, no_flights: bool, settled: bool) -> Claims:
        """Up to ``limit`` ready files, oldest first, claimed (locks held, in
        underprocess/); what is not a regular file is claimed to be rejected."""
        # --once also rescans as soon as it runs dry, to notice promptly that it is done.
        dry = self.once and not self.backlog and no_flights
        if self.scan_due or dry or now - self.last_scan >= self.poll_interval_s or now >= self.next_settle:
            self._scan(now, records, settled)
        claims = Claims()
        while self.backlog and len(claims.files) < limit:
            candidate = self.backlog.popleft()
            if not candidate.is_regular:
                if self._claim_one(candidate):
                    claims.rejects.append((candidate, not_regular(candidate)))
            elif self._claim_one(candidate):
                claims.files.append(candidate)
        if self.queue.stranded:  # a dead owner's file has the name of a new delivery
            self.last_recover = 0.0
        return claims

    def give_back(self, picked: list[Candidate], exc: Exception) -> None:
        """Claims the ledger could not record: back where they were, said once."""
        for c in picked:
            self.queue.put_back(c.name)
            self._note_unclaimable(c.name, OSError(0, f"{type(exc).__name__}: {exc}"))

    def _claim_one(self, candidate: Candidate) -> bool:
        try:
            claimed = self.queue.claim(candidate.name)
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS:
                raise
            self._note_unclaimable(candidate.name, exc)
            return False
        if claimed:
            self.waiting.pop(candidate.name, None)
            self.readiness.forget(candidate.name)
        return claimed

    def _note_unclaimable(self, name: str, exc: OSError) -> None:
        """A file we cannot even move into underprocess/: it stays where it is (said once)."""
        if name not in self.unclaimable:
            self.unclaimable.add(name)
            log.error("cannot claim %s: %s; it stays in unprocessed/", shown(name), exc.strerror or exc)

    def _scan(self, now: float, records: Records, settled: bool) -> None:
        """Rescan unprocessed/: what is ready goes to the backlog, oldest first."""
        self.scan_due = False
        self.last_scan = now
        candidates = self.queue.scan()
        writing = open_for_writing(str(self.queue.unprocessed), candidates) if candidates else set()
        backing_off = records.backing_off()
        # A file claimed before (now back for its retry, or recovered) used up its marker.
        seen_before = records.seen_before() if self.queue.ready_marker else set()
        ready: deque[Candidate] = deque()
        eligible = 0
        self.readiness.keep_only({c.name for c in candidates})
        for c in candidates:
            if records.in_flight(c.name):
                continue
            if (c.name, c.ino) in backing_off:
                eligible += 1
                continue
            if (self.queue.ready_marker and c.is_regular and (c.name, c.ino) not in seen_before
                    and not self.queue.has_marker(c.name)):
                continue
            if not c.is_regular or self.readiness.ready(c, writing, now):
                ready.append(c)
                eligible += 1
            elif c.name not in writing:
                eligible += 1  # still settling
        self.backlog = ready
        self.waiting = {c.name: c.mtime_ns / 1e9 for c in candidates if not records.in_flight(c.name)}
        wait = self.readiness.next_check_in(now, exclude={c.name for c in ready})
        self.next_settle = now + wait if wait is not None else float("inf")
        self.once_idle = self.once and not eligible and settled

    # -- recovery and retries ----------------------------------------------------------

    def recover_due(self, now: float) -> bool:
        return now - self.last_recover >= RECOVER_EVERY_S

    def recover(self, now: float, mine: set[str]) -> Recovery:
        """Dead owners' files: back to unprocessed/ (at no cost: their owner's death says
        nothing about them), or adopted where a new delivery took the name meanwhile."""
        self.last_recover = now
        names, adopted = self.queue.recover(mine)
        found = Recovery(requeued=names)
        if names:
            log.warning("recovered %d file(s) whose owner died: %s", len(names), ", ".join(map(shown, names[:5])))
            self.scan_due = True
        if adopted:
            picked = []
            for name in adopted:
                try:
                    picked.append(self.queue.stat_claimed(name))
                except FileNotFoundError:
                    self.queue.release(name)
            log.warning("adopted %d file(s) whose owner died, as new deliveries of their names wait: %s",
                        len(picked), ", ".join(shown(c.name) for c in picked[:5]))
            found.rejects = [(c, not_regular(c)) for c in picked if not c.is_regular]
            found.adopted = [c for c in picked if c.is_regular]
        return found

    def retry_failed(self, name: str) -> str:
        """Move a failed file back to unprocessed/ (its reason file goes): "" or the
        problem that refused it."""
        problem = retry_one(self.queue, name)
        if not problem:
            self.scan_due = True
        return problem


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


