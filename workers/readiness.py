"""When is a file in ``unprocessed/`` ready to be claimed?

- With a ready marker configured: when its marker exists.
- Otherwise never while any process holds it open for writing (found through
  ``/proc/<pid>/fd`` and the access mode in ``/proc/<pid>/fdinfo``), and then:
  at once if it was renamed into the folder (the producer's atomic hand-off), or when
  its size and mtime have stayed unchanged for ``settle`` seconds (some writers close
  and reopen the file for every chunk, so a close alone proves nothing).

Only processes whose ``/proc`` entries this user may read are seen; a writer running
as another user is covered by ``settle`` alone (or use a ready marker).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from workers.queue import Candidate

WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def open_for_writing(folder: str) -> set[str]:
    """Names of files directly in ``folder`` that some process has open for writing."""
    prefix = folder.rstrip("/") + "/"
    names: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return names
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith(prefix) or "/" in target[len(prefix):]:
                continue
            if _writable(pid, fd):
                names.add(target[len(prefix):].removesuffix(" (deleted)"))
    return names


def _writable(pid: str, fd: str) -> bool:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in WRITE_MODES
    except (OSError, ValueError):
        return False
    return False


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time when this size and mtime were first seen


class Readiness:
    """Remembers what each candidate looked like, to tell when it has settled."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.seen: dict[str, _Seen] = {}
        self.moved_in: set[str] = set()

    def note_moved_in(self, name: str) -> None:
        """A rename into the folder was reported for ``name`` (a finished hand-off)."""
        self.moved_in.add(name)

    def note_written(self, name: str) -> None:
        """Written in place: it must settle, even if it was renamed in before."""
        self.moved_in.discard(name)

    def ready(self, c: Candidate, writing: set[str], now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if c.name in writing:
            self.seen.pop(c.name, None)
            return False
        if c.name in self.moved_in:
            return True
        seen = self.seen.get(c.name)
        if seen is None or (seen.size, seen.mtime_ns) != (c.size, c.mtime_ns):
            self.seen[c.name] = _Seen(c.size, c.mtime_ns, now)
            # Unchanged since long before we looked (e.g. present at start-up).
            return time.time() - c.mtime_ns / 1e9 >= self.settle_s
        return now - seen.since >= self.settle_s

    def forget(self, name: str) -> None:
        self.seen.pop(name, None)
        self.moved_in.discard(name)

    def keep_only(self, names: set[str]) -> None:
        """Forget files that are no longer there."""
        for name in [n for n in self.seen if n not in names]:
            del self.seen[name]
        self.moved_in &= names

    def next_check_in(self, now: float | None = None, exclude: set[str] | frozenset = frozenset()) -> float | None:
        """Seconds until some remembered, not yet ready file may have settled (None:
        nothing is settling)."""
        now = time.monotonic() if now is None else now
        pending = [s.since for name, s in self.seen.items() if name not in exclude]
        if not pending:
            return None
        return max(0.0, min(pending) + self.settle_s - now)
