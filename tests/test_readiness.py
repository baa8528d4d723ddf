"""open_for_writing against real processes that hold files open in a real folder."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import wait_for
from workers.readiness import open_for_writing

# Opens argv[1] with mode argv[2], says so, and keeps it open until stdin closes.
HOLDER = "import sys\nf = open(sys.argv[1], sys.argv[2])\nprint('open', flush=True)\nsys.stdin.read()\n"


class Holder:
    """A real process holding one file open; ``close()`` ends it (and so its fd)."""

    def __init__(self, path: Path, mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "open\n"  # it has the file open now

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            assert self.proc.wait(timeout=10) == 0
        self.proc.stdout.close()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for h in started:
        h.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path.resolve() / "unprocessed"
    path.mkdir()
    return path


@pytest.mark.parametrize("mode", ["w", "a", "r+"])
def test_a_file_held_open_for_writing_is_reported_until_it_is_closed(folder: Path, holders, mode: str) -> None:
    (folder / "busy.log").write_text("start\n")
    (folder / "idle.log").write_text("done\n")
    holder = Holder(folder / "busy.log", mode)
    holders.append(holder)
    assert open_for_writing(str(folder)) == {"busy.log"}
    assert open_for_writing(str(folder) + "/") == {"busy.log"}
    holder.close()
    wait_for(lambda: open_for_writing(str(folder)) == set(), 10, "busy.log no longer open for writing")


def test_a_file_open_read_only_is_not_reported(folder: Path, holders) -> None:
    (folder / "read.log").write_text("x\n")
    holders.append(Holder(folder / "read.log", "r"))
    assert open_for_writing(str(folder)) == set()


def test_only_files_directly_in_the_folder_count(folder: Path, holders) -> None:
    (folder / "sub").mkdir()
    (folder.parent / "unprocessed-other").mkdir()
    holders.append(Holder(folder / "sub" / "deep.log", "w"))
    holders.append(Holder(folder.parent / "unprocessed-other" / "near.log", "w"))  # a name sharing the prefix
    holders.append(Holder(folder / "mine.log", "w"))
    assert open_for_writing(str(folder)) == {"mine.log"}


def test_the_file_events_of_a_folder_as_the_kernel_tells_them(tmp_path: Path) -> None:
    """The inotify reader (workers/daemon/events.py) on a real folder: each kind the
    intake uses, in order, for any bytes in a name; a directory is no file; the
    folder's removal ends the watch with an OVERFLOW (a pass then says what is wrong)."""
    import os
    import queue

    from workers.daemon.events import CLOSED, CLOSED_WRITE, CREATED, GONE, MOVED_IN, OPENED, OVERFLOW, WRITTEN, Watch

    folder, beside = tmp_path / "unprocessed", tmp_path / "beside"
    folder.mkdir()
    beside.mkdir()
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    seen: list[tuple[str, str]] = []

    def drain() -> list[tuple[str, str]]:
        return events_in(inbox, seen)

    watch = Watch(folder, inbox)
    try:
        raw = os.fsdecode(b"r\xe9sum\xe9.log")  # not UTF-8
        with open(folder / raw, "w") as f:
            f.write("x\n")
        (folder / raw).read_text()
        (beside / "in.log").write_text("y\n")
        os.rename(beside / "in.log", folder / "in.log")
        os.utime(folder / "in.log", (1, 1))
        (folder / "sub").mkdir()
        os.rename(folder / "in.log", beside / "out.log")
        (folder / raw).unlink()
        wait_for(lambda: (GONE, raw) in drain(), 10, "the events up to the removal")
        assert seen == [(CREATED, raw), (OPENED, raw), (WRITTEN, raw), (CLOSED_WRITE, raw), (OPENED, raw),
                        (CLOSED, raw), (MOVED_IN, "in.log"), (WRITTEN, "in.log"), (GONE, "in.log"), (GONE, raw)]
        os.rmdir(folder / "sub")
        os.rmdir(folder)
        wait_for(lambda: (OVERFLOW, "") in drain(), 10, "the end of the watch, said as an overflow")
        wait_for(lambda: not watch.thread.is_alive(), 5, "the reader to end with its folder")
        assert watch.ended
    finally:
        watch.stop()
    watch.stop()  # twice is harmless


def test_a_watch_that_ended_is_set_up_again_at_the_next_pass(tmp_path: Path) -> None:
    import os
    import queue

    from workers.daemon.events import CREATED, OVERFLOW, Watching

    folder = tmp_path / "unprocessed"
    folder.mkdir()
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    seen: list[tuple[str, str]] = []

    def drain() -> list[tuple[str, str]]:
        return events_in(inbox, seen)

    events = Watching(folder)
    events.start(inbox)
    try:
        assert events.active() and not events.renew()  # a live watch is kept
        os.rename(folder, tmp_path / "moved-away")
        folder.mkdir()
        wait_for(lambda: (OVERFLOW, "") in drain(), 10, "the end of the watch of the folder moved away")
        assert events.renew() and events.active()
        (folder / "new.log").write_text("x\n")
        wait_for(lambda: (CREATED, "new.log") in drain(), 10, "an event from the new folder's watch")
    finally:
        events.stop()


def events_in(inbox: object, seen: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(kind, name) of every event handed to ``inbox`` so far, appended to ``seen``."""
    import queue

    from workers.messages import FileEvents

    assert isinstance(inbox, queue.SimpleQueue)
    while not inbox.empty():
        item = inbox.get()
        seen.extend((e.kind, e.name) for e in (item.events if isinstance(item, FileEvents) else (item,)))
    return seen
