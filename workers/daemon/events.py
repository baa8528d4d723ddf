"""File events: watchdog's inotify observer tells the supervisor the moment a file is
renamed into ``unprocessed/``, created or written there, or leaves it. The periodic pass
over the folder stays the safety net (network filesystems, where inotify sees nothing),
and an overflow of the kernel's event queue is reported (``OVERFLOW``) so a pass runs at
once: a lost event costs latency only, never a file.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from workers.messages import FileEvent

try:  # the full emitter tells a rename-in from a create; Linux only
    from watchdog.observers.inotify import InotifyObserver
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
except ImportError:  # pragma: no cover - other platforms fall back to the default observer
    InotifyObserver = None  # type: ignore[assignment,misc]
    InotifyMoveEventGrouper = None  # type: ignore[assignment,misc]

MOVED_IN = "moved_in"  # renamed in: a finished hand-off
CREATED = "created"  # created in place: it must settle
WRITTEN = "written"  # written
CLOSED_WRITE = "closed_write"  # closed after writing (IN_CLOSE_WRITE)
CLOSED = "closed"  # closed without writing (IN_CLOSE_NOWRITE)
GONE = "gone"  # deleted, or moved out (our claims too)
OPENED = "opened"  # opened, for reading or writing: not ready until it is closed
OVERFLOW = "overflow"  # the kernel dropped events: look at the whole folder
# watchdog reports a queue overflow only in its log (7.1: InotifyFD.handle_event)
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
OVERFLOW_MESSAGE = "Inotify queue overflowed"


KINDS = ((FileDeletedEvent, GONE), (FileCreatedEvent, CREATED), (FileOpenedEvent, OPENED),
         (FileModifiedEvent, WRITTEN), (FileClosedEvent, CLOSED_WRITE), (FileClosedNoWriteEvent, CLOSED))


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: str, inbox: queue.Queue) -> None:
        self.folder = folder
        self.inbox = inbox

    def _name(self, path: str | bytes) -> str | None:
        path = os.fsdecode(path)
        head, _, name = path.rpartition("/")
        return name if head == self.folder and name else None

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Runs on the observer's thread: only hand the news over.
        if event.is_directory:
            return
        put = self.inbox.put
        if isinstance(event, FileMovedEvent):
            gone, came = self._name(event.src_path), self._name(event.dest_path)
            if gone:
                put(FileEvent(GONE, gone))
            if came:
                put(FileEvent(MOVED_IN, came))
            return
        kind = next((k for cls, k in KINDS if isinstance(event, cls)), None)
        name = self._name(event.src_path) if kind else None
        if kind and name:
            put(FileEvent(kind, name))


class _Overflow(logging.Handler):
    """Turns watchdog's log line about an inotify queue overflow into an event."""

    def __init__(self, inbox: queue.Queue) -> None:
        super().__init__(logging.WARNING)
        self.inbox = inbox

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(OVERFLOW_MESSAGE):
            self.inbox.put(FileEvent(OVERFLOW, ""))


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


def start_observer(folder: Path, inbox: queue.Queue) -> object:
    """Watch ``folder`` (not recursively); events arrive in ``inbox`` as
    ``FileEvent`` messages."""
    if InotifyMoveEventGrouper is not None:
        # watchdog holds an unpaired IN_MOVED_FROM for 0.5 s to pair it with its
        # IN_MOVED_TO, in a FIFO, so every event behind it waits too. Each claim moves a
        # file out of unprocessed/, so every pickup would then wait 0.5 s. Only a move's
        # destination matters here: pairing is not needed (test_rename_in_is_picked_up...).
        InotifyMoveEventGrouper.delay = 0
    observer = InotifyObserver(generate_full_events=True) if InotifyObserver is not None else Observer()
    watchdog_log = logging.getLogger(OVERFLOW_LOGGER)
    for handler in [h for h in watchdog_log.handlers if isinstance(h, _Overflow)]:
        watchdog_log.removeHandler(handler)  # one observer per process
    watchdog_log.addHandler(_Overflow(inbox))
    if watchdog_log.getEffectiveLevel() > logging.WARNING:
        watchdog_log.setLevel(logging.WARNING)
    observer.schedule(_Handler(str(folder), inbox), str(folder), recursive=False)
    observer.daemon = True
    observer.start()
    return observer
