"""Built-ins that summarise a file: count."""

from __future__ import annotations

import re
from collections.abc import Iterator

from .base import (
    OptionError,
    Pair,
    Processor,
    Routes,
    compile_regex,
    entry_key,
    require_str,
    require_table,
    require_tag,
)

# A name appears in the summary as `name=N`, so it must stay one token.
_NAME = re.compile(r"[^\s=]+")


class Count(Processor):
    """Pass every line on unchanged, counting it; at end of file emit one summary
    line such as ``count: error=2 warn=1 other=5 total=8``.

    A line is counted under every pattern it matches, else under ``other``;
    without patterns only the total is counted.
    """

    name = "count"

    def __init__(
        self,
        *,
        patterns: dict | None = None,
        label: str = "count",
        summary: str = "end",
        next: str = "end",  # shadows the builtin: it is the option's name
    ) -> None:
        self.names: list[str] = []
        self.searches = []
        if patterns is not None:
            for name, rx in require_table("patterns", patterns).items():
                key = entry_key("patterns", require_str("patterns", name))
                if not _NAME.fullmatch(name) or name in ("other", "total"):
                    raise OptionError(key, "a name must be one word without '=', not other or total")
                self.names.append(name)
                self.searches.append(compile_regex(key, rx).search)
        self.label = require_str("label", label)
        if len(self.label.splitlines()) != 1:  # also rejects ""
            raise OptionError("label", f"must be non-empty text on one line, got {label!r}")
        self.summary = require_tag("summary", summary)
        self.next = require_tag("next", next)
        self.counts = [0] * len(self.searches)
        self.other = 0
        self.total = 0

    def emits(self) -> dict[str, str]:
        tags = {self.next: "next"}
        tags.setdefault(self.summary, "summary")
        return tags

    def process(self, lines: list[str]) -> Iterator[Pair]:
        searches, counts, next_ = self.searches, self.counts, self.next
        for line in lines:
            # Count before yielding: the caller may not resume the generator.
            self.total += 1
            matched = False
            for k, search in enumerate(searches):
                if search(line):
                    counts[k] += 1
                    matched = True
            if not matched:
                self.other += 1
            yield next_, line

    def process_batch(self, lines: list[str]) -> Routes:
        n = len(lines)
        self.total += n
        if not self.searches:
            self.other += n
        else:
            flags = [list(map(bool, map(search, lines))) for search in self.searches]
            for k, hits in enumerate(flags):
                self.counts[k] += hits.count(True)
            self.other += n - sum(map(any, zip(*flags, strict=True)))
        return [(self.next, None, None)] if n else []

    def finish(self) -> Iterator[Pair]:
        parts = [f"{name}={n}" for name, n in zip(self.names, self.counts, strict=True)]
        if self.names:
            parts.append(f"other={self.other}")
        parts.append(f"total={self.total}")
        yield self.summary, f"{self.label}: {' '.join(parts)}"
