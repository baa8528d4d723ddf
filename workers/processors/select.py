"""Built-ins that keep some lines and drop (or divert) the others: filter, dedupe,
sample."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from hashlib import blake2b
from itertools import compress
from operator import not_

from .base import (
    OptionError,
    Pair,
    Processor,
    Routes,
    compile_regex,
    optional_tag,
    require_bool,
    require_int,
    require_tag,
)


def _kept(tag: str, positions: list[int], n: int) -> Routes:
    """Routes sending ``positions`` (ascending) of ``n`` lines to ``tag``."""
    if not positions:
        return []
    return [(tag, None if len(positions) == n else positions, None)]


class Filter(Processor):
    """Keep only the lines matching ``keep``, or drop the lines matching ``drop``."""

    name = "filter"

    def __init__(
        self,
        *,
        keep: str | None = None,
        drop: str | None = None,
        ignore_case: bool = False,
        next: str = "end",  # shadows the builtin: it is the option's name
    ) -> None:
        ignore_case = require_bool("ignore_case", ignore_case)
        if keep is None and drop is None:
            raise OptionError("keep", "one of keep or drop is required")
        if keep is not None and drop is not None:
            raise OptionError("drop", "cannot be given together with keep")
        self.keeping = keep is not None
        key, pattern = ("keep", keep) if self.keeping else ("drop", drop)
        self.search = compile_regex(key, pattern, ignore_case).search
        self.next = require_tag("next", next)

    def emits(self) -> dict[str, str]:
        return {self.next: "next"}

    def process(self, lines: list[str]) -> Iterator[Pair]:
        search, keeping, next_ = self.search, self.keeping, self.next
        for line in lines:
            if (search(line) is not None) is keeping:
                yield next_, line

    def process_batch(self, lines: list[str]) -> Routes:
        hits = map(self.search, lines)
        wanted = hits if self.keeping else map(not_, hits)
        return _kept(self.next, list(compress(range(len(lines)), wanted)), len(lines))


class Dedupe(Processor):
    """Drop a line identical to an earlier line of the same file.

    Memory stays bounded: a 16-byte blake2b digest per distinct line, at most
    ``max_entries`` of them; past that the oldest digest is forgotten (first in,
    first out), so a line whose digest was forgotten passes again.
    """

    name = "dedupe"

    def __init__(self, *, max_entries: int = 1_000_000, next: str = "end") -> None:
        self.max_entries = require_int("max_entries", max_entries, minimum=1)
        self.next = require_tag("next", next)
        self.seen: set[bytes] = set()
        self.order: deque[bytes] = deque()  # same digests, oldest first, for eviction

    def emits(self) -> dict[str, str]:
        return {self.next: "next"}

    def admit(self, digest: bytes) -> bool:
        """Remember ``digest``; False when it was already remembered."""
        if digest in self.seen:
            return False
        self.seen.add(digest)
        self.order.append(digest)
        if len(self.order) > self.max_entries:
            self.seen.discard(self.order.popleft())
        return True

    def process(self, lines: list[str]) -> Iterator[Pair]:
        admit, next_ = self.admit, self.next
        for line in lines:
            # surrogatepass keeps the encoding one-to-one (surrogateescape is not).
            if admit(blake2b(line.encode("utf-8", "surrogatepass"), digest_size=16).digest()):
                yield next_, line

    def process_batch(self, lines: list[str]) -> Routes:
        digests = [blake2b(line.encode("utf-8", "surrogatepass"), digest_size=16).digest() for line in lines]
        seen = self.seen
        if len(seen) + len(digests) <= self.max_entries:
            # Nothing can be evicted in this batch: inline admit(). set.add returns
            # None, so `not add(d)` records d and is true.
            add = seen.add
            kept = [i for i, d in enumerate(digests) if d not in seen and not add(d)]
            self.order.extend([digests[i] for i in kept])
        else:
            admit = self.admit
            kept = [i for i, d in enumerate(digests) if admit(d)]
        return _kept(self.next, kept, len(lines))


class Sample(Processor):
    """Keep every ``every``-th line this node sees (0-based index i with
    ``i % every == offset``); send the others to ``rest`` or drop them."""

    name = "sample"

    def __init__(self, *, every: int, offset: int = 0, rest: str = "", next: str = "end") -> None:
        self.every = require_int("every", every, minimum=1)
        self.offset = require_int("offset", offset, minimum=0)
        if self.offset >= self.every:
            raise OptionError("offset", f"must be less than every ({self.every}), got {offset}")
        self.rest = optional_tag("rest", rest)
        self.next = require_tag("next", next)
        self.seen = 0  # lines seen so far, i.e. the index of the next one

    def emits(self) -> dict[str, str]:
        tags = {self.next: "next"}
        if self.rest:
            tags.setdefault(self.rest, "rest")
        return tags

    def process(self, lines: list[str]) -> Iterator[Pair]:
        every, offset, rest, next_ = self.every, self.offset, self.rest, self.next
        for line in lines:
            index = self.seen
            self.seen = index + 1  # before yielding: the caller may stop early
            if index % every == offset:
                yield next_, line
            elif rest:
                yield rest, line

    def process_batch(self, lines: list[str]) -> Routes:
        n, every = len(lines), self.every
        first = (self.offset - self.seen) % every  # batch position of the first kept line
        self.seen += n
        if every == 1 or self.rest == self.next:
            return [(self.next, None, None)] if n else []
        routes = _kept(self.next, list(range(first, n, every)), n)
        if self.rest:
            others = [i for i in range(n) if (i - first) % every]
            routes += _kept(self.rest, others, n)
        return routes
