"""File events: watchdog's inotify observer wakes the supervisor the moment a file is
renamed into ``unprocessed/`` or written there. The periodic rescan stays the safety
net (event queue overflow, network filesystems), so a lost event costs latency only.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

try:  # the full emitter tells a rename-in from a create; Linux only
    from watchdog.observers.inotify import InotifyObserver
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
except ImportError:  # pragma: no cover - other platforms fall back to the default observer
    InotifyObserver = None  # type: ignore[assignment,misc]
    InotifyMoveEventGrouper = None  # type: ignore[assignment,misc]

MOVED_IN = "moved_in"
WRITTEN = "written"


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: str, inbox: queue.Queue) -> None:
        self.folder = folder
        self.inbox = inbox

    def _name(self, path: str | bytes) -> str | None:
        path = os.fsdecode(path)
        head, _, name = path.rpartition("/")
        return name if head == self.folder and name else None

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Runs on the observer's thread: only hand the news over, idempotently.
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            name = self._name(event.dest_path)
            if name:
                self.inbox.put(("fs", MOVED_IN, name))
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent | FileClosedEvent):
            name = self._name(event.src_path)
            if name:
                self.inbox.put(("fs", WRITTEN, name))


def start_observer(folder: Path, inbox: queue.Queue) -> object:
    """Watch ``folder`` (not recursively); events arrive in ``inbox`` as
    ("fs", MOVED_IN | WRITTEN, name)."""
    if InotifyMoveEventGrouper is not None:
        # watchdog holds an unpaired IN_MOVED_FROM for 0.5 s to pair it with its
        # IN_MOVED_TO, in a FIFO, so every event behind it waits too. Each claim moves a
        # file out of unprocessed/, so every pickup would then wait 0.5 s. Only a move's
        # destination matters here: pairing is not needed (test_rename_in_is_picked_up...).
        InotifyMoveEventGrouper.delay = 0
    observer = InotifyObserver(generate_full_events=True) if InotifyObserver is not None else Observer()
    observer.schedule(_Handler(str(folder), inbox), str(folder), recursive=False)
    observer.daemon = True
    observer.start()
    return observer
