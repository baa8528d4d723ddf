"""When is a file in ``unprocessed/`` ready to be claimed?

- With a ready marker configured: when its marker exists.
- Otherwise never while any process holds it open for writing (found through
  ``/proc/<pid>/fd`` and the access mode in ``/proc/<pid>/fdinfo``, by path, or by
  inode for a file hard-linked in while its writer still has it open), and then:
  at once if it was renamed into the folder (the producer's atomic hand-off), or when
  its size and mtime have stayed unchanged for ``settle`` seconds (some writers close
  and reopen the file for every chunk, so a close alone proves nothing).

Only processes whose ``/proc`` entries this user may read are seen; a writer running
as another user is covered by ``settle`` alone (or use a ready marker).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from workers.queue import Candidate

WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def open_for_writing(folder: str, candidates: Iterable[Candidate] = ()) -> set[str]:
    """Names of files directly in ``folder`` that some process has open for writing:
    by the path of the open file, or, for ``candidates``, by inode, so a writer that
    opened the file elsewhere and hard-linked it into ``folder`` is seen too."""
    prefix = folder.rstrip("/") + "/"
    by_ino = {c.ino: c.name for c in candidates}
    names: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
        device = os.stat(folder).st_dev
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
            if not target.startswith("/") or target.startswith(NOT_FILES):
                continue  # a socket, a pipe, a device...
            inside = target.startswith(prefix) and "/" not in target[len(prefix):]
            if not inside and not by_ino:
                continue
            writable, ino = _fdinfo(pid, fd)
            if not writable:
                continue
            if inside:
                names.add(target[len(prefix):].removesuffix(" (deleted)"))
            elif ino in by_ino or ino < 0:  # fdinfo has "ino:" from Linux 5.14; before, stat the fd
                dev, ino = _stat(f"{fd_dir}/{fd}")
                if dev == device and ino in by_ino:
                    names.add(by_ino[ino])
    return names


NOT_FILES = ("/dev/", "/proc/", "/sys/")


def _fdinfo(pid: str, fd: str) -> tuple[bool, int]:
    """(open for writing, inode) from ``/proc/<pid>/fdinfo/<fd>``."""
    writable, ino = False, -1
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    writable = int(line.split()[1], 8) & os.O_ACCMODE in WRITE_MODES
                elif line.startswith("ino:"):
                    ino = int(line.split()[1])
    except (OSError, ValueError):
        return False, -1
    return writable, ino


def _stat(fd_link: str) -> tuple[int, int]:
    try:
        st = os.stat(fd_link)
    except OSError:
        return -1, -1
    return st.st_dev, st.st_ino


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
            # Unchanged since long before we looked (e.g. present at start-up): its mtime
            # is the only clue, a wall-clock one (a writer that still has it open is seen
            # in /proc; one that reopens it per chunk and a clock step together are not).
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
