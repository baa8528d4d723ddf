"""The backlog: the files waiting in ``unprocessed/``, oldest first, in memory bounded
whatever the folder holds.

It holds a *window*: at most ``backlog_window`` of the oldest waiting files (mtime, then
name), found by one streaming pass over the folder that keeps only the oldest
(``heapq.nsmallest``: O(N log W) time, O(W) memory, about 160 bytes a file), the way
Logstash's file input keeps a window of files and Camel caps ``maxMessagesPerPoll``.
When the folder holds more than the window, the newest file in it is the *horizon*: a
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
        self.parked: dict[str, int] = {}  # name -> mtime_ns: in the window, not ready yet, out of the order
        self.horizon: Key | None = None  # None: every waiting file is in the window
        self.total = 0  # files waiting in unprocessed/
        self.total_bytes = 0
        self.pass_cost = 0.0  # seconds the last pass took

    def __len__(self) -> int:
        return len(self.order) - self.head + len(self.parked)

    @property
    def complete(self) -> bool:
        """Every waiting file is in the window."""
        return self.horizon is None

    def refill(self, found: Iterable[tuple[int, str, int, int, int]]) -> None:
        """A pass over the folder (``FolderQueue.waiting()``): the window becomes its
        oldest files, the count becomes exact."""
        started = time.perf_counter()
        total = size = 0

        def keys() -> Iterator[Key]:
            nonlocal total, size
            for mtime_ns, name, bytes_, _ino, _mode in found:
                total += 1
                size += bytes_
                yield mtime_ns, name

        self.order, self.head, self.parked = [], 0, {}
        oldest = smallest(self.window + 1, keys())
        self.horizon = oldest.pop() if len(oldest) > self.window else None
        self.order = oldest
        self.total, self.total_bytes = total, size
        self.pass_cost = time.perf_counter() - started

    def admits(self, mtime_ns: int, name: str) -> bool:
        """Whether a file of this age belongs in the window (it is older than the horizon)."""
        return self.horizon is None or (mtime_ns, name) < self.horizon

    def holds(self, name: str, mtime_ns: int) -> bool:
        """Whether this file, with this mtime, is in the window."""
        if self.parked.get(name) == mtime_ns:
            return True
        key = (mtime_ns, name)
        at = bisect.bisect_left(self.order, key, lo=self.head)
        return at < len(self.order) and self.order[at] == key

    def put(self, name: str, mtime_ns: int) -> None:
        """A file in the window in its turn (new, with a new mtime, or parked till now)."""
        if self.parked.pop(name, None) == mtime_ns or not self.holds(name, mtime_ns):
            bisect.insort(self.order, (mtime_ns, name), lo=self.head)

    def take(self) -> Key | None:
        """The next file in order, out of it: the caller claims it, parks it, puts it
        back with a new mtime, or drops it. None: the order is empty."""
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
        if self.head < len(self.order) and self.order[self.head][1] == name:
            self.head += 1

    def park(self, name: str, mtime_ns: int) -> None:
        """Not ready yet: out of the order until ``unpark``."""
        self.parked[name] = mtime_ns

    def unpark(self, names: Iterable[str] | None = None) -> None:
        """Parked files back in their turn (all of them, or those of ``names``)."""
        if names is None:
            if self.parked:
                self.order = sorted(self.order[self.head:] + [(m, n) for n, m in self.parked.items()])
                self.head, self.parked = 0, {}
            return
        for name in names:
            mtime_ns = self.parked.pop(name, None)
            if mtime_ns is not None:
                bisect.insort(self.order, (mtime_ns, name), lo=self.head)

    def arrived(self, size: int) -> None:
        self.total += 1
        self.total_bytes += size

    def departed(self, size: int = 0) -> None:
        self.total = max(0, self.total - 1)
        self.total_bytes = max(0, self.total_bytes - size)

    def oldest_mtime_ns(self) -> int | None:
        """The mtime of the oldest waiting file (the window holds the oldest)."""
        first = self.peek()
        oldest = first[0] if first else None
        if self.parked:
            parked = min(self.parked.values())
            oldest = parked if oldest is None else min(oldest, parked)
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
