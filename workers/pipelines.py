"""Pipelines by name and the routes that pick one for each file.

``compile_pipelines`` compiles every configured pipeline's graph once (each problem a
ConfigError naming its key) and keeps the ``[[routes]]`` in the order written. A file's
pipeline is the first route one of whose globs matches its name with the compression
suffix removed (``app.log.1.gz`` is matched as ``app.log.1``). A glob without ``/``
matches the base name at any depth, one with ``/`` the path relative to
``unprocessed/``, ``**`` spanning directories (``acme/**/*.csv``: ``workers/globs.py``,
as ``recursive = true`` names files). The name decides, so the
supervisor routes a file before anything reads it, and every node of a job uses the
same pipelines (jobs carry their version, ``workers/config.py pipeline_version``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.config import Config, RouteConfig
from workers.globs import matcher
from workers.graph import Graph, compile_graph
from workers.names import shown, strip_suffix


@dataclass(frozen=True)
class Pipelines:
    graphs: Mapping[str, Graph]  # by pipeline name, in the order configured
    routes: tuple[RouteConfig, ...]

    def __post_init__(self) -> None:
        compiled = [matcher(r.match) for r in self.routes]
        object.__setattr__(self, "_compiled", compiled)
        # Asked for every name the daemon chooses: computed once (the graphs never change).
        suffixes = tuple(dict.fromkeys(s for g in self.graphs.values() for s in g.side_outputs()))
        object.__setattr__(self, "_side_outputs", suffixes)

    def route(self, name: str) -> str | None:
        """The pipeline for a file of this name, or None when no route matches."""
        at = self.route_index(name)
        return self.routes[at].pipeline if at is not None else None

    def route_index(self, name: str) -> int | None:
        """The index of the route a file of this name takes (None: none matches)."""
        stem = strip_suffix(name)
        matches: list[Callable[[str], bool]] = self._compiled  # type: ignore[attr-defined]
        for i, match in enumerate(matches):
            if match(stem):
                return i
        return None

    def explain(self, name: str) -> str:
        """Which route a file of this name takes, and why: ``check PATH`` says it."""
        at = self.route_index(name)
        if at is None:
            return f"{shown(name)}: {self.unrouted(name)}"
        route = self.routes[at]
        stem = strip_suffix(name)
        matched_as = f" (matched as {shown(stem)!r})" if stem != name else ""
        return f"{shown(name)}: routes[{at + 1}] {list(route.match)} -> pipeline {route.pipeline}{matched_as}"

    def unrouted(self, name: str) -> str:
        """The reason a file no route matches goes to failed/: the routes it was tried on."""
        stem = strip_suffix(name)
        tried = "; ".join(f"routes[{i}] {list(r.match)}" for i, r in enumerate(self.routes, 1))
        matched_as = f" (matched as {shown(stem)!r})" if stem != name else ""
        return f"no route matches this name{matched_as}: tried {tried}"

    def side_outputs(self) -> tuple[str, ...]:
        """The side-output suffixes of every pipeline: a final name reserves them all, so
        a file keeps its names whatever a reload does to the routes."""
        return self._side_outputs  # type: ignore[attr-defined]

    def describe(self) -> list[str]:
        """``check``'s listing: the routes, then each pipeline's settings and graph."""
        out = ["routes (first match wins; names are matched without .gz/.bz2/.xz/.zst; a glob with / matches "
               "the path in unprocessed/, ** any number of directories):"]
        out += [f"  {i}. {', '.join(r.match)} -> {r.pipeline}" for i, r in enumerate(self.routes, 1)]
        out.append("pipelines (each node: tag -> processor -> tags it may emit):")
        for name, graph in self.graphs.items():
            s = graph.settings
            kind = (f"csv (delimiter {s.delimiter!r}, quotechar {s.quotechar!r}, header {str(s.header).lower()})"
                    if s.format == "csv" else "lines")
            unused = "" if any(r.pipeline == name for r in self.routes) else "  (no route leads here)"
            out.append(f"pipeline {name}: {kind}, on_error {s.on_error}, encoding {s.encoding}{unused}")
            out += [f"  {line}" for line in graph.describe()]
        return out

    def layout(self) -> list[dict[str, Any]]:
        """Each pipeline's nodes, for the dashboard's drawing."""
        return [{"pipeline": name, "format": g.settings.format, "nodes": g.layout()} for name, g in self.graphs.items()]

    def node_count(self) -> int:
        return sum(len(g.nodes) for g in self.graphs.values())


def compile_pipelines(config: Config, import_dir: str | None = None) -> Pipelines:
    return Pipelines({name: compile_graph(p, import_dir) for name, p in config.pipelines.items()}, config.routes)


def node_key(pipeline: str, tag: str) -> str:
    """A node's key in the figures (``/metrics`` splits it into two labels): a pipeline's
    name never holds a "/"."""
    return f"{pipeline}/{tag}"


def split_node_key(key: str) -> tuple[str, str]:
    pipeline, _, tag = key.partition("/")
    return (pipeline, tag) if tag else ("", pipeline)
