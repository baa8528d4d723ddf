"""Claims (a lock and a rename, ``workers/queue.py``) and what the intake asks the
ledger before it judges a round of files: the intake's two helpers."""

from __future__ import annotations

import logging

from workers.daemon.types import SYSTEM_ERRNOS, Records
from workers.faults import fault_of
from workers.names import shown
from workers.queue import Candidate, FolderQueue

log = logging.getLogger("foldermill")


class Facts:
    """What the ledger says of the files about to be judged, asked once a round."""

    def __init__(self, records: Records, markers: bool) -> None:
        self.records = records
        self.backing_off = records.backing_off()
        self.seen_before = records.seen_before() if markers else set()



class Claimer:
    """Claims (a lock and a rename), and the files that cannot be claimed, said once."""

    def __init__(self, queue: FolderQueue) -> None:
        self.queue = queue
        self.unclaimable: set[str] = set()  # names a claim failed on (said once)

    def claim(self, name: str) -> bool:
        """Whether ``name`` is ours now; an error of the system or the machine raises."""
        try:
            return self.queue.claim(name)
        except OSError as exc:
            if exc.errno in SYSTEM_ERRNOS or fault_of(exc) is not None:
                raise
            self._unclaimable(name, exc)
            return False

    def give_back(self, picked: list[Candidate], exc: Exception | None) -> None:
        """Claims the ledger could not record: back where they were, said once (a fault
        of the machine, ``exc`` None, is said by its own line)."""
        for c in picked:
            self.queue.put_back(c.name)
            if exc is not None:
                self._unclaimable(c.name, OSError(0, f"{type(exc).__name__}: {exc}"))

    def _unclaimable(self, name: str, exc: OSError) -> None:
        """A file we cannot even move into underprocess/: it stays where it is (said once)."""
        if name not in self.unclaimable:
            self.unclaimable.add(name)
            log.error("cannot claim %s: %s; it stays in unprocessed/", shown(name), exc.strerror or exc)
