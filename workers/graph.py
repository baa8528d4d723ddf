"""The routing graph: resolve each node's processor, check its options and tags.

``compile_graph`` turns one pipeline's table into a :class:`Graph` once, at start-up
(``workers/pipelines.py`` does it for each configured pipeline). Every problem is a
ConfigError naming the node and the key. A worker then calls
``graph.instantiate()`` once per file to get fresh processor instances.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.config import NodeConfig, PipelineConfig
from workers.errors import ConfigError
from workers.processors import BUILTINS
from workers.processors.base import OptionError, require_suffix

END = "end"
START = "start"


@dataclass(frozen=True)
class NodeSpec:
    tag: str
    processor: str  # as configured: a built-in name or "module:attribute"
    factory: Callable[..., Any]
    is_class: bool
    options: Mapping[str, Any]
    emits: Mapping[str, str] | None  # declared tag -> option key; None: not declared
    builtin: bool
    side_outputs: tuple[str, ...] = ()  # the suffixes a user processor declares it opens

    def instantiate(self) -> Any:
        """A fresh processor for one file (a plain function is shared: it has no state)."""
        if not self.is_class:
            return self.factory
        return self.factory(**{k: _fresh(v) for k, v in self.options.items()})


@dataclass(frozen=True)
class Graph:
    settings: PipelineConfig
    nodes: Mapping[str, NodeSpec]
    rank: Mapping[str, int]  # scheduling order: topological over declared edges

    def instantiate(self) -> dict[str, Any]:
        return {tag: spec.instantiate() for tag, spec in self.nodes.items()}

    def sinks(self) -> dict[str, str]:
        """The built-in ``write`` nodes: tag -> the suffix of the side output each writes."""
        return {tag: str(s.options["output"]) for tag, s in self.nodes.items() if s.builtin and s.processor == "write"}

    def side_outputs(self) -> list[str]:
        """Suffixes of the side outputs the pipeline may write: its ``write`` nodes', and
        those its processors declare (``side_outputs``). Each is reserved when a file gets
        its final name, and a file may open no other (``workers/engine.py``)."""
        declared = [s for spec in self.nodes.values() for s in spec.side_outputs]
        return list(dict.fromkeys([*self.sinks().values(), *declared]))

    def layout(self) -> list[dict[str, Any]]:
        """The nodes in rank order, each with the tags it may emit (None: not declared)
        and its side output: what the dashboard draws."""
        sinks = self.sinks()
        return [{"tag": tag, "processor": spec.processor, "emits": list(spec.emits) if spec.emits is not None else None,
                 "side": sinks.get(tag)}
                for tag, spec in ((t, self.nodes[t]) for t in sorted(self.nodes, key=self.rank.__getitem__))]

    def describe(self) -> list[str]:
        """Human-readable lines: tag -> processor -> tags it may emit."""
        out, sinks = [], self.sinks()
        for tag in sorted(self.nodes, key=self.rank.__getitem__):
            spec = self.nodes[tag]
            emits = ", ".join(spec.emits) if spec.emits is not None else "(not declared)"
            suffixes = [sinks[tag]] if tag in sinks else list(spec.side_outputs)
            side = "".join(f"  [side output <name>.{s}]" for s in suffixes)
            out.append(f"{tag} -> {spec.processor} -> {emits or '(nothing)'}{side}")
        return out


def _fresh(value: Any) -> Any:
    """A private copy of an option value (TOML gives tables, arrays and scalars): a
    processor may keep and change what it is given. Much cheaper than deepcopy."""
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


def compile_graph(pipeline: PipelineConfig, import_dir: str | None = None) -> Graph:
    """Resolve and validate every node; ``import_dir`` goes on sys.path for user modules."""
    if import_dir and import_dir not in sys.path:
        sys.path.insert(0, import_dir)
    nodes = {node.tag: _compile_node(node, pipeline) for node in pipeline.nodes}
    for spec in nodes.values():
        for tag, key in (spec.emits or {}).items():
            if tag != END and tag not in nodes:
                raise ConfigError(
                    f"{pipeline.key}.nodes.{spec.tag}.{key}",
                    f"emits tag {tag!r}, but there is no [{pipeline.key}.nodes.{tag}] (and it is not 'end')",
                )
    return Graph(pipeline, nodes, _rank(nodes))


def _compile_node(node: NodeConfig, pipeline: PipelineConfig) -> NodeSpec:
    where = f"{pipeline.key}.nodes.{node.tag}"
    factory, builtin = _resolve(node.processor, f"{where}.processor")
    if getattr(factory, "records_only", False) and pipeline.format != "csv":
        raise ConfigError(f"{where}.processor", f"{node.processor} works on CSV records: set "
                          f'[{pipeline.key}] format = "csv"')
    is_class = inspect.isclass(factory)
    options = dict(node.options)
    if not is_class and options:
        key = f"{where}.{next(iter(options))}"
        raise ConfigError(key, f"unknown option: {node.processor} is a function and takes none")
    if is_class:
        _check_signature(factory, options, where)
    try:
        instance = NodeSpec(node.tag, node.processor, factory, is_class, options, None, builtin).instantiate()
    except OptionError as exc:
        raise ConfigError(f"{where}.{exc.key}", exc.message) from None
    except Exception as exc:  # a user class may raise anything from __init__
        raise ConfigError(where, f"{node.processor} failed to start: {type(exc).__name__}: {exc}") from None
    if _process_method(instance) is None:
        raise ConfigError(f"{where}.processor", f"{node.processor} has no process(lines) method and is not callable")
    names = instance.column_names() if callable(getattr(instance, "column_names", None)) else []
    if names and not pipeline.header:
        raise ConfigError(f"{pipeline.key}.header", f"node {node.tag!r} ({node.processor}) names columns "
                          f"({', '.join(map(repr, names))}): that needs header = true, or give their 0-based indexes")
    emits = _declared_emits(instance, where)
    return NodeSpec(node.tag, node.processor, factory, is_class, options, emits, builtin,
                    _declared_side_outputs(instance, where))


def _resolve(name: str, key: str) -> tuple[Callable[..., Any], bool]:
    if name in BUILTINS:
        return BUILTINS[name], True
    if ":" not in name:
        known = ", ".join(sorted(BUILTINS))
        raise ConfigError(key, f"unknown processor {name!r}: use a built-in ({known}) or 'module:attribute'")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(key, f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from None
    try:
        target = module
        for part in attr.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise ConfigError(key, f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise ConfigError(key, f"{name} is not a class or a function")
    return target, False


def _check_signature(cls: Callable[..., Any], options: dict[str, Any], where: str) -> None:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in options:
        if key not in params and not takes_any:
            accepted = ", ".join(n for n, p in params.items() if p.kind is not p.VAR_POSITIONAL) or "none"
            raise ConfigError(f"{where}.{key}", f"unknown option (accepted: {accepted})")
    for name, p in params.items():
        if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in options:
            raise ConfigError(f"{where}.{name}", "is required")


def _process_method(instance: Any) -> Callable[..., Any] | None:
    method = getattr(instance, "process", None)
    if callable(method):
        return method
    return instance if callable(instance) else None


def _declared(instance: Any, attr: str, where: str, what: str) -> Any:
    """A processor's declaration ``attr`` (a value or a method giving it), None if it
    has none; a string or a non-iterable is refused: ``attr must be <what>``."""
    declared = getattr(instance, attr, None)
    if callable(declared):
        declared = declared()
    if declared is not None and (isinstance(declared, str) or not isinstance(declared, Iterable)):
        raise ConfigError(f"{where}.processor", f"{attr} must be {what}")
    return declared


def _declared_emits(instance: Any, where: str) -> dict[str, str] | None:
    declared = _declared(instance, "emits", where, "a list of tags (or a mapping tag -> option)")
    if declared is None:
        return None
    if isinstance(declared, Mapping):
        return {str(t): str(k) for t, k in declared.items()}
    return {str(t): "emits" for t in declared}


def _declared_side_outputs(instance: Any, where: str) -> tuple[str, ...]:
    """A user processor's ``side_outputs``: the suffixes it opens with ctx.side_output."""
    declared = _declared(instance, "side_outputs", where, "a list of suffixes") or ()
    try:
        return tuple(require_suffix("side_outputs", s) for s in declared)
    except OptionError as exc:
        raise ConfigError(f"{where}.processor", f"side_outputs: {exc.message}") from None


def _rank(nodes: Mapping[str, NodeSpec]) -> dict[str, int]:
    """Topological order of the declared graph, config order breaking ties.

    A node runs once per batch after everything that declares an edge into it, so in
    an acyclic, fully declared graph each node sees a batch's lines in input order.
    Edges inside a cycle are ignored for the ordering (the scheduler copes: a node that
    gets lines back later runs again).
    """
    position = {tag: i for i, tag in enumerate(nodes)}
    edges = {t: [d for d in (s.emits or {}) if d in nodes and d != t] for t, s in nodes.items()}
    rank: dict[str, int] = {}
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    post: list[str] = []

    def visit(tag: str) -> None:
        state[tag] = 1
        for nxt in sorted(edges[tag], key=position.__getitem__):
            if nxt not in state:
                visit(nxt)
        state[tag] = 2
        post.append(tag)

    for tag in [START, *nodes]:
        if tag in nodes and tag not in state:
            visit(tag)
    for i, tag in enumerate(reversed(post)):
        rank[tag] = i
    return rank
