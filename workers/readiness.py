"""When is a file in ``unprocessed/`` ready to be claimed?

- With a ready marker configured: when its marker exists.
- Otherwise never while a process holds it open, as seen two ways:

  * inotify's open and close events in the folder (``IN_OPEN`` against
    ``IN_CLOSE_WRITE``/``IN_CLOSE_NOWRITE``): they need no privilege and report every
    process of this machine whatever its user, network servers included (sshd's
    internal-sftp, vsftpd, smbd), so a file opened since the daemon watches is not
    ready until every open of it was closed. They cannot say whether an open is for
    writing, so a reader holding the file waits it too;
  * ``/proc/<pid>/fd`` (with the access mode in ``/proc/<pid>/fdinfo``), by path, or by
    inode for a file hard-linked in while its writer still has it open: it also sees
    files opened before the daemon started, but only in the processes this user may
    read (``Sight``: root sees all; another user only its own dumpable processes, not
    a server's session, even of its own uid);

  and then: at once if it was renamed into the folder (the producer's atomic hand-off),
  or when its size and mtime have stayed unchanged for ``settle`` seconds (some writers
  close and reopen the file for every chunk, so a close alone proves nothing).

What neither sees (a writer on another machine of a network filesystem, one that
opened the file before the daemon started, as another user) is covered by ``settle``
alone, and by the check at commit (``workers/daemon/commit.py``): a file whose size or
mtime changed between its claim and its commit is never committed.
"""

from __future__ import annotations

import logging
import os
import pwd
import time
from collections.abc import Iterable
from dataclasses import dataclass

from workers.names import shown
from workers.queue import Candidate

log = logging.getLogger("foldermill")

WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def open_for_writing(folder: str, candidates: Iterable[Candidate] = ()) -> set[str]:
    """Names of files directly in ``folder`` that some process has open for writing:
    by the path of the open file, or, for ``candidates``, by inode, so a writer that
    opened the file elsewhere and hard-linked it into ``folder`` is seen too."""
    return Writers.now(folder).of(candidates)


@dataclass(frozen=True)
class Writers:
    """Who had what open for writing at one moment: names of files directly in the
    folder (by the open file's path), and the inodes of every file on the folder's
    filesystem open for writing (so a file hard-linked in while open is seen too)."""

    names: frozenset[str]
    inodes: frozenset[int]

    def of(self, candidates: Iterable[Candidate] = ()) -> set[str]:
        """The names among ``candidates`` (and any in the folder) open for writing."""
        return set(self.names) | {c.name for c in candidates if c.ino in self.inodes}

    @staticmethod
    def now(folder: str) -> Writers:
        """One pass over ``/proc/*/fd`` (about 1 ms per 60 processes here)."""
        prefix = folder.rstrip("/") + "/"
        names: set[str] = set()
        inodes: set[int] = set()
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            device = os.stat(folder).st_dev
        except OSError:
            return Writers(frozenset(), frozenset())
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
                if not _writable(pid, fd):
                    continue
                if target.startswith(prefix) and "/" not in target[len(prefix):]:
                    names.add(target[len(prefix):].removesuffix(" (deleted)"))
                dev, ino = _stat(f"{fd_dir}/{fd}")  # fdinfo's "ino:" has no device: stat the fd
                if dev == device:
                    inodes.add(ino)
        return Writers(frozenset(names), frozenset(inodes))


STALE_OPEN_S = 300.0  # a file counted open but unchanged this long is taken for closed (at least 10 x settle)
WRITERS_TTL_S = 0.25  # how long one look at /proc serves claims of files that arrived before it
WRITERS_SHARE = 10.0  # looks at /proc take at most 1/10 of the time: the next waits 10 x a look's cost...
WRITERS_WAIT_MAX_S = 0.25  # ... but never longer than this (a file that arrived after a look waits this at most)


class WriterWatch:
    """``Writers`` of one folder, looked at again only when the last look is older than
    ``WRITERS_TTL_S`` or a file about to be claimed arrived after it: the intake asks for
    every batch it claims, and one look costs about a millisecond per 60 processes.
    Looks take at most ``1 / WRITERS_SHARE`` of the time: while files arrive faster than
    that, those that arrived after the last look wait for the next, set aside like a
    settling file (``WRITERS_SHARE`` times a look's cost, smoothed over the last looks,
    and at most ``WRITERS_WAIT_MAX_S``)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.last: Writers | None = None
        self.at = float("-inf")
        self.cost = 0.0  # seconds the last look took
        self.since: set[str] = set()  # names that arrived after the last look
        # File events are watched and none was lost since the last look: a writer that
        # opens a file here shows itself (inotify), so what the look saw not open stays
        # true until the file is closed or arrives anew; no look for time alone.
        self.trusted = False

    def arrived(self, name: str) -> None:
        if len(self.since) >= 10_000:  # many arrivals and no claims (paused): look afresh next time
            self.last = None
            self.since.clear()
        self.since.add(name)

    def of(self, candidates: list[Candidate], now: float) -> tuple[set[str], set[str]]:
        """(the names among ``candidates`` open for writing, those not looked at yet:
        they arrived after the last look, and the next is not due until ``next_look``)."""
        newer = {c.name for c in candidates if c.name in self.since}
        # Trusted looks still age for the files they saw open: a writer holding a file
        # through another name (a hard link, a rename in) closes it without an event here.
        aged = now - self.at >= WRITERS_TTL_S and (not self.trusted or bool(self.last and self.last.of(candidates)))
        if self.last is None or ((newer or aged) and now >= self.next_look()):
            started = time.monotonic()
            self.last = Writers.now(self.folder)
            cost = time.monotonic() - started
            self.at, self.cost = now, cost if self.cost == 0.0 else (self.cost + cost) / 2
            self.since.clear()
            newer = set()
        return self.last.of(candidates), newer

    def events_lost(self) -> None:
        """Events were lost: the next claim looks afresh."""
        self.last = None

    def next_look(self) -> float:
        """When another look at /proc keeps looks within their share of the time."""
        return self.at + min(WRITERS_WAIT_MAX_S, WRITERS_SHARE * self.cost)


NOT_FILES = ("/dev/", "/proc/", "/sys/")


def _writable(pid: str, fd: str) -> bool:
    """Whether ``/proc/<pid>/fdinfo/<fd>`` says the descriptor is open for writing."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in WRITE_MODES
    except (OSError, ValueError):
        pass
    return False


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
    """Remembers what each candidate looked like, to tell when it has settled, and how
    many opens of it inotify reported that no close has answered yet."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.seen: dict[str, _Seen] = {}
        self.moved_in: set[str] = set()
        self.opened: dict[str, int] = {}  # name -> opens not closed yet (IN_OPEN minus IN_CLOSE_*)
        self.open_quiet: dict[str, _Seen] = {}  # an open file: since when it has looked the same
        self.stale_open_s = max(STALE_OPEN_S, 10 * settle_s)

    def note_opened(self, name: str) -> None:
        self.opened[name] = self.opened.get(name, 0) + 1

    def note_closed(self, name: str) -> None:
        """A close (a close for an open the daemon did not see, before it watched, counts
        for nothing)."""
        left = self.opened.pop(name, 0) - 1
        if left > 0:
            self.opened[name] = left

    def is_open(self, name: str) -> bool:
        return name in self.opened

    def events_lost(self) -> None:
        """Events were lost (an inotify overflow): opens and closes no longer pair up."""
        self.opened.clear()
        self.open_quiet.clear()

    def _still_open(self, c: Candidate, now: float) -> bool:
        """Whether inotify's count still says ``c`` is open. The kernel merges an event
        with an identical one just before it in its queue (two closes of one file in a
        row), so a count can stay above zero for good: a file counted open whose size and
        mtime have not changed for ``stale_open_s`` is taken for closed (said once); the
        check at commit still guards it."""
        quiet = self.open_quiet.get(c.name)
        if quiet is None or (quiet.size, quiet.mtime_ns) != (c.size, c.mtime_ns):
            self.open_quiet[c.name] = _Seen(c.size, c.mtime_ns, now)
            return True
        if now - quiet.since < self.stale_open_s:
            return True
        log.warning("%s: counted open, but unchanged for %.0fs: taken for closed (a close event may have been "
                    "merged with another)", shown(c.name), now - quiet.since)
        self.opened.pop(c.name, None)
        self.open_quiet.pop(c.name, None)
        return False

    def note_moved_in(self, name: str) -> None:
        """A rename into the folder was reported for ``name`` (a finished hand-off)."""
        self.moved_in.add(name)

    def note_written(self, name: str) -> None:
        """Written in place: it must settle, even if it was renamed in before."""
        self.moved_in.discard(name)

    def ready(self, c: Candidate, writing: set[str], now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if c.name in writing or (c.name in self.opened and self._still_open(c, now)):
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
        """Judge ``name`` afresh (its opens stay counted: they may be a new delivery's)."""
        self.seen.pop(name, None)
        self.moved_in.discard(name)

    def gone(self, name: str) -> None:
        """``name`` left the folder (deleted, or moved out, by us too): nothing of it is
        open there (what inotify reports of the name from now on is a new file's)."""
        self.forget(name)
        self.opened.pop(name, None)
        self.open_quiet.pop(name, None)

    def bound(self, most: int) -> None:
        """Files leave without a word only when their events were lost: if that made
        what is remembered grow past ``most``, forget it all (they settle again)."""
        if len(self.seen) + len(self.moved_in) > most:
            self.seen.clear()
            self.moved_in.clear()
        if len(self.opened) > most:  # not the settling files' fault: opens are forgotten only so
            self.opened.clear()
            self.open_quiet.clear()

    def next_check_in(self, now: float | None = None, exclude: set[str] | frozenset = frozenset()) -> float | None:
        """Seconds until some remembered, not yet ready file may have settled (None:
        nothing is settling)."""
        now = time.monotonic() if now is None else now
        pending = [s.since for name, s in self.seen.items() if name not in exclude]
        if not pending:
            return None
        return max(0.0, min(pending) + self.settle_s - now)


# Filesystems where other machines write too: their writes raise no inotify event here.
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "lustre",
                                 "gpfs", "ocfs2", "gfs2", "beegfs", "virtiofs"})
CAP_SYS_PTRACE = 19


@dataclass(frozen=True)
class Sight:
    """How this daemon sees writers, found at start: said in the log, ``check``,
    ``status``, ``/health`` and the dashboard, because what it cannot see is covered by
    ``settle`` alone."""

    user: str
    inotify: bool  # open/close events in the folder
    filesystem: str  # the folder's filesystem type
    proc: str  # "all": every process's descriptors; "own": this user's dumpable ones; "none"
    hidden: int  # processes whose descriptors it could not read when it looked
    processes: int
    settle_s: float

    @property
    def network(self) -> bool:
        return self.filesystem in NETWORK_FILESYSTEMS or self.filesystem.startswith("fuse")

    def describe(self) -> list[str]:
        lines = []
        if self.inotify:
            lines.append("inotify open/close events in unprocessed/: every process of this machine, whatever its "
                         "user (a file is not taken while it is open)")
        else:
            lines.append("no inotify events: opens and closes are not seen")
        if self.network:
            lines.append(f"unprocessed/ is on {self.filesystem}: a writer on another machine is seen by neither "
                         "inotify nor /proc, only by settle (use a ready marker, or rename files in)")
        if self.proc == "all":
            lines.append("/proc: every process's open files (also those opened before the daemon started)")
        elif self.proc == "own":
            lines.append(f"/proc: only the processes of user {self.user} that are dumpable ({self.hidden} of "
                         f"{self.processes} hidden when looked: other users', and servers' sessions such as sshd, "
                         "vsftpd or smbd, even of its own uid)")
        else:
            lines.append("/proc: not readable here")
        lines.append(f"settle ({self.settle_s:g}s) for what these do not see; an input that changes between its "
                     "claim and its commit is never committed")
        return lines

    def as_dict(self) -> dict[str, object]:
        return {"user": self.user, "inotify": self.inotify, "filesystem": self.filesystem, "network": self.network,
                "proc": self.proc, "proc_hidden": self.hidden, "processes": self.processes,
                "settle_s": self.settle_s, "summary": self.describe()}


def see_writers(folder: str, inotify: bool, settle_s: float) -> Sight:
    """What a daemon of this user, watching ``folder``, can see of writers now."""
    hidden = seen = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            os.listdir(f"/proc/{pid}/fd")
            seen += 1
        except PermissionError:
            hidden += 1
        except OSError:
            continue  # gone meanwhile
    proc = "none" if not seen else "all" if not hidden and _capable(CAP_SYS_PTRACE) else "own"
    return Sight(_user(), inotify, filesystem_type(folder), proc, hidden, hidden + seen, settle_s)


def filesystem_type(path: str) -> str:
    """The type of the filesystem ``path`` is on (``/proc/self/mountinfo``), or ""."""
    real = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields, _, rest = line.partition(" - ")
                mount = fields.split()[4].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, rest.split()[0]
    except (OSError, IndexError):
        return ""
    return kind


def _capable(cap: int) -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError):
        pass
    return False


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
