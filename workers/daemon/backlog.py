"""The backlog: the files waiting in ``unprocessed/``, oldest first, in memory bounded
whatever the folder holds.

It holds a *window*: at most ``backlog_window`` of the oldest waiting files (mtime, then
name), found by one streaming pass over the folder that keeps only the oldest
(``heapq.nsmallest``: O(N log W) time, O(W) memory, about 160 bytes a file), the way
Logstash's file input keeps a window of files and Camel caps ``maxMessagesPerPoll``.
When the folder holds more than the window, the oldest file left out is the *horizon*: a
file that arrives meanwhile joins the window only if it is older than the horizon (it
must be claimed before the files beyond it); the others are found by the next pass,
which runs when the window has run dry. So claims stay in backlog order, and a pass over
a million files runs once per ``backlog_window`` claims, not once per file.

The window is a sorted list and a head: claims take from the head, an older arrival is
inserted in its place. Entries are checked when taken (the intake lstats each file it
is about to claim), so a file that left or was rewritten meanwhile is dropped or moved
to its new turn then; nothing is looked up by name alone.

Beside the window it keeps the number of files waiting: exact after each pass, then
maintained from the file events and our claims. An event lost to an inotify overflow,
or a waiting file replaced by a rename, leaves it off until the next pass.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time
from collections.abc import Iterable, Iterator

WINDOW = 100_000

Key = tuple[int, str]  # (mtime_ns, name): the claim order


class Backlog:
    """The window of the oldest waiting files, their order, and the count of all."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.order: list[Key] = []  # sorted; entries before ``head`` are taken
        self.head = 0
        # Files of the window that are not ready, out of the order: ``parked`` until an
        # event (their marker, the end of a flight of their name, a close), ``timed``
        # until a time (settle, a backoff). Kept across passes, so that files which stay
        # unready never take the window's room from the files behind them.
        self.parked: dict[str, int] = {}  # name -> mtime_ns
        self.timed: dict[str, int] = {}
        self.horizon: Key | None = None  # None: every waiting file is in the window
        self.total = 0  # files waiting in unprocessed/
        self.total_bytes = 0
        self.pass_cost = 0.0  # seconds the last pass took

    def __len__(self) -> int:
        return len(self.order) - self.head + len(self.parked) + len(self.timed)

    @property
    def complete(self) -> bool:
        """Every waiting file is in the window."""
        return self.horizon is None

    def refill(self, found: Iterable[tuple[int, str, int, int, int]]) -> None:
        """A pass over the folder (``FolderQueue.waiting()``): the window becomes its
        oldest files that are not parked, parked files that are gone are forgotten, and
        the count becomes exact."""
        started = time.perf_counter()
        total = size = 0
        parked, timed = self.parked, self.timed
        still: set[str] = set()

        def keys() -> Iterator[Key]:
            nonlocal total, size
            for mtime_ns, name, bytes_, _ino, _mode in found:
                total += 1
                size += bytes_
                if name in parked or name in timed:
                    still.add(name)
                    continue
                yield mtime_ns, name

        self.order, self.head = [], 0
        oldest = smallest(self.window + 1, keys())
        self.horizon = oldest.pop() if len(oldest) > self.window else None
        self.order = oldest
        self.parked = {n: m for n, m in parked.items() if n in still}
        self.timed = {n: m for n, m in timed.items() if n in still}
        self.total, self.total_bytes = total, size
        self.pass_cost = time.perf_counter() - started

    def admits(self, mtime_ns: int, name: str) -> bool:
        """Whether a file of this age belongs in the window (it is older than the
        horizon, the oldest file left out of it)."""
        return self.horizon is None or (mtime_ns, name) < self.horizon

    def holds(self, name: str, mtime_ns: int) -> bool:
        """Whether this file, with this mtime, is in the window."""
        if self.parked.get(name) == mtime_ns or self.timed.get(name) == mtime_ns:
            return True
        key = (mtime_ns, name)
        at = bisect.bisect_left(self.order, key, lo=self.head)
        return at < len(self.order) and self.order[at] == key

    def put(self, name: str, mtime_ns: int) -> None:
        """A file in the window in its turn (new, with a new mtime, or parked till now).
        Past the window's size the newest file in it is left out: it becomes the horizon."""
        was = self.parked.pop(name, None)
        if was is None:
            was = self.timed.pop(name, None)
        if was == mtime_ns or not self.holds(name, mtime_ns):
            bisect.insort(self.order, (mtime_ns, name), lo=self.head)
            if len(self.order) - self.head > self.window:
                self.horizon = self.order.pop()

    def take(self) -> Key | None:
        """The next file in order, out of it: the caller claims it, parks it, puts it
        back, or drops it. None: the order is empty."""
        if self.head >= len(self.order):
            return None
        key = self.order[self.head]
        self.head += 1
        if self.head > 4096 and self.head * 2 > len(self.order):
            del self.order[:self.head]  # what was taken goes, now and then
            self.head = 0
        return key

    def peek(self) -> Key | None:
        return self.order[self.head] if self.head < len(self.order) else None

    def gone(self, name: str) -> None:
        """It left the folder (an event said so): out of the window if that is cheap to
        see (parked, or next in order); elsewhere it is dropped when its turn comes."""
        self.parked.pop(name, None)
        self.timed.pop(name, None)
        if self.head < len(self.order) and self.order[self.head][1] == name:
            self.head += 1

    def park(self, name: str, mtime_ns: int, timed: bool = False) -> None:
        """Not ready yet: out of the order until ``unpark`` (``timed``: until a time
        comes, otherwise until an event). At most a window's worth are parked: past that
        a file is left for a later pass."""
        if len(self.parked) + len(self.timed) < self.window:
            (self.timed if timed else self.parked)[name] = mtime_ns

    def unpark(self, names: Iterable[str] | None = None, timed_only: bool = False) -> None:
        """Parked files back in their turn: all of them (or the timed ones), or those of
        ``names``."""
        if names is None:
            back = list(self.timed.items()) if timed_only else [*self.parked.items(), *self.timed.items()]
            if back:
                self.order = sorted(self.order[self.head:] + [(m, n) for n, m in back])
                self.head = 0
                self.timed = {}
                if not timed_only:
                    self.parked = {}
            return
        for name in names:
            mtime_ns = self.parked.pop(name, None)
            if mtime_ns is None:
                mtime_ns = self.timed.pop(name, None)
            if mtime_ns is not None:
                bisect.insort(self.order, (mtime_ns, name), lo=self.head)

    def arrived(self, size: int) -> None:
        self.total += 1
        self.total_bytes += size

    def departed(self, size: int = 0) -> None:
        self.total = max(0, self.total - 1)
        self.total_bytes = max(0, self.total_bytes - size)

    def oldest_mtime_ns(self) -> int | None:
        """The mtime of the oldest waiting file: the window's oldest, or the horizon when
        the window is empty."""
        first = self.peek()
        oldest = first[0] if first else None
        for held in (self.parked, self.timed):
            if held:
                least = min(held.values())
                oldest = least if oldest is None else min(oldest, least)
        if oldest is None and self.horizon is not None:
            oldest = self.horizon[0]
        return oldest


# heapq's max-heap helpers (public from Python 3.14, private before).
_heapify_max = getattr(heapq, "heapify_max", None) or getattr(heapq, "_heapify_max")  # noqa: B009
_heapreplace_max = getattr(heapq, "heapreplace_max", None) or getattr(heapq, "_heapreplace_max")  # noqa: B009


def smallest(count: int, keys: Iterable[Key]) -> list[Key]:
    """The ``count`` smallest keys, sorted, in one pass holding ``count`` of them (what
    ``heapq.nsmallest`` does, without its tie-breaking pair per key, which doubles the
    memory of a pass)."""
    it = iter(keys)
    kept = list(itertools.islice(it, count))
    _heapify_max(kept)
    if len(kept) == count:
        top = kept[0]
        for key in it:
            if key < top:
                _heapreplace_max(kept, key)
                top = kept[0]
    kept.sort()
    return kept
