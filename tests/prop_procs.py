"""User-style processors for the property tests (imported as ``tests.prop_procs:Name``)."""

from __future__ import annotations

from collections.abc import Iterator


class Twice:
    """A streaming (generator) processor that drops, routes or fans out by length."""

    def __init__(self, a: str, b: str) -> None:
        self.a, self.b = a, b
        self.emits = [a, b]

    def process(self, lines: list[str]) -> Iterator[tuple[str, str]]:
        for line in lines:
            kind = len(line) % 3
            if kind == 1:
                yield self.a, line + "1"
            elif kind == 2:
                yield self.a, line
                yield self.b, line[::-1]


class Eager:
    """A processor that returns a list (so the engine calls it one line at a time)."""

    def __init__(self, to: str) -> None:
        self.to = to
        self.emits = [to]

    def process(self, lines: list[str]) -> list[tuple[str, str]]:
        return [(self.to, line + "e") for line in lines if "ee" not in line]


class Recycle:
    """A generator for a graph of one node: drops, ends, or sends a shorter copy back to
    ``start`` before or after ending the line, by length."""

    emits = ("end", "start")

    def process(self, lines: list[str]) -> Iterator[tuple[str, str]]:
        for line in lines:
            kind = len(line) % 4
            if kind == 1:
                yield "end", line
            elif kind == 2:
                yield "start", line[1:]
                yield "end", line
            elif kind == 3:
                yield "end", line + "."
                yield "start", line[1:]
