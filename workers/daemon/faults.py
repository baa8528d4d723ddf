"""The machine's faults, as the daemon lives with them: one owner for "intake is paused
because the machine cannot go on now" (``workers/faults.py`` tells a fault from a
file's problem).

A part that meets a fault tells ``Faults.hit`` and keeps its file where it is (claimed,
unchanged, no attempt charged); while a fault is on, the loop claims nothing and sends
no file to a worker. Every ``PROBE_EVERY_S`` the fault is looked at again: a full disk
or a read-only filesystem by the filesystem's own figures and a probe write in each of
the daemon's folders, the others by trying again. When it has cleared, intake resumes
by itself. Said once per episode in the log, and all the while in the snapshot
(``/health`` 503, ``/stats``, ``status``, the dashboard, ``/metrics``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from workers.faults import DESCRIPTORS, DISK_FULL, KINDS, QUOTA, READ_ONLY, Fault, filesystem_state

PROBE_EVERY_S = 1.0
PROBE_MAX_S = 32.0  # a fault that comes back soon after it cleared is looked at less and less often
AGAIN_WITHIN_S = 30.0
RESERVE_BYTES = 4 << 20  # free space a disk must show again before intake resumes
RESERVE_INODES = 64  # ... and free inodes, where the filesystem counts them
PROBE_BYTES = 256 << 10  # written (and removed) in each folder as the proof
PROBE_DESCRIPTORS = 32

log = logging.getLogger("foldermill")


class Faults:
    """The fault that pauses intake now (at most one is shown: the first met), when to
    look at it again, and how many episodes of each kind there were."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders  # where the daemon writes: each is probed before resuming
        self.active: Fault | None = None
        self.since = 0.0  # wall clock, for people
        self.next_probe = 0.0  # monotonic
        self.probe_every_s = PROBE_EVERY_S
        self.episodes: Counter[str] = Counter()
        self.cleared_at: dict[str, float] = {}  # kind -> monotonic time its last episode ended
        self.streak: Counter[str] = Counter()  # episodes of a kind, each soon after the last

    def hit(self, fault: Fault, now: float | None = None) -> None:
        """A part met ``fault``: intake pauses (said once). A fault that comes back
        soon after it cleared (a busy database, memory) is looked at again later each
        time, up to ``PROBE_MAX_S``: a flapping fault neither floods the log nor spins."""
        if self.active is not None:
            return
        now = time.monotonic() if now is None else now
        again = now - self.cleared_at.get(fault.kind, float("-inf")) < AGAIN_WITHIN_S
        self.streak[fault.kind] = self.streak[fault.kind] + 1 if again else 0
        self.probe_every_s = min(PROBE_MAX_S, PROBE_EVERY_S * 2 ** self.streak[fault.kind])
        self.active, self.since, self.next_probe = fault, time.time(), now + self.probe_every_s
        self.episodes[fault.kind] += 1
        log.error("intake paused%s: %s; no file is charged for it, claimed files wait where they are; "
                  "it resumes by itself when this clears (looked at every %gs)", " again" if again else "",
                  fault.describe(), self.probe_every_s)

    def look(self) -> None:
        """Without waiting for a write to fail: a filesystem remounted read-only, or with
        no byte or no inode left, pauses intake at once (an idle daemon says so too)."""
        if self.active is not None:
            return
        for folder in self.folders:
            kind = filesystem_state(str(folder), low_bytes=1, low_inodes=1)
            if kind:
                self.hit(Fault(kind, str(folder), "seen on the filesystem itself (statvfs)"))
                return

    def paused(self) -> bool:
        return self.active is not None

    def cleared(self, now: float) -> bool:
        """While a fault is on: look at it again when due; True once it has cleared
        (then intake resumes, and the log says so)."""
        fault = self.active
        if fault is None or now < self.next_probe:
            return False
        self.next_probe = now + self.probe_every_s
        if not self._probe(fault):
            return False
        log.warning("intake resumed: %s no longer (after %.0fs)", fault.describe(), time.time() - self.since)
        self.active = None
        self.cleared_at[fault.kind] = now
        return True

    def _probe(self, fault: Fault) -> bool:
        if fault.kind in (DISK_FULL, QUOTA, READ_ONLY):
            return all(_writable(folder) for folder in self.folders)
        if fault.kind == DESCRIPTORS:
            return _descriptors_left(PROBE_DESCRIPTORS)
        return True  # memory, a busy database: trying again is the probe

    def describe(self) -> dict[str, Any] | None:
        """For the snapshot: the fault that pauses intake, or None."""
        f = self.active
        if f is None:
            return None
        return {"kind": f.kind, "path": f.path, "message": f.describe(), "since": self.since}

    def counts(self) -> dict[str, Any]:
        return {"active": self.active.kind if self.active else None, "episodes": {k: self.episodes[k] for k in KINDS}}


def _writable(folder: Path) -> bool:
    """Room again in ``folder``: the filesystem shows a reserve, and a probe file of
    ``PROBE_BYTES`` can be written there (a quota shows only so)."""
    if filesystem_state(str(folder), RESERVE_BYTES, RESERVE_INODES):
        return False
    probe = folder / f".fm-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            return os.write(fd, b"\0" * PROBE_BYTES) == PROBE_BYTES
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)


def _descriptors_left(count: int) -> bool:
    fds = []
    try:
        for _ in range(count):
            fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        return True
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)
