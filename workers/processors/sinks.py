"""Built-ins that write lines out of the pipeline: write."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import IO

from .base import FileContext, OptionError, Pair, Processor, Routes, optional_tag, require_str

# A file-name suffix: no path separators, no leading dot.
_SUFFIX = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class Write(Processor):
    """Write each line to the side output ``<name>.<output>``; consume it, or also
    pass it on to ``next``."""

    name = "write"

    def __init__(self, *, output: str, next: str = "") -> None:
        require_str("output", output)
        # ".tmp" is what the engine uses for files it has not committed yet.
        if not _SUFFIX.fullmatch(output) or output.endswith(".tmp"):
            raise OptionError(
                "output",
                f"must be a file suffix like 'errors.log' ([A-Za-z0-9_.-], no leading"
                f" dot, not ending in .tmp), got {output!r}",
            )
        self.output = output
        self.next = optional_tag("next", next)
        self.stream: IO[str] | None = None

    def emits(self) -> dict[str, str]:
        return {self.next: "next"} if self.next else {}

    def start(self, ctx: FileContext) -> None:
        self.stream = ctx.side_output(self.output)

    def _writer(self) -> Callable[[str], int]:
        if self.stream is None:
            raise RuntimeError("write: start(ctx) was not called before process()")
        return self.stream.write

    def process(self, lines: list[str]) -> Iterator[Pair]:
        write, next_ = self._writer(), self.next
        for line in lines:
            write(line + "\n")  # written before yielding: the caller may stop early
            if next_:
                yield next_, line

    def process_batch(self, lines: list[str]) -> Routes:
        if not lines:
            return []
        self._writer()("\n".join(lines) + "\n")
        return [(self.next, None, None)] if self.next else []
