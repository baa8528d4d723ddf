"""Built-ins that rewrite each line and pass it on: replace, strip, upper, lower."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import repeat

from .base import (
    OptionError,
    Pair,
    Processor,
    Routes,
    compile_regex,
    require_bool,
    require_int,
    require_str,
    require_tag,
)


class Replace(Processor):
    """Replace the matches of ``pattern`` with ``replacement`` (an ``re.sub``
    template), e.g. ``password=\\S+`` -> ``password=***``."""

    name = "replace"

    def __init__(
        self,
        *,
        pattern: str,
        replacement: str = "",
        count: int = 0,
        ignore_case: bool = False,
        next: str = "end",  # shadows the builtin: it is the option's name
    ) -> None:
        ignore_case = require_bool("ignore_case", ignore_case)
        self.rx = compile_regex("pattern", pattern, ignore_case)
        self.replacement = require_str("replacement", replacement)
        self.count = require_int("count", count, minimum=0)
        self.next = require_tag("next", next)
        try:
            # re compiles the template before searching, so a bad group reference
            # fails here even though "" may not match.
            self.rx.sub(self.replacement, "")
        except (re.error, IndexError) as exc:  # IndexError: unknown group name
            raise OptionError("replacement", f"is not a valid replacement: {exc}") from None

    def emits(self) -> dict[str, str]:
        return {self.next: "next"}

    def process(self, lines: list[str]) -> Iterator[Pair]:
        sub, replacement, count, next_ = self.rx.sub, self.replacement, self.count, self.next
        for line in lines:
            yield next_, sub(replacement, line, count)

    def process_batch(self, lines: list[str]) -> Routes:
        new = list(map(self.rx.sub, repeat(self.replacement), lines, repeat(self.count)))
        return [(self.next, None, new)]


_STRIP = {"both": str.strip, "left": str.lstrip, "right": str.rstrip}


class Strip(Processor):
    """Strip whitespace (or the characters in ``chars``) from one or both ends."""

    name = "strip"

    def __init__(self, *, chars: str | None = None, side: str = "both", next: str = "end") -> None:
        self.chars = None if chars is None else require_str("chars", chars)
        if require_str("side", side) not in _STRIP:
            raise OptionError("side", f'must be "both", "left" or "right", got {side!r}')
        self.side = side
        self.next = require_tag("next", next)

    def emits(self) -> dict[str, str]:
        return {self.next: "next"}

    def process(self, lines: list[str]) -> Iterator[Pair]:
        strip, chars, next_ = _STRIP[self.side], self.chars, self.next
        for line in lines:
            yield next_, strip(line, chars)

    def process_batch(self, lines: list[str]) -> Routes:
        return [(self.next, None, list(map(_STRIP[self.side], lines, repeat(self.chars))))]


class _CaseMap(Processor):
    """Shared body of upper and lower: one str method applied to every line."""

    method = str.upper

    def __init__(self, *, next: str = "end") -> None:
        self.next = require_tag("next", next)

    def emits(self) -> dict[str, str]:
        return {self.next: "next"}

    def process(self, lines: list[str]) -> Iterator[Pair]:
        method, next_ = type(self).method, self.next
        for line in lines:
            yield next_, method(line)

    def process_batch(self, lines: list[str]) -> Routes:
        return [(self.next, None, list(map(type(self).method, lines)))]


class Upper(_CaseMap):
    """Upper-case every line."""

    name = "upper"
    method = str.upper


class Lower(_CaseMap):
    """Lower-case every line."""

    name = "lower"
    method = str.lower
