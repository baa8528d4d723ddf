"""File events: the kernel's inotify tells the supervisor the moment a file is renamed
into ``unprocessed/``, created, opened, written or closed there, or leaves it. The
periodic pass over the folder stays the safety net (network filesystems, where inotify
sees nothing), and an overflow of the kernel's event queue is reported (``OVERFLOW``) so
a pass runs at once: a lost event costs latency only, never a file.

One thread reads the inotify descriptor and hands each read's events over as one
``FileEvents`` message. watchdog did this before, with three threads and a queue
handoff per event: measured on 5,000 small files (``--once``, tmpfs), its threads cost
the supervisor 90 µs of CPU per file, a fifth of its work, most of it for the events
our own claims cause. Only what the daemon uses is read here (on Linux); the pass
covers the rest.

With ``[watch] recursive = true`` every directory the queue enters has a watch of its
own, and events name files by their path relative to the folder. A directory that
appears (created, or renamed in whole) is watched at once, then reported
(``DIR_CREATED``, ``DIR_MOVED_IN``): the intake lists it, so a file made in it before
its watch was in place is found too (the classic inotify race), and its subdirectories
are watched as that listing enters them (``cover``). The reader itself never lists: a
tree of a million files renamed in costs it one event per directory, and what the
intake takes in stays within its window. A directory renamed away loses its names (its
watches stay until the kernel drops them). When the kernel
has no watch left for this user (``fs.inotify.max_user_watches``), the directories
without one are found by passes alone: said once, and the intake passes over the tree
every ``poll_interval``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from workers.messages import FileEvent, FileEvents

log = logging.getLogger("foldermill")

MOVED_IN = "moved_in"  # renamed in: a finished hand-off
CREATED = "created"  # created in place: it must settle
WRITTEN = "written"  # written, or its attributes changed (an mtime set after a copy)
CLOSED_WRITE = "closed_write"  # closed after writing (IN_CLOSE_WRITE)
CLOSED = "closed"  # closed without writing (IN_CLOSE_NOWRITE)
GONE = "gone"  # deleted, or moved out (our claims too)
OPENED = "opened"  # opened, for reading or writing: not ready until it is closed
OVERFLOW = "overflow"  # the kernel dropped events (or the watch ended): look at the whole folder
DIR_MOVED_IN = "dir_moved_in"  # recursive: a directory renamed in whole (watched now: list it)
DIR_CREATED = "dir_created"  # recursive: a directory made here (watched now: list it)

# <sys/inotify.h>
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE = 0x2, 0x4, 0x8, 0x10
IN_OPEN, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x20, 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x2000, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_ISDIR = 0x1000000, 0x2000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
KINDS = ((IN_MOVED_TO, MOVED_IN), (IN_CREATE, CREATED), (IN_OPEN, OPENED), (IN_MODIFY, WRITTEN),
         (IN_ATTRIB, WRITTEN), (IN_CLOSE_WRITE, CLOSED_WRITE), (IN_CLOSE_NOWRITE, CLOSED),
         (IN_MOVED_FROM, GONE), (IN_DELETE, GONE))
WATCHED = IN_ONLYDIR | IN_DONT_FOLLOW | IN_DELETE_SELF | IN_MOVE_SELF
for _mask, _ in KINDS:
    WATCHED |= _mask
ENDED = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED  # the folder itself went
POLL_S = 1.0  # the reader's poll wakes this often at the least (a stop wakes it at once)
HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded
READ_BYTES = 1 << 18
_LIBC = ctypes.CDLL(None, use_errno=True)


class EventSink(Protocol):
    """Where the reader hands events over (the loop's inbox queue)."""

    def put(self, item: FileEvents | FileEvent) -> None: ...


def parse(data: bytes) -> tuple[list[FileEvent], bool]:
    """The events of one read of a flat folder's watch, and whether it ended.
    Directories are not files to process; an overflow is one ``OVERFLOW`` event."""
    events: list[FileEvent] = []
    ended = False
    for _, mask, raw in records(data):
        if mask & IN_Q_OVERFLOW:
            events.append(FileEvent(OVERFLOW, ""))
        elif mask & ENDED:
            ended = True
        elif raw and not mask & IN_ISDIR:
            name = os.fsdecode(raw)
            events.extend(FileEvent(kind, name) for bit, kind in KINDS if mask & bit)
    return events, ended


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(watch descriptor, mask, name) of each event in one read."""
    out = []
    offset, size, unpack = 0, HEADER.size, HEADER.unpack_from
    while offset + size <= len(data):
        wd, mask, _, length = unpack(data, offset)
        out.append((wd, mask, data[offset + size:offset + size + length].rstrip(b"\0")))
        offset += size + length
    return out


class Watch:
    """inotify on one folder and the thread that reads it (``stop`` ends both). A watch
    whose folder went (removed, moved, unmounted) or whose reads fail has ``ended``: the
    intake sets up a new one at its next pass."""

    def __init__(self, folder: Path, sink: EventSink, enters: Callable[[str], bool] | None = None) -> None:
        self.folder = str(folder)
        self.sink = sink
        self.ended = False
        self.stopped = False
        self.enters = enters  # recursive: whether a directory (relative path) is watched
        # The directories watched, both ways; the reader and the loop (``cover``) change them.
        self.dirs: dict[int, str] = {}  # watch descriptor -> its directory's prefix ("" or "a/b/")
        self.known: set[str] = set()  # the prefixes watched
        self.lock = threading.Lock()
        self.unwatched: set[str] = set()  # directories no watch could be had for (none left)
        self.short = ""  # why some directory has no watch: passes find its files
        self.short_said = False
        fds: list[int] = []
        try:
            self.fd = _call(_LIBC.inotify_init1, IN_NONBLOCK | IN_CLOEXEC)
            fds.append(self.fd)
            self.root = _call(_LIBC.inotify_add_watch, self.fd, os.fsencode(self.folder), WATCHED)
            self.dirs[self.root] = ""
            # The directories below are watched by the intake's first pass (``cover``), each
            # just before it is listed: nothing is made unseen, and no event is read twice.
            self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            fds += [self.wake_r, self.wake_w]
            self.thread = threading.Thread(target=self._read, name="file-events", daemon=True)
            self.thread.start()
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def stop(self) -> None:
        """End the reader (it wakes at once), then close the descriptors (once)."""
        if self.stopped:
            return
        self.stopped = True
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")
        self.thread.join(timeout=POLL_S * 10)
        if self.thread.is_alive():  # not closed under a reader still polling them: left to the exit
            return
        for fd in (self.fd, self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            ready = poller.poll(POLL_S * 1000)
            if any(fd == self.wake_r for fd, _ in ready):
                return
            if not ready:
                continue
            try:
                data = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._end(f"its reads fail ({exc})")
                return
            events, ended = parse(data) if self.enters is None else self._parse_tree(data)
            if events:
                self.sink.put(FileEvents(tuple(events)))
            if ended:
                self._end("the folder was removed, moved or unmounted")
                return

    def _parse_tree(self, data: bytes) -> tuple[list[FileEvent], bool]:
        """``parse`` for a tree: names by their relative path; a new directory watched
        and listed."""
        events: list[FileEvent] = []
        ended = False
        for wd, mask, raw in records(data):
            prefix = self.dirs.get(wd)
            if mask & IN_Q_OVERFLOW:  # the pass it asks for watches what the lost events made
                events.append(FileEvent(OVERFLOW, ""))
            elif mask & ENDED:
                if wd == self.root:
                    ended = True
                elif mask & IN_IGNORED:
                    with self.lock:
                        gone = self.dirs.pop(wd, None)
                        if gone is not None:
                            self.known.discard(gone)
            elif prefix is None or not raw:
                continue  # a directory renamed away, whose watch the kernel has not dropped yet
            elif mask & IN_ISDIR:
                rel = prefix + os.fsdecode(raw)
                if mask & IN_MOVED_FROM:
                    self._forget(rel + "/")
                elif mask & (IN_CREATE | IN_MOVED_TO) and self.enters is not None and self.enters(rel):
                    self._watch_dir(rel, WATCHED)  # first: a file made in it from now on has its event
                    events.append(FileEvent(DIR_MOVED_IN if mask & IN_MOVED_TO else DIR_CREATED, rel))
            else:
                name = prefix + os.fsdecode(raw)
                events.extend(FileEvent(kind, name) for bit, kind in KINDS if mask & bit)
        return events, ended

    def cover(self, rel: str) -> None:
        """The intake's pass is about to list ``rel``: watched first, if it is not (made
        while events were lost, or when no watch was left)."""
        if rel and rel + "/" not in self.known:
            self._watch_dir(rel, WATCHED)

    def _watch_dir(self, rel: str, mask: int) -> bool:
        """An inotify watch of ``rel`` with ``mask`` (a new one, or the mask of the one
        it has); False if it cannot be had (gone, not a directory, none left)."""
        try:
            wd = _call(_LIBC.inotify_add_watch, self.fd, os.fsencode(f"{self.folder}/{rel}"), mask)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._out_of_watches(rel)
            return False
        with self.lock:
            self.dirs[wd] = rel + "/"
            self.known.add(rel + "/")
            if self.unwatched and rel in self.unwatched:
                self.unwatched.discard(rel)
                if not self.unwatched:
                    self.short = ""
                    log.info("file events for all of %s again", self.folder)
        return True

    def _forget(self, prefix: str) -> None:
        """A directory renamed away: its watches name nothing any more (a rename back in
        is a new directory)."""
        with self.lock:
            for wd in [wd for wd, p in self.dirs.items() if p.startswith(prefix)]:
                self.known.discard(self.dirs.pop(wd))

    def _out_of_watches(self, rel: str) -> None:
        """No inotify watch left for this user: passes find the files of ``rel`` (said
        once; each pass tries again, and says when every directory has one)."""
        with self.lock:
            if len(self.unwatched) < 100_000:
                self.unwatched.add(rel)
        if not self.short:
            self.short = f"no inotify watch left for {self.folder}/{rel} (fs.inotify.max_user_watches)"
            if not self.short_said:
                self.short_said = True
                log.warning("%s: directories without a watch are found by passes over the tree every "
                            "poll_interval", self.short)
            self.sink.put(FileEvent(OVERFLOW, ""))

    def _end(self, why: str) -> None:
        """The watch is over: said, and a pass over the folder asked for at once."""
        log.warning("file events of %s ended: %s; passes over the folder find files meanwhile", self.folder, why)
        self.ended = True
        self.sink.put(FileEvent(OVERFLOW, ""))


def _call(fn: Any, *args: Any) -> int:
    """A libc call that returns -1 and sets errno on failure, as an OSError."""
    result = fn(*args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{fn.__name__}: {os.strerror(code)}")
    return int(result)


class Fence:
    """A hidden file created and removed just before a listing of the folder: the events
    that come before its own were queued before the listing began, so what they report
    is already in it (they must not count again). From the listing's end until the
    fence's event comes (or for ``TIMEOUT_S``, if it was lost to an overflow), events do
    not count. Each listing has a fence of its own name; a late one of an earlier
    listing changes nothing. (Files that arrive *during* a listing, beyond the window,
    are counted by both: an error the next pass puts right.)"""

    TIMEOUT_S = 5.0

    def __init__(self, folder: Path) -> None:
        self.prefix = f".fm-pass-{os.getpid()}-{os.urandom(3).hex()}-"
        self.folder = str(folder)
        self.seq = 0
        self.waiting = ""  # the fence whose event has not come yet
        self.since = 0.0

    def put(self) -> str:
        """Create and remove the next fence; its name, or "" if it could not be made."""
        self.seq += 1
        name = f"{self.prefix}{self.seq}"
        path = f"{self.folder}/{name}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
            os.unlink(path)
        except OSError:
            return ""
        return name

    def raised(self, name: str) -> None:
        """The listing is done: events stop counting until ``name``'s event comes."""
        if name:
            self.waiting, self.since = name, time.monotonic()

    def passed(self, name: str) -> bool:
        """An event of ``name``: whether it is a fence's own (then it is consumed)."""
        if not name.startswith(self.prefix):
            return False
        if name == self.waiting:
            self.waiting = ""
        return True

    def counting(self) -> bool:
        """Whether events count now."""
        return not self.waiting or time.monotonic() - self.since > self.TIMEOUT_S


class Watching:
    """The intake's file events for one folder: a ``Watch`` when inotify gives one, set
    up again when it ends. Where inotify cannot watch (no more instances or watches for
    this user, another OS), passes over the folder alone find files: said once, and
    tried again at each pass."""

    def __init__(self, folder: Path, enters: Callable[[str], bool] | None = None) -> None:
        self.folder = folder
        self.enters = enters
        self.watch: Watch | None = None
        self.sink: EventSink | None = None
        self.unwatched = False  # no events could be had (said once)

    def start(self, sink: EventSink) -> None:
        """Events arrive in ``sink`` as ``FileEvents`` messages, one per read."""
        self.sink = sink
        try:
            self.watch = Watch(self.folder, sink, self.enters)
        except (OSError, AttributeError) as exc:
            self.watch = None
            if not self.unwatched:
                log.warning("no file events for %s (%s): passes over the folder every poll_interval find files",
                            self.folder, exc)
            self.unwatched = True
            return
        if self.unwatched:
            log.info("file events for %s again", self.folder)
        self.unwatched = False

    def renew(self) -> bool:
        """A watch that ended, or never began, set up again; whether one is now."""
        if self.sink is None or (self.watch is not None and not self.watch.ended):
            return False
        self.stop()
        self.start(self.sink)
        return self.watch is not None

    def active(self) -> bool:
        """Whether events tell of every file (a watch on every directory entered)."""
        return self.watch is not None and not self.watch.short

    def cover(self, rel: str) -> None:
        """A directory the intake's pass is about to list: watched first."""
        if self.watch is not None and self.enters is not None:
            self.watch.cover(rel)

    def problem(self) -> str:
        """Why some files are found by passes alone ("" if events tell of all)."""
        if self.watch is None:
            return "no file events (inotify): passes over the folder find files" if self.sink else ""
        return self.watch.short

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
