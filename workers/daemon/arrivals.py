"""What a file event tells the intake: the count and the window of the backlog follow
it, readiness learns how the file arrived (renamed in, written in place, open, closed),
and a directory's ready marker brings its files in. Only the one file is looked at."""

from __future__ import annotations

from collections.abc import Callable

from workers.daemon.backlog import Backlog
from workers.daemon.events import (
    CLOSED,
    CLOSED_WRITE,
    CREATED,
    DIR_CREATED,
    DIR_MOVED_IN,
    GONE,
    MOVED_IN,
    OPENED,
    OVERFLOW,
    WRITTEN,
    Fence,
)
from workers.queue import FolderQueue
from workers.readiness import Readiness, WriterWatch


class Arrivals:
    """The intake's reading of file events (``note``)."""

    def __init__(self, queue: FolderQueue, backlog: Backlog, readiness: Readiness, writers: WriterWatch,
                 fence: Fence, lost: Callable[[], None], cover: Callable[[str], None]) -> None:
        self.queue = queue
        self.backlog = backlog
        self.readiness = readiness
        self.writers = writers
        self.fence = fence
        self.lost = lost  # events were lost: the intake passes over the folder soon
        self.cover = cover  # a directory about to be listed: watched first
        self.claimed_out: set[str] = set()  # our claims whose "gone" event has not come yet

    def note(self, kind: str, name: str) -> None:
        """A file event: the count and the window follow it; readiness learns how the
        file arrived. Only the one file is looked at."""
        if kind == OVERFLOW:
            self.lost()
            return
        if kind in (DIR_MOVED_IN, DIR_CREATED):
            self.listed(name, MOVED_IN if kind == DIR_MOVED_IN else CREATED)
            return
        queue, backlog = self.queue, self.backlog
        if self.fence.passed(name):
            return
        if not queue.is_candidate_name(name):
            marked = queue.marked_by(name) if kind != GONE else None
            if marked is not None:
                backlog.unpark([marked])  # its ready marker came
            elif queue.dir_marker and kind in (CREATED, MOVED_IN) and name.endswith("/" + queue.dir_marker):
                self.delivered(name.rpartition("/")[0])
            return
        if queue.dir_marker and "/" in name and kind != GONE and not queue.marked(name.rpartition("/")[0]):
            return  # its directory is not delivered yet: its marker's event brings it
        if kind == OPENED:
            self.writers.arrived(name)  # the next claim looks at /proc again too
            self.readiness.note_opened(name)  # not ready until it is closed
            return
        if kind in (CLOSED, CLOSED_WRITE):
            self.writers.arrived(name)  # a writer the last look at /proc saw may be gone: look again
            self.readiness.note_closed(name)
            if kind == CLOSED:
                backlog.unpark([name])  # judged again in its turn
                return
            kind = WRITTEN
        if kind == GONE:
            if name in self.claimed_out:  # our claim: an open counted before it was of that file
                self.claimed_out.discard(name)
            else:
                if self.fence.counting():
                    backlog.departed()
                backlog.gone(name)
            self.readiness.gone(name)
            return
        seen = queue.look(name)
        if kind in (MOVED_IN, CREATED) and self.fence.counting() and not (seen and backlog.holds(name, seen.mtime_ns)):
            backlog.arrived(seen.size if seen else 0)
        if seen is None:
            return
        if kind != WRITTEN:  # new here: the next claim of it looks at /proc afresh
            self.writers.arrived(name)
        if kind != MOVED_IN:
            self.readiness.note_written(name)  # written in place: it must settle
        if backlog.admits(seen.mtime_ns, name):
            if kind == MOVED_IN:
                self.readiness.note_moved_in(name)
            backlog.put(name, seen.mtime_ns)
        # Otherwise it waits beyond the window, for a later pass (an entry it had in the
        # window, with an older mtime, is dropped when its turn comes).

    def delivered(self, rel_dir: str) -> None:
        """A directory's marker came: its files join the backlog (as files renamed in:
        the marker says they are written; /proc is looked at before each claim)."""
        self.listed(rel_dir, MOVED_IN)

    def listed(self, rel_dir: str, kind: str) -> None:
        """A directory appeared (or was delivered): its files, and its subdirectories'
        (each watched before it is listed), join the count and, as far as the window
        goes, the backlog, as files renamed in (``MOVED_IN``) or written in place
        (``CREATED``: they settle); /proc is looked at before each is claimed."""
        backlog, counting = self.backlog, self.fence.counting()
        for mtime_ns, name, size, _ino, _mode in self.queue.waiting(rel_dir, entering=self.cover):
            if backlog.holds(name, mtime_ns):
                continue
            if counting:
                backlog.arrived(size)
            if backlog.admits(mtime_ns, name):
                self.writers.arrived(name)
                if kind == MOVED_IN:
                    self.readiness.note_moved_in(name)
                else:
                    self.readiness.note_written(name)
                backlog.put(name, mtime_ns)
