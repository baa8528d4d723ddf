"""The tag-routing engine: one file's lines through the graph, in batches.

Pure: no processes, no queue folders. The caller hands in an open binary source and an
:class:`OutputSink`; the engine reads the source in chunks (decompressed first if its
magic bytes say gzip, bzip2, xz or zstd: ``workers/compressed.py``), splits it into
batches of lines, or of CSV records in a ``format = "csv"`` pipeline
(``workers/records.py``), and, for each batch, runs the nodes until no unit is pending,
then writes the units that reached ``end``. Below, "line" means the pipeline's unit.

Order (README, "Order of output lines"). Each copy of a line carries a key: its input
line number, extended by the copy's position among its siblings whenever a node
emitted more than one pair for one line. Lines reaching ``end`` are written in key
order, which is the order a depth-first, one-line-at-a-time run would produce: all
descendants of line i before those of line i+1, copies emitted together in emission
order, a copy's own descendants before its later siblings. Within a batch, nodes run in
the graph's topological order (``Graph.rank``), each on all its pending lines in key
order, so in an acyclic graph where every node declares its tags each node sees the
file's lines in input order.

Speed (BENCHMARKS.md, "Engine"). The bookkeeping above must cost less than a user's
own per-line work, so the usual calls take shortcuts that give the same keys:

- A streaming processor's outputs are captured in one plain loop, each with the
  position of the line being read. When every line emitted the same number k of
  pairs (output j from line j // k, which one list comparison confirms), the call is
  routed like a built-in fast path: by positions, with nothing done per pair.
- ``end`` is assembled by input position: int keys are placed directly, and only a
  line's fanned-out copies are sorted among themselves.
- A lone node (``start`` the only node, ``fail_file``, no tracing) writes the
  ``(end, line)`` pairs of a batch's own lines as emitted, unattributed: nothing can
  reach ``end`` before them. At its first other output it falls back to the above.
"""

from __future__ import annotations

import codecs
import csv
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import IO, Any, BinaryIO

from workers.compressed import Limits, open_input
from workers.engine_parts import EndWriter, ErrorPolicy, Headers, Node, Pending, Place, Segment, Tracer
from workers.errors import InputError
from workers.graph import END, START, Graph
from workers.records import RecordFormat

# 64 KiB: a read buffer (and each batch's decoded text) of 128 KiB or more is an mmap
# under glibc's default malloc thresholds, so every batch would page-fault its memory
# in afresh (issue 10's study: 7 % of a user generator's throughput). Smaller batches
# also keep their pair tuples within CPython's free list, away from the collector.
CHUNK_BYTES = 64 * 1024
MAX_REPORTED_ERRORS = 100
MAX_TRACED_ROUTES = 50

class OutputSink:
    """Where a file's outputs go: ``main`` for ``end``, ``side_output`` for sinks."""

    def __init__(self, name: str, main: IO[str], side: Callable[[str], IO[str]]) -> None:
        self.name = name
        self.main = main
        self._side = side
        self.headed: set[str] = set()  # CSV: the side outputs whose header line is written

    def side_output(self, suffix: str) -> IO[str]:
        return self._side(suffix)


@dataclass
class NodeStats:
    lines_in: int = 0
    lines_out: int = 0
    errors: int = 0
    seconds: float = 0.0


@dataclass
class FileResult:
    lines_in: int = 0
    lines_out: int = 0
    bytes_in: int = 0
    nodes: dict[str, NodeStats] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)  # skip_line reports
    error_count: int = 0
    routes: list[tuple[int, list[str]]] = field(default_factory=list)  # traced lines

    def add_error(self, line: int | None, node: str, message: str) -> None:
        """A skipped line: counted, and reported while fewer than MAX_REPORTED_ERRORS are."""
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"line": line, "node": node, "message": message})

    def add_routes(self, routes: Iterable[tuple[int, list[str]]]) -> None:
        """Traced routes: only the most recent MAX_TRACED_ROUTES are kept."""
        self.routes.extend(routes)
        del self.routes[:-MAX_TRACED_ROUTES]


Progress = Callable[[int, int], None]  # (bytes done, lines done) after each batch


def run_file(
    graph: Graph,
    name: str,
    source: BinaryIO,
    sink: OutputSink,
    progress: Progress | None = None,
    trace_every: int = 0,
) -> FileResult:
    """Process one file. Raises InputError/ProcessingError when the file fails."""
    return _FileRun(graph, name, sink, trace_every).run(source, progress)


class _Lines(list):
    """The list a streaming processor gets. ``cur[0].__length_hint__()`` is how many of
    its lines the processor has not started yet: n - 1 before it iterates (outputs made
    then go to the first line), then its newest iterator's count (a processor that
    iterates twice is attributed by the pass it is in)."""

    __slots__ = ("cur",)

    def __init__(self, lines: list[str]) -> None:
        super().__init__(lines)
        self.cur: list[Any] = [iter(range(len(lines) - 1))]

    def __iter__(self) -> Iterator[str]:
        it = list.__iter__(self)
        self.cur[0] = it
        return it

    def left(self) -> int:
        return self.cur[0].__length_hint__()


class _Unpacked(tuple):
    """A pair that was not a tuple, as unpacked once (it may have been a one-shot
    iterator), shown as the object that was emitted."""

    emitted: Any

    def __new__(cls, tag: Any, text: Any, emitted: Any) -> _Unpacked:
        self = super().__new__(cls, (tag, text))
        self.emitted = emitted
        return self

    def __repr__(self) -> str:
        return repr(self.emitted)


class _Capture:
    """What one call of a streaming processor emitted, unpacked as it came.

    Output j is (tags[j], texts[j]), made while ``lefts[j]`` lines were not started.
    ``odd`` keeps the outputs that were not 2-tuples (None, None in the lists where they
    do not unpack), for ``_route`` to check and report as they were emitted. ``exc``:
    what the processor raised, if it did. Each bytecode per pair shows in the
    throughput of small processors, so the types are checked afterwards, per call.
    """

    __slots__ = ("exc", "lefts", "odd", "tags", "texts")

    def __init__(self, pairs: Iterator[Any], feed: _Lines) -> None:
        # One plain loop (cheaper than any chain of C iterators doing the same); the
        # unpacking here is the check that every output is a pair.
        tags: list[Any] = []
        texts: list[Any] = []
        lefts: list[int] = []
        odd: dict[int, Any] = {}
        cur = feed.cur
        self.tags, self.texts, self.lefts, self.odd, self.exc = tags, texts, lefts, odd, None
        try:
            for pair in pairs:
                try:
                    tag, text = pair
                except (TypeError, ValueError):
                    tag = text = None
                    odd[len(tags)] = pair
                else:
                    if type(pair) is not tuple:  # a list, say: shown as emitted if it is wrong
                        odd[len(tags)] = _Unpacked(tag, text, pair)
                tags.append(tag)
                texts.append(text)
                # A method called on the iterator is a specialised bytecode; calling a
                # bound method (it.__length_hint__ kept aside) costs a third more.
                lefts.append(cur[0].__length_hint__())
        except Exception as exc:
            self.exc = exc

    def outputs(self, n: int) -> list[tuple[int, Any]]:
        """(position of the line being read, pair) for each output, for ``_route``."""
        odd, last = self.odd, n - 1
        pairs = list(zip(self.tags, self.texts, strict=True))
        for j, pair in odd.items():
            pairs[j] = pair
        return [(at if at > 0 else 0, pair) for at, pair in zip([last - x for x in self.lefts], pairs, strict=True)]


_UNIFORM: dict[tuple[int, int], list[int]] = {}


def _uniform_lefts(n: int, k: int) -> list[int]:
    """``left()`` after each output of a call where every one of n lines emitted k pairs."""
    lefts = _UNIFORM.get((n, k))
    if lefts is None:
        lefts = list(range(n - 1, -1, -1)) if k == 1 else sorted(list(range(n)) * k, reverse=True)
        if len(_UNIFORM) > 64:  # batch sizes vary with line lengths: keep a few
            _UNIFORM.clear()
        _UNIFORM[n, k] = lefts
    return lefts


class _FileRun:
    def __init__(self, graph: Graph, name: str, sink: OutputSink, trace_every: int) -> None:
        self.graph = graph
        self.settings = graph.settings
        self.name = name
        self.sink = sink
        self.result = FileResult(nodes={t: NodeStats() for t in graph.nodes})
        self.nodes = {
            tag: Node(tag, spec.instantiate(), spec.builtin, self.result.nodes[tag])
            for tag, spec in graph.nodes.items()
        }
        self.order = sorted(graph.nodes, key=graph.rank.__getitem__)
        self.pending = Pending(graph.rank)
        self.end = EndWriter(sink.main, self.result)
        self.place = Place()
        self.errors = ErrorPolicy(graph, name, self.place, self.result)
        self.tracer = Tracer(trace_every, self.place, self.result)
        self.alone = len(graph.nodes) == 1 and not self.errors.skips_lines() and not trace_every
        for node in self.nodes.values():
            start = getattr(node.instance, "start", None)
            if callable(start):
                start(sink)

    # -- the file ------------------------------------------------------------------

    def run(self, source: BinaryIO, progress: Progress | None) -> FileResult:
        s = self.settings
        reader = open_input(source, self.name, Limits(s.max_expansion, int(s.max_decompressed_mb * 2**20)))
        if s.format == "csv":
            self._run_records(reader, progress)
        else:
            for lines in _read_batches(reader, self.name, s, self.result):
                self._run_batch(lines, None)
                if progress is not None:
                    progress(self.result.bytes_in, self.result.lines_in)
        self._finish()
        return self.result

    def _run_records(self, reader: Any, progress: Progress | None) -> None:
        """Record mode: the header (if any) is read with the first batch, and the nodes
        learn their columns before the first record (with no record at all, too)."""
        s, result = self.settings, self.result
        fmt = RecordFormat(s.delimiter, s.quotechar, s.header)
        records = _Records(reader, self.name, s, result, fmt)
        headers = Headers(self.graph, self.nodes, self.name, fmt)
        started = False
        for texts, first_lines in records:
            if not started:
                self.end.owe_header(headers.negotiate(records.columns))
                started = True
            self._run_batch(texts, first_lines)
            if progress is not None:
                progress(result.bytes_in, result.lines_in)
        if not started:
            self.end.owe_header(headers.negotiate(records.columns))

    def _run_batch(self, lines: list[str], first_lines: Sequence[int] | None) -> None:
        # Keys are local to the batch (0..n-1): a fast path's positions are then the
        # keys of the lines it selected, with nothing to compute per line.
        n = len(lines)
        self.place.begin(n, first_lines)
        self.tracer.begin(n)
        self.end.begin(n)
        self.pending.add(START, (range(n), lines, 0))
        self._drain()
        self.tracer.collect()
        self.place.advance(n)
        self.result.lines_in += n

    def _finish(self) -> None:
        """Call each node's finish() in rank order; route what it yields like any line."""
        for tag in self.order:
            node = self.nodes[tag]
            if node.finish is None:
                continue
            outputs = [(0, pair) for pair in self.errors.call_checked(node, node.finish, 0)]
            self._route(node, [0], outputs, 0)
            self.end.begin(1)
            self.place.advance(1)  # the next node's finish() lines get keys after these
            self._drain()

    # -- one batch -------------------------------------------------------------------

    def _drain(self) -> None:
        pending = self.pending
        while (waiting := pending.pop()) is not None:
            tag, (keys, lines, hops) = waiting
            self._run_node(self.nodes[tag], keys, lines, hops)
        self.end.write()

    def _run_node(self, node: Node, keys: Any, lines: list[str], hops: Any) -> None:
        keys, lines, hops = self.errors.check_hops(node, keys, lines, hops)
        if not lines:
            return
        stats = node.stats
        stats.lines_in += len(lines)
        started = time.perf_counter()
        if node.batch is not None:
            self._run_batch_path(node, keys, lines, hops)
        elif node.streaming:
            if self.alone and type(keys) is range:  # a batch's own lines, not a cycle's
                self._run_alone(node, keys, lines, hops)
            else:
                self._run_streaming(node, keys, lines, hops)
        else:
            self._run_per_line(node, keys, lines, hops)
        stats.seconds += time.perf_counter() - started

    def _run_batch_path(self, node: Node, keys: Any, lines: list[str], hops: Any) -> None:
        """A built-in's fast path: disjoint (tag, positions, texts) entries, no fan-out."""
        batch = node.batch
        assert batch is not None  # only nodes with a fast path come here
        try:
            routes = batch(lines)
        except Exception as exc:
            if not self.errors.skips_lines():
                self.errors.fail(node, keys[0], exc)
            # Built-in fast paths are stateless or count once per line: retrying one
            # line at a time isolates the failing ones; the others go on as routed.
            for i, line in enumerate(lines):
                try:
                    routes = batch([line])
                except Exception as line_exc:
                    self.errors.fail(node, keys[i], line_exc)
                    continue
                self._emit_routes(node, [keys[i]], [line], hops if type(hops) is int else [hops[i]], routes)
            return
        self._emit_routes(node, keys, lines, hops, routes)

    def _emit_routes(self, node: Node, keys: Any, lines: list[str], hops: Any, routes: Any) -> None:
        """Turn (tag, positions or None for all, texts or None for unchanged) entries
        into segments: positions are the keys' indexes, so nothing is done per line."""
        nxt = hops + 1 if type(hops) is int else None
        plain = type(keys) is range and keys.start == 0  # positions are the keys
        for tag, pos, texts in routes:
            if pos is None:
                seg = (keys, texts if texts is not None else lines, nxt if nxt is not None else [h + 1 for h in hops])
            else:
                seg = (
                    pos if plain else _take(keys, pos),
                    texts if texts is not None else _take(lines, pos),
                    nxt if nxt is not None else [hops[i] + 1 for i in pos],
                )
            node.stats.lines_out += len(seg[1])
            self._emit(tag, seg)

    def _run_alone(self, node: Node, keys: Any, lines: list[str], hops: Any) -> None:
        """The graph's only node on a batch's own lines, when a failing line fails the
        file and no route is traced: while every output is an ``(end, str)`` pair,
        nothing else can reach ``end`` in this batch before them, so they are written
        in emission order and need no attribution. At the first other output (a pair
        for ``start``, or one that is wrong) the rest of the call is captured as
        usual; the lines so far come first in the order the keys would give too, as
        they descend from earlier lines (or are earlier siblings of the same line).
        """
        feed = _Lines(lines)
        texts: list[str] = []
        pairs = node.process(feed)
        try:
            for pair in pairs:
                try:
                    tag, text = pair
                except (TypeError, ValueError):
                    break
                if tag is not END or type(text) is not str or type(pair) is not tuple:
                    if type(pair) is not tuple:  # unpacked once: it may be an iterator
                        pair = _Unpacked(tag, text, pair)
                    break
                texts.append(text)
            else:
                self._emit_first(node, texts)
                return
        except Exception as exc:
            self.errors.fail(node, keys[max(len(feed) - feed.left() - 1, 0)], exc)
        self._emit_first(node, texts)
        got = _Capture(chain((pair,), pairs), feed)
        if got.exc is not None:
            self.errors.fail(node, keys[max(len(feed) - feed.left() - 1, 0)], got.exc)
        self._route(node, keys, got.outputs(len(feed)), hops)

    def _emit_first(self, node: Node, texts: list[str]) -> None:
        node.stats.lines_out += len(texts)
        self.end.add_first(texts)

    def _run_streaming(self, node: Node, keys: Any, lines: list[str], hops: Any) -> None:
        """Feed the whole batch; attribute each output to the line being read.

        After a failure (skip_line) the rest of the batch is fed again from the line
        after the failing one, so each line reaches the processor exactly once.
        """
        start = 0
        while start < len(lines):
            feed = _Lines(lines[start:] if start else lines)
            got = _Capture(node.process(feed), feed)
            sub_keys = keys[start:] if start else keys
            sub_hops = hops if type(hops) is int else hops[start:]
            if got.exc is None:
                if not self._route_uniform(node, sub_keys, got, sub_hops):
                    self._route(node, sub_keys, got.outputs(len(feed)), sub_hops)
                return
            failed_at = max(len(feed) - feed.left() - 1, 0)
            self.errors.fail(node, sub_keys[failed_at], got.exc)
            outputs = [o for o in got.outputs(len(feed)) if o[0] != failed_at]
            self._route(node, sub_keys, outputs, sub_hops)
            start += failed_at + 1

    def _route_uniform(self, node: Node, keys: Any, got: _Capture, hops: Any) -> bool:
        """Route a call in which every line emitted the same number k of well-formed
        pairs, output j coming from line j // k: one list comparison proves it, and
        then no work is done per pair. False (nothing routed) for any other call.

        The keys are what ``_route`` would give: the line's own for k = 1, the line's
        extended by the sibling position for k > 1.
        """
        n, m = len(keys), len(got.tags)
        k = m // n
        if not m or k * n != m or got.odd or got.lefts != _uniform_lefts(n, k):
            return not m  # no output at all is uniform too: nothing to route
        tags, texts = got.tags, got.texts
        first = tags[0]
        try:
            single = tags.count(first) == m  # the usual case: one destination
        except Exception:  # a tag that is no string, with an __eq__ that raises
            return False
        if set(map(type, texts)) != {str} or (type(first) is not str if single else set(map(type, tags)) != {str}):
            return False
        distinct = (first,) if single else dict.fromkeys(tags)  # in order of appearance, as _route
        if not all(t == END or t in self.nodes for t in distinct):
            return False
        if k > 1:
            if single and first == END and not self.tracer.active():
                self._emit_joined(node, keys, texts, k)
                return True
            keys = [(*key, p) if type(key) is tuple else (key, p) for key in keys for p in range(k)]
            hops = hops if type(hops) is int else [h for h in hops for _ in range(k)]
        routes: list[tuple[str, list[int] | None, list[Any]]]
        if single:
            routes = [(first, None, texts)]
        else:
            routes = [(tag, pos, _take(texts, pos)) for tag, pos in _positions(tags, distinct).items()]
        self._emit_routes(node, keys, texts, hops, routes)
        return True

    def _run_per_line(self, node: Node, keys: Any, lines: list[str], hops: Any) -> None:
        """A processor that returns a list: one line per call, so attribution is exact."""
        process = node.process
        outputs: list[tuple[int, Any]] = []
        for i, line in enumerate(lines):
            try:
                outputs.extend((i, pair) for pair in process([line]))
            except Exception as exc:
                self.errors.fail(node, keys[i], exc)
                outputs = [o for o in outputs if o[0] != i]
        self._route(node, keys, outputs, hops)

    def _route(self, node: Node, keys: Any, outputs: list[tuple[int, Any]], hops: Any) -> None:
        """Turn attributed (position, pair) outputs into segments, one per tag.

        A line that emitted several pairs gives each copy its sibling position in the
        key, so copies keep their emission order at ``end``.
        """
        counts: dict[int, int] = {}
        for at, _ in outputs:
            counts[at] = counts.get(at, 0) + 1
        by_tag: dict[str, Segment] = {}
        sibling: dict[int, int] = {}
        check_pair = self.errors.check_pair
        for at, pair in outputs:
            tag, line = check_pair(node, keys[at], pair)
            if tag is None:
                continue
            key = keys[at]
            if counts[at] > 1:
                pos = sibling.get(at, 0)
                sibling[at] = pos + 1
                key = (*key, pos) if type(key) is tuple else (key, pos)
            seg = by_tag.get(tag)
            if seg is None:
                seg = by_tag[tag] = ([], [], [])
            seg[0].append(key)
            seg[1].append(line)
            seg[2].append((hops if type(hops) is int else hops[at]) + 1)
        for tag, seg in by_tag.items():
            node.stats.lines_out += len(seg[1])
            self._emit(tag, seg)

    def _emit_joined(self, node: Node, keys: Any, texts: list[str], k: int) -> None:
        """Each line's k copies go to ``end`` together, so they are one text at its key:
        the same bytes, and the copies need no keys of their own."""
        node.stats.lines_out += len(texts)
        self.end.add_joined(keys, texts, k)

    def _emit(self, tag: str, seg: Segment) -> None:
        if not seg[1]:
            return
        if self.tracer.active():
            self.tracer.trace(tag, seg[0])
        if tag == END:
            self.end.add(seg)
        else:
            self.pending.add(tag, seg)


def _positions(tags: list[str], distinct: Any) -> dict[str, list[int]]:
    """Where each tag occurs. A plain loop: its appends are bytecodes, while a C-speed
    pass per tag (compress over map) pays a function call per line and tag."""
    groups: dict[str, list[int]] = {tag: [] for tag in distinct}
    for i, tag in enumerate(tags):
        groups[tag].append(i)
    return groups


def _take(seq: Any, positions: list[int]) -> list[Any]:
    """``[seq[i] for i in positions]`` at C speed."""
    if len(positions) == 1:
        return [seq[positions[0]]]
    return list(itemgetter(*positions)(seq)) if positions else []


def _read_batches(source: Any, name: str, settings: Any, result: FileResult) -> Iterator[list[str]]:
    """Yield lists of lines (newline stripped), one per chunk read from ``source`` (an
    ``open_input`` reader: ``result.bytes_in`` follows its compressed bytes); never an
    unbounded read.

    Checks per chunk, in C: NUL bytes (a binary file), a line longer than
    ``max_line_bytes``, bytes that do not decode.
    """
    limit = settings.max_line_bytes
    decode = codecs.getdecoder(settings.encoding)
    errors = settings.decode_errors
    carry = b""
    line_base = 0
    read = source.read
    while True:
        chunk = read(CHUNK_BYTES)
        if not chunk:
            break
        result.bytes_in = source.consumed
        if b"\x00" in chunk:
            at = line_base + (carry + chunk[: chunk.index(b"\x00")]).count(b"\n") + 1
            raise InputError(name, at, "binary file: NUL byte (only text files can be processed)")
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            _check_long(carry, name, line_base, limit)
            continue
        complete, carry = data[: cut + 1], data[cut + 1 :]
        if len(carry) > limit:
            _check_long(carry, name, line_base + complete.count(b"\n"), limit)
        if len(complete) > limit:
            _check_lines(complete, name, line_base, limit)
        lines = _decode(decode, complete, errors, name, line_base)
        line_base += len(lines)
        yield lines
    if carry:
        yield _decode(decode, carry + b"\n", errors, name, line_base)


def _check_long(data: bytes, name: str, line_base: int, limit: int) -> None:
    if len(data) > limit:
        raise InputError(name, line_base + 1, f"line longer than max_line_bytes ({limit} bytes)")


def _check_lines(complete: bytes, name: str, line_base: int, limit: int) -> None:
    for i, raw in enumerate(complete[:-1].split(b"\n")):
        if len(raw) > limit:
            raise InputError(name, line_base + i + 1, f"line longer than max_line_bytes ({limit} bytes)")


def _decode(decode: Any, data: bytes, errors: str, name: str, line_base: int) -> list[str]:
    try:
        text = decode(data, errors)[0]
    except UnicodeDecodeError as exc:
        line = line_base + data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            name, line,
            f"cannot decode byte 0x{data[exc.start]:02x} as {exc.encoding} "
            '(set [pipeline] decode_errors = "replace" to accept such files)',
        ) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    lines.pop()  # data ends with a newline: the last piece is empty
    return lines


class _Records:
    """A CSV file's records, in batches: ``(texts, first lines)`` per chunk read.

    A record's text is its physical lines joined with ``\n``. The csv module decides
    where a record ends; a batch in which no quote character occurs needs no parsing
    (each non-blank line is a record), so only batches with quotes pay for it. A
    record still open at a batch's end (a quoted newline) is carried into the next
    batch and parsed again with it, bounded by ``max_line_bytes``. Blank lines between
    records are skipped. With ``header``, the first record is the header: its fields
    are ``columns`` (until the engine takes them) and it is no unit.
    """

    def __init__(self, reader: Any, name: str, settings: Any, result: FileResult, fmt: RecordFormat) -> None:
        self.reader = reader
        self.name = name
        self.settings = settings
        self.result = result
        self.fmt = fmt
        self.columns: list[str] | None = None
        self.want_header = fmt.header
        csv.field_size_limit(max(settings.max_line_bytes, 1024))  # per process: a worker runs one file at a time

    def __iter__(self) -> Iterator[tuple[list[str], Sequence[int]]]:
        quote = self.fmt.quotechar
        limit = self.settings.max_line_bytes
        carry: list[str] = []  # the lines of a record still open
        base = 0  # physical lines before this batch's first (the carry's included)
        first = True
        for lines in _read_batches(self.reader, self.name, self.settings, self.result):
            if first:
                first = False
                if lines and lines[0].startswith("\ufeff"):
                    lines[0] = lines[0][1:]  # a byte-order mark is no part of the first field
            if carry:
                base -= len(carry)
                lines = carry + lines
                carry = []
            firsts: Sequence[int]
            joined = "\n".join(lines)
            if quote in joined or "\r" in joined:  # a lone CR: the csv module says what it makes of it
                texts, firsts, carry = self._parse(lines, base)
                if sum(map(len, carry)) > limit:
                    raise InputError(self.name, base + len(lines) - len(carry) + 1,
                                     f"record longer than max_line_bytes ({limit} bytes): a quoted field "
                                     "that is never closed?")
            elif "" in lines:
                firsts = [base + i + 1 for i, line in enumerate(lines) if line]
                texts = [line for line in lines if line]
            else:
                texts, firsts = lines, range(base + 1, base + 1 + len(lines))
            base += len(lines)
            if self.want_header and texts:
                self.want_header = False
                self.columns = self.fmt.parse(texts[:1])[0]
                texts, firsts = texts[1:], firsts[1:]
            if texts:
                yield texts, firsts
        if carry:
            raise InputError(self.name, base - len(carry) + 1,
                             "not valid CSV: the file ends inside a quoted field")
        if self.want_header:
            self.columns = None  # an empty file: no header, no record

    def _parse(self, lines: list[str], base: int) -> tuple[list[str], list[int], list[str]]:
        """Records of ``lines`` by the csv module; the lines of the last one if it is
        not closed within them."""
        texts: list[str] = []
        firsts: list[int] = []
        taken = [0]
        ended = [False]

        def feed() -> Iterator[str]:
            for line in lines:
                taken[0] += 1
                yield line + "\n"
            ended[0] = True

        rows = self.fmt.reader(feed(), strict=True)
        limit = self.settings.max_line_bytes
        start = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return texts, firsts, []
            except csv.Error as exc:
                if ended[0]:  # the batch ends inside this record: it continues in the next
                    return texts, firsts, lines[start:]
                if "field limit" in str(exc):  # csv.field_size_limit is max_line_bytes
                    raise InputError(self.name, base + start + 1, f"record longer than max_line_bytes "
                                     f"({self.settings.max_line_bytes} bytes)") from None
                raise InputError(self.name, base + start + 1, f"not valid CSV: {exc}") from None
            end = taken[0]
            if row:
                if end == start + 1:
                    texts.append(lines[start])  # its length was checked with its line
                else:
                    text = "\n".join(lines[start:end])
                    if len(text) > limit and len(text.encode(self.settings.encoding, "replace")) > limit:
                        raise InputError(self.name, base + start + 1,
                                         f"record longer than max_line_bytes ({limit} bytes)")
                    texts.append(text)
                firsts.append(base + start + 1)
            start = end
