"""What a crash or a power cut left, set right: dead owners' files taken back
(``recover``, at start-up and every ``RECOVER_EVERY_S``), the state database reconciled
with the folders, which are the truth (``reconcile``, with every recovery), and
leftovers removed at start-up (``sweep_debris``).

A power cut keeps what reached the disk, and the state database (SQLite, WAL,
``synchronous=NORMAL``) may have lost its last transactions while the renames they
describe survived: a record still "in flight" for a file that is in processed/ or
failed/, or no record at all for a staged output. Only records and files that no live
owner holds are touched (a live owner holds its files' locks, and its records name it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

from workers.daemon.types import RECOVER_EVERY_S, Recovery, not_regular
from workers.names import shown
from workers.queue import FolderQueue, pid_alive
from workers.store import LIVE, Store
from workers.store import journal_entry as event_entry

log = logging.getLogger("foldermill")


class Reconcile:
    """Closes the records of files that left our hands, removes leftovers."""

    def __init__(self, queue: FolderQueue, store: Store, owner: str, incarnation: str) -> None:
        self.queue = queue
        self.store = store
        self.owner = owner  # host:pid, as people see it
        self.incarnation = incarnation  # as the state database sees it
        self.last_recover = float("-inf")  # monotonic

    def recover_due(self, now: float) -> bool:
        """Every ``RECOVER_EVERY_S``, and at once when a claim met a dead owner's file."""
        return now - self.last_recover >= RECOVER_EVERY_S or self.queue.stranded

    def recover(self, now: float, mine: set[str]) -> Recovery:
        """Dead owners' files (``mine``: the names this supervisor holds): back to
        unprocessed/ (at no cost: their owner's death says nothing about them), or
        adopted where a new delivery took the name meanwhile."""
        self.last_recover = now
        names, adopted = self.queue.recover(mine)
        found = Recovery(requeued=names)
        if names:
            log.warning("recovered %d file(s) whose owner died: %s", len(names), ", ".join(map(shown, names[:5])))
        if adopted:
            picked = self.queue.stat_adopted(adopted)
            log.warning("adopted %d file(s) whose owner died, as new deliveries of their names wait: %s",
                        len(picked), ", ".join(shown(c.name) for c in picked[:5]))
            found.rejects = [(c, not_regular(c)) for c in picked if not c.is_regular]
            found.adopted = [c for c in picked if c.is_regular]
        return found

    def sweep_debris(self) -> None:
        """At start-up: staged outputs no execution will commit (a power cut can leave
        some whose claim the state database never kept) and temporary files of gone
        processes."""
        removed = self.queue.sweep_debris(self._staged_kept)
        if removed:
            log.info("removed %d file(s) a crash or a power cut left behind (staged outputs nothing will commit, "
                     "temporary files)", removed)

    def _staged_kept(self, token: str) -> Collection[str] | None:
        """The staged files of ``token`` (a file's id) still needed: all of them while
        a live owner may write them (None), those a roll-forward will rename, or none."""
        if token.startswith("run-"):  # the `run` verb's, by its pid
            return None if token[4:].isdigit() and pid_alive(int(token[4:])) else ()
        if not token.isdigit():
            return None  # not ours
        row = self.store.file_row(int(token))
        if row is None:
            return ()
        name, status, committing = row
        if status in LIVE:  # committing included
            with self.queue.lock_if_free(name) as free:
                if not free:
                    return None  # a live owner's: its workers may be writing them (a file redone, too)
        return committing if status == "committing" else ()

    def reconcile(self, ours: set[int]) -> list[dict]:
        """Live records of files no live owner holds (``ours``: the ids this supervisor
        has in flight) that are not waiting any more: in processed/ or failed/ (a power
        cut kept the move, not the record's last change) they are closed as such; in no
        queue folder (removed by hand while waiting, or by a dead owner's operator) as
        vanished. Either way they reserve no name. Returns their journal entries."""
        closed, events = [], []
        q = self.queue
        for file_id, name, ino, final, owner in self.store.live_rows():
            if file_id in ours or self._owner_alive(owner):
                continue  # in flight here, or a live supervisor's (finishing it now, perhaps)
            with q.lock_if_free(name) as free:
                if not free:
                    continue  # a live owner's: only the lock holder moves a file
                if any(_inode(folder, name) == ino for folder in (q.unprocessed, q.underprocess)):
                    continue
                status = next((s for s, folder in (("processed", q.processed), ("failed", q.failed))
                               if _inode(folder, final) == ino), "vanished")
            closed.append((file_id, status))
            if status == "vanished":
                events.append(event_entry("vanished", name, reason="no longer in unprocessed/ or underprocess/"))
            else:
                events.append(event_entry("reconciled", name, final=shown(final), status=status,
                                          reason=f"found in {status}/ while its record said it was in flight "
                                          "(its owner died, or the power went, between the move and its record)"))
        if closed:
            self.store.finished(closed)
        return events

    def _owner_alive(self, owner: str) -> bool:
        """The record's owner is this start or a live supervisor on this host (a record
        of an earlier start with this pid, as pid 1 in a container, is not)."""
        if owner == self.incarnation:
            return True
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        return (host == self.owner.partition(":")[0] and pid.isdigit() and int(pid) != os.getpid()
                and pid_alive(int(pid)))


def _inode(folder: Path, name: str) -> int:
    try:
        return os.lstat(folder / name).st_ino
    except OSError:
        return -1
