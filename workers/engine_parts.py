"""The engine's bookkeeping around the calls of its nodes, one part per concern.

``workers/engine.py`` (the scheduler) composes them for one file; the nodes are called
by ``workers/engine_calls.py``. Pure, like the engine: no processes, no queue folders.

- :class:`Node`: a processor instance plus how the engine calls it;
- :class:`Place`: where the current batch lies in the file, for line numbers;
- :class:`ErrorPolicy`: what a failing line does to the file, and what makes it fail;
- :class:`Tracer`: the routes of sampled lines;
- :class:`Pending`: the lines waiting at each node within a batch;
- :class:`EndWriter`: the lines that reached ``end``, written in key order;
- :class:`Headers`: in record mode, the header line of each output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import IO, TYPE_CHECKING, Any

from workers.errors import InputError, ProcessingError
from workers.faults import ERRNO_KINDS
from workers.graph import END, START, Graph
from workers.records import RecordError, RecordFormat

if TYPE_CHECKING:  # engine.py imports this module: its types are for annotations only
    from workers.engine import FileResult, NodeStats

# A segment: lines pending at one node, emitted by one node call.
# keys: ints (input line index) or tuples (index, sibling positions...);
# hops: an int shared by all lines, or one int per line.
Segment = tuple[Any, list[str], Any]


class Node:
    """A processor instance plus how the engine calls it."""

    __slots__ = ("batch", "finish", "instance", "process", "stats", "streaming", "tag", "trusted")

    def __init__(self, tag: str, instance: Any, builtin: bool, stats: NodeStats) -> None:
        self.tag = tag
        self.instance = instance
        method = getattr(instance, "process", None)
        self.process = method if callable(method) else instance
        self.batch = getattr(instance, "process_batch", None) if builtin else None
        # A generator is fed whole batches: its outputs are attributed to the line it
        # was reading when it yielded. Anything else gets one line per call.
        self.streaming = inspect.isgeneratorfunction(self.process) and getattr(instance, "batch", True)
        self.finish = getattr(instance, "finish", None)
        self.trusted = builtin
        self.stats = stats


class Place:
    """Where the current batch lies in the file: what turns a key back into the input
    line that errors and traced routes name.

    Keys are local to a batch (0 .. n - 1), so that a fast path's positions are keys;
    the base (the file position of the batch's key 0) and, in record mode, each
    record's first physical line make them file lines again. A finish() call is a
    batch of one unit past the input. The scheduler moves it; the others ask it.
    """

    __slots__ = ("_base", "_first_lines", "_read")

    def __init__(self) -> None:
        self._base = 0  # units before the current batch (each finish() call counts one)
        self._read = 0  # input units read so far, the current batch's included
        self._first_lines: Sequence[int] | None = None  # None: the unit at key i is line base + i + 1

    def begin(self, n: int, first_lines: Sequence[int] | None) -> None:
        """A batch of n units read (``first_lines``: their first physical lines, CSV)."""
        self._read += n
        self._first_lines = first_lines

    def advance(self, n: int) -> None:
        """Past the current batch (n units), or a finish() call (1)."""
        self._base += n

    def input_line(self, at: int) -> int:
        """The input line of the current batch's unit at key ``at``."""
        return self._base + at + 1 if self._first_lines is None else self._first_lines[at]

    def line_no(self, at: int) -> int | None:
        """``input_line``, or None past the input (a finish() call's lines)."""
        return self.input_line(at) if self._base + at < self._read else None

    def sampled(self, every: int, n: int) -> range:
        """The keys of the batch's n units whose file position is a multiple of ``every``."""
        return range(-self._base % every, n, every)


class ErrorPolicy:
    """What a line that fails at a node does to the file, by ``on_error``: fail the file
    (a ProcessingError naming the file, the line and the node), or report the line and
    drop it (``skip_line``). A line fails when its processor raises, emits what is no
    (tag, line) pair of a known tag, or goes round a cycle ``max_hops`` times.
    """

    __slots__ = ("_graph", "_name", "_place", "_result", "_skip")

    def __init__(self, graph: Graph, name: str, place: Place, result: FileResult) -> None:
        self._graph = graph
        self._name = name
        self._place = place
        self._result = result
        self._skip = graph.settings.on_error == "skip_line"

    def skips_lines(self) -> bool:
        """True under ``skip_line``: a failing line is dropped and the file goes on."""
        return self._skip

    def fail(self, node: Node, key: Any, exc: BaseException | None, what: str = "") -> None:
        """One line failed at a node: fail the file, or report and drop it (skip_line).
        A fault of the machine (a sink's write on a full disk) is no line's fault: it
        stops the file as it is, to be sent again once the fault clears."""
        if isinstance(exc, OSError) and exc.errno in ERRNO_KINDS:
            raise exc
        line_no = self._place.line_no(key[0] if type(key) is tuple else key)
        if exc is not None:
            detail = f"{type(exc).__name__}: {exc}"
            what = f"{what or 'processor'} {self._graph.nodes[node.tag].processor} raised {detail}"
        node.stats.errors += 1
        error = ProcessingError(self._name, line_no, what, node.tag)
        if not self._skip:
            raise error from exc
        self._result.add_error(line_no, node.tag, what)

    def call_checked(self, node: Node, fn: Callable[[], Any], key: Any) -> list[Any]:
        """``fn()``'s pairs (a finish() call), or none if it raised: the line at ``key`` failed."""
        try:
            return list(fn() or ())
        except Exception as exc:
            self.fail(node, key, exc, what="finish()")
            return []

    def check_pair(self, node: Node, key: Any, pair: Any) -> tuple[str | None, str]:
        """A user processor's output must be a (tag, str) pair with a known tag."""
        if node.trusted:
            return pair
        try:
            tag, line = pair
        except (TypeError, ValueError):
            self.fail(node, key, TypeError(f"emitted {pair!r}, not a (tag, line) pair"))
            return None, ""
        if type(line) is not str or type(tag) is not str:
            self.fail(node, key, TypeError(f"emitted {pair!r}: tag and line must be strings"))
            return None, ""
        if tag != END and tag not in self._graph.nodes:
            self.fail(node, key, None, what=f"emitted unknown tag {tag!r}")
            return None, ""
        return tag, line

    def check_hops(self, node: Node, keys: Any, lines: list[str], hops: Any) -> Segment:
        """The lines still under ``max_hops``; each of the others fails."""
        limit = self._graph.settings.max_hops
        if type(hops) is int:
            if hops < limit:
                return keys, lines, hops
            over: Sequence[int] = range(len(lines))
        else:
            over = [i for i, h in enumerate(hops) if h >= limit]
            if not over:
                return keys, lines, hops
        for i in over:
            self.fail(node, keys[i], None, what=f"line went past max_hops = {limit}")
        if type(hops) is int:
            return keys, [], hops
        keep = [i for i, h in enumerate(hops) if h < limit]
        return [keys[i] for i in keep], [lines[i] for i in keep], [hops[i] for i in keep]


class Tracer:
    """The routes of sampled lines (``trace_every``): each sampled line of a batch
    collects the tags its copies reach; when the batch is done its route goes to the
    result, which keeps the most recent ones."""

    __slots__ = ("_every", "_place", "_result", "_traced")

    def __init__(self, every: int, place: Place, result: FileResult) -> None:
        self._every = every
        self._place = place
        self._result = result
        self._traced: dict[int, list[str]] = {}  # key of a sampled line -> its route so far

    def begin(self, n: int) -> None:
        """Sample the lines of a batch of n."""
        if self._every:
            traced = self._traced
            for i in self._place.sampled(self._every, n):
                traced[i] = [START]

    def active(self) -> bool:
        """True while lines of the current batch are traced."""
        return bool(self._traced)

    def trace(self, tag: str, keys: Any) -> None:
        """Lines with these keys reached ``tag``."""
        traced = self._traced
        for key in keys:
            origin = key[0] if type(key) is tuple else key
            route = traced.get(origin)
            if route is not None:
                route.append(tag)

    def collect(self) -> None:
        """The batch is done: its routes go to the result."""
        if self._traced:
            input_line = self._place.input_line
            self._result.add_routes((input_line(i), route) for i, route in sorted(self._traced.items()))
            self._traced = {}


class Pending:
    """The lines waiting at each node within a batch, as the segments that sent them.
    The next node to run is the lowest ranked one with lines waiting, so nodes run in
    topological order and each sees its lines in key order (engine.py, "Order")."""

    __slots__ = ("_rank", "_segs")

    def __init__(self, rank: Mapping[str, int]) -> None:
        self._rank = rank
        self._segs: dict[str, list[Segment]] = {}

    def add(self, tag: str, seg: Segment) -> None:
        """Lines sent to node ``tag``."""
        self._segs.setdefault(tag, []).append(seg)

    def pop(self) -> tuple[str, Segment] | None:
        """The next node and its lines merged into one segment; None when none wait."""
        segs = self._segs
        if not segs:
            return None
        tag = min(segs, key=self._rank.__getitem__)
        return tag, _merge(segs.pop(tag))


class EndWriter:
    """The lines that reach ``end`` in a batch (or a finish() call), written to the main
    output in key order once the batch is done; in record mode, the main output's header
    line before its first record.

    Lines come as segments, or as text for lines emitted before any segment
    (``add_first``: a lone node's, see engine_calls.py), which go first.
    """

    __slots__ = ("_count", "_first", "_header", "_out", "_result", "_segs", "_width")

    def __init__(self, out: IO[str], result: FileResult) -> None:
        self._out = out
        self._result = result
        self._segs: list[Segment] = []
        self._first: list[str] = []
        self._count = 0  # lines in _segs and _first
        self._width = 0  # keys of the current batch (or finish() call): 0 .. width - 1
        self._header: str | None = None  # the header line owed to the main output

    def begin(self, width: int) -> None:
        """A batch (or finish() call) whose keys are 0 .. width - 1."""
        self._width = width

    def owe_header(self, header: str | None) -> None:
        """The header line (None: no header) to write before the first line."""
        self._header = header

    def add(self, seg: Segment) -> None:
        """Lines that reached ``end``."""
        self._count += len(seg[1])
        self._segs.append(seg)

    def add_first(self, texts: list[str]) -> None:
        """Lines that reached ``end`` before any segment of the batch could."""
        self._count += len(texts)
        self._first += texts

    def add_joined(self, keys: Any, texts: list[str], k: int) -> None:
        """Each key's k copies, which go to ``end`` together, so they are one text at
        its key: the same bytes, and the copies need no keys of their own."""
        self._count += len(texts)
        joined = ["\n".join(texts[i : i + k]) for i in range(0, len(texts), k)]
        self._segs.append((keys, joined, 0))

    def write(self) -> None:
        """The batch is done: write its lines (and a header owed)."""
        segs, self._segs = self._segs, []
        first, self._first = self._first, []
        if not segs and not first:
            return
        lines = segs[0][1] if len(segs) == 1 else _assemble(segs, self._width) if segs else []
        self._result.lines_out += self._count
        self._count = 0
        out = self._out
        if self._header is not None:
            out.write(f"{self._header}\n")
            self._header = None
        if first:
            out.write("\n".join(first))
            out.write("\n")
        if lines:
            out.write("\n".join(lines))
            out.write("\n")


class Headers:
    """Record mode: before the first record, each node's ``records(fmt, columns)`` hook
    is called with the columns of the records it receives (the file's header, as the
    nodes before it changed it); what it returns is what the nodes it emits to receive
    (a node that declares no tags may send to any). An output gets the header of the
    records sent to it; records of different columns sent to one output fail the file,
    as no header line would be true of them all."""

    __slots__ = ("_fmt", "_graph", "_name", "_nodes")

    def __init__(self, graph: Graph, nodes: Mapping[str, Node], name: str, fmt: RecordFormat) -> None:
        self._graph = graph
        self._nodes = nodes
        self._name = name
        self._fmt = fmt

    def negotiate(self, columns: list[str] | None) -> str | None:
        """Run the hooks for a file whose header is ``columns``; the main output's header
        line (None: none). Checks that each side output's records share one header."""
        incoming: dict[str, Any] = {START: columns}
        sources: dict[str, list[tuple[str, Any]]] = {}  # tag or end -> (sending node, columns)
        everywhere = [*self._graph.nodes, END]
        targets = {tag: spec.emits if spec.emits is not None else everywhere for tag, spec in self._graph.nodes.items()}
        for tag in self._order(targets):
            out = self._hook(tag, incoming.get(tag, columns))
            for nxt in targets[tag]:
                sent = out.get(nxt) if isinstance(out, dict) else out
                incoming.setdefault(nxt, sent)
                sources.setdefault(nxt, []).append((tag, sent))
        end_header = self._one(sources.get(END, []), "output/<name>")
        sinks: dict[str, list[tuple[str, Any]]] = {}  # write nodes sharing a suffix share its header
        for tag, suffix in self._graph.sinks().items():
            sinks.setdefault(suffix, []).append((tag, incoming.get(tag, columns)))
        for suffix, senders in sinks.items():
            self._one(senders, f"output/<name>.{suffix}")
        return end_header

    def _order(self, targets: dict[str, Any]) -> list[str]:
        """Breadth first from start, so that a node's columns come from a node that sends
        to it (declared or not); then, in rank order, the nodes nothing reaches (they get
        the file's header)."""
        nodes = self._graph.nodes
        order, seen = [START], {START}
        for tag in order:
            for nxt in targets[tag]:
                if nxt not in seen and nxt in nodes:
                    seen.add(nxt)
                    order.append(nxt)
        return order + [t for t in sorted(nodes, key=self._graph.rank.__getitem__) if t not in seen]

    def _hook(self, tag: str, cols: list[str] | None) -> Any:
        """What node ``tag``'s hook makes of records with these columns (no hook: the same)."""
        hook = getattr(self._nodes[tag].instance, "records", None)
        if not callable(hook):
            return cols
        try:
            return hook(self._fmt, cols)
        except RecordError as exc:
            raise InputError(self._name, 1 if self._fmt.header else None, str(exc), tag) from None
        except Exception as exc:
            what = f"records() of {self._graph.nodes[tag].processor} raised {type(exc).__name__}: {exc}"
            raise ProcessingError(self._name, None, what, tag) from exc

    def _one(self, senders: list[tuple[str, Any]], where: str) -> str | None:
        """The one header line of the records these (node, columns) send to ``where``."""
        shapes = {tuple(cols): tag for tag, cols in senders if cols is not None}
        if len(shapes) > 1:
            (a, first), (b, second) = list(shapes.items())[:2]
            raise InputError(self._name, 1, f"records of different columns go to {where}: node {first!r} sends "
                             f"({', '.join(a)}), node {second!r} ({', '.join(b)}); no one header line fits "
                             "them: send them to outputs of their own", second)
        return self._fmt.join(next(iter(shapes))) if shapes else None


def _assemble(segs: list[Segment], width: int) -> list[str]:
    """The lines that reached ``end`` in key order, as ``_merge`` would sort them.

    Each input line reaches ``end`` either as one copy with its own int key, or (once
    some node gave it several outputs) only as copies with tuple keys. So the int keys
    place their lines directly in a list by input position (``width`` of them), each
    line's fanned-out copies are sorted among themselves and joined into one text,
    and nothing else is sorted.
    """
    placed: list[str | None] = [None] * width
    fanned: dict[int, list[tuple[Any, str]]] = {}
    for keys, lines, _ in segs:
        for key, line in zip(keys, lines, strict=True):
            if type(key) is int:
                placed[key] = line
            else:
                fanned.setdefault(key[0], []).append((key, line))
    for first, copies in fanned.items():
        if placed[first] is not None:  # not reached: one line both fanned out and not
            return _merge(segs)[1]
        copies.sort(key=itemgetter(0))
        placed[first] = "\n".join([line for _, line in copies])
    if None in placed:  # lines that were dropped, or are still in a cycle's next round
        return [line for line in placed if line is not None]
    return placed  # type: ignore[return-value]


def _merge(segs: list[Segment]) -> Segment:
    """Join the segments pending at one node into one, in key order."""
    if len(segs) == 1:
        return segs[0]
    keys: list[Any] = []
    lines: list[str] = []
    hops: list[int] = []
    tuples = False
    for k, ln, h in segs:
        keys.extend(k)
        lines.extend(ln)
        hops.extend([h] * len(ln) if type(h) is int else h)
        tuples = tuples or tuple in map(type, k)
    if tuples:
        keys = [x if type(x) is tuple else (x,) for x in keys]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return [keys[i] for i in order], [lines[i] for i in order], [hops[i] for i in order]
