"""Shared test helpers: build graphs from TOML text, run the engine on bytes."""

from __future__ import annotations

import io
import random
import tomllib
from pathlib import Path
from typing import Any

from workers.config import parse_config
from workers.engine import FileResult, OutputSink, run_file
from workers.graph import Graph, compile_graph


def graph_from_toml(text: str, base: Path | None = None) -> Graph:
    """Compile a pipeline written as TOML (``[pipeline]`` tables) into a graph."""
    base = base or Path.cwd()
    config = parse_config(tomllib.loads(text), base / "config.toml")
    return compile_graph(config.pipelines["default"], str(base))


def graph_from_dict(data: dict[str, Any], base: Path | None = None) -> Graph:
    base = base or Path.cwd()
    config = parse_config(data, base / "config.toml")
    return compile_graph(config.pipelines["default"], str(base))


class TrickleReader:
    """A binary source whose read(n) returns short, random-sized pieces, like a pipe."""

    def __init__(self, data: bytes, seed: int = 0, max_piece: int = 7) -> None:
        self.data = data
        self.pos = 0
        self.rng = random.Random(seed)
        self.max_piece = max_piece

    def read(self, n: int = -1) -> bytes:
        size = min(n if n >= 0 else len(self.data), self.rng.randint(1, self.max_piece))
        piece = self.data[self.pos : self.pos + size]
        self.pos += len(piece)
        return piece


class MemoryOutputs:
    """Collects a file's outputs in memory: ``main`` text and side outputs by suffix."""

    def __init__(self, name: str = "input.log") -> None:
        self.streams: dict[str, io.StringIO] = {"": io.StringIO()}
        self.sink = OutputSink(name, self.streams[""], self._side)

    def _side(self, suffix: str) -> io.StringIO:
        return self.streams.setdefault(suffix, io.StringIO())

    def lines(self, suffix: str = "") -> list[str]:
        text = self.streams[suffix].getvalue() if suffix in self.streams else ""
        return text.split("\n")[:-1] if text else []


def run_text(graph: Graph, text: str | bytes, name: str = "input.log", trickle: bool = False,
             trace_every: int = 0) -> tuple[MemoryOutputs, FileResult]:
    data = text.encode() if isinstance(text, str) else text
    source = TrickleReader(data) if trickle else io.BytesIO(data)
    outputs = MemoryOutputs(name)
    result = run_file(graph, name, source, outputs.sink, trace_every=trace_every)
    return outputs, result


def fail_on_x(lines: list[str]) -> Any:
    """A user processor (a generator function) that raises on a unit starting with "x"."""
    for line in lines:
        if line.startswith("x"):
            raise ValueError(f"unit starts with x: {line!r}")
        yield "end", line


def to_v(lines: list[str]) -> Any:
    """A user processor that declares no tags: every unit on to "v"."""
    for line in lines:
        yield "v", line
