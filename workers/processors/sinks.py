"""Built-ins that write lines out of the pipeline: write."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO

from workers.records import RecordFormat

from .base import FileContext, Pair, Processor, Routes, optional_tag, require_suffix


class Write(Processor):
    """Write each line to the side output ``<name>.<output>``; consume it, or also
    pass it on to ``next``."""

    name = "write"

    def __init__(self, *, output: str, next: str = "") -> None:
        self.output = require_suffix("output", output)
        self.next = optional_tag("next", next)
        self.stream: IO[str] | None = None
        self.header: str | None = None  # CSV records: the header line, written before the first record

    def emits(self) -> dict[str, str]:
        return {self.next: "next"} if self.next else {}

    def start(self, ctx: FileContext) -> None:
        self.stream = ctx.side_output(self.output)
        # Nodes writing one suffix share its stream, and its header line.
        self.headed: set[str] = getattr(ctx, "headed", set())

    def records(self, fmt: RecordFormat, columns: list[str] | None) -> list[str] | None:
        """CSV records: the side output starts with the header of the records it gets."""
        self.header = fmt.join(columns) if columns is not None else None
        return columns

    def _writer(self) -> Callable[[str], int]:
        if self.stream is None:
            raise RuntimeError("write: start(ctx) was not called before process()")
        if self.header is not None:
            if self.output not in self.headed:
                self.headed.add(self.output)
                self.stream.write(self.header + "\n")
            self.header = None
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
