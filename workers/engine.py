"""The tag-routing engine: one file's lines through the graph, in batches.

Pure: no processes, no queue folders. The caller hands in an open binary source and an
:class:`OutputSink`; the engine reads the source in chunks (decompressed first if its
magic bytes say gzip, bzip2, xz or zstd: ``workers/compressed.py``), splits it into
batches of lines, or of CSV records in a ``format = "csv"`` pipeline
(``workers/records.py``), and, for each batch, runs the nodes until no unit is pending,
then writes the units that reached ``end``. Below, "line" means the pipeline's unit.

Order (docs/guide/pipelines.md, "Order of output lines"). Each copy of a line carries a key: its input
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

Parts. This module reads the file and schedules the nodes (``_FileRun``);
``workers/engine_calls.py`` calls a node and routes its outputs (the shortcuts above);
``workers/engine_parts.py`` keeps the books: line numbers, the error policy, tracing,
the lines pending at each node, the assembly and writing of ``end``, CSV headers.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from workers.compressed import Limits, open_input
from workers.engine_calls import Caller, Router
from workers.engine_parts import EndWriter, ErrorPolicy, Headers, Node, Pending, Place, Tracer
from workers.errors import InputError
from workers.graph import START, Graph
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


class DeclaredOutputs:
    """What a processor's ``start(ctx)`` gets: the file's name and its side outputs, only
    those the pipeline declares (its write nodes', its processors' ``side_outputs``).
    Those are reserved when the file gets its final name; another could be another
    file's output, which the commit's rename would replace."""

    def __init__(self, sink: OutputSink, declared: list[str]) -> None:
        self.name = sink.name
        self.headed = sink.headed  # shared by the write nodes of one suffix (CSV headers)
        self._sink = sink
        self._declared = set(declared)

    def side_output(self, suffix: str) -> IO[str]:
        if suffix not in self._declared:
            raise ValueError(f"side output {suffix!r} is not declared: list it in the processor's side_outputs "
                             f"(declared: {', '.join(sorted(self._declared)) or 'none'})")
        return self._sink.side_output(suffix)


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


class _FileRun:
    """One file through the graph: the scheduler. It reads the file in batches; for
    each, it runs the lowest-ranked node with lines pending until none are, then has
    ``end``'s lines written; then each node's finish(). The parts it composes do the
    rest: ``Caller`` (workers/engine_calls.py) calls a node and routes its outputs;
    ``Place``, ``Pending``, ``Tracer``, ``EndWriter`` and, for CSV, ``Headers``
    (workers/engine_parts.py) keep the books."""

    def __init__(self, graph: Graph, name: str, sink: OutputSink, trace_every: int) -> None:
        self._graph = graph
        self._name = name
        self._result = result = FileResult(nodes={t: NodeStats() for t in graph.nodes})
        self._nodes = {
            tag: Node(tag, spec.instantiate(), spec.builtin, result.nodes[tag])
            for tag, spec in graph.nodes.items()
        }
        self._order = sorted(graph.nodes, key=graph.rank.__getitem__)
        self._place = Place()
        self._pending = Pending(graph.rank)
        self._tracer = Tracer(trace_every, self._place, result)
        self._end = EndWriter(sink.main, result)
        errors = ErrorPolicy(graph, name, self._place, result)
        router = Router(graph, errors, self._tracer, self._pending, self._end)
        alone = len(graph.nodes) == 1 and not errors.skips_lines() and not trace_every
        self._calls = Caller(errors, router, alone)
        context = DeclaredOutputs(sink, graph.side_outputs())
        for node in self._nodes.values():
            start = getattr(node.instance, "start", None)
            if callable(start):
                start(context)

    # -- the file ------------------------------------------------------------------

    def run(self, source: BinaryIO, progress: Progress | None) -> FileResult:
        s, result = self._graph.settings, self._result
        reader = open_input(source, self._name, Limits(s.max_expansion, int(s.max_decompressed_mb * 2**20)))
        if s.format == "csv":
            self._run_records(reader, progress)
        else:
            for lines in _read_batches(reader, self._name, s, result):
                self._run_batch(lines, None)
                if progress is not None:
                    progress(result.bytes_in, result.lines_in)
        self._finish()
        return result

    def _run_records(self, reader: Any, progress: Progress | None) -> None:
        """Record mode: the header (if any) is read with the first batch, and the nodes
        learn their columns before the first record (with no record at all, too)."""
        s, result = self._graph.settings, self._result
        fmt = RecordFormat(s.delimiter, s.quotechar, s.header)
        records = _Records(reader, self._name, s, result, fmt)
        headers = Headers(self._graph, self._nodes, self._name, fmt)
        started = False
        for texts, first_lines in records:
            if not started:
                self._end.owe_header(headers.negotiate(records.columns))
                started = True
            self._run_batch(texts, first_lines)
            if progress is not None:
                progress(result.bytes_in, result.lines_in)
        if not started:
            self._end.owe_header(headers.negotiate(records.columns))

    def _run_batch(self, lines: list[str], first_lines: Sequence[int] | None) -> None:
        # Keys are local to the batch (0..n-1): a fast path's positions are then the
        # keys of the lines it selected, with nothing to compute per line.
        n = len(lines)
        self._place.begin(n, first_lines)
        self._tracer.begin(n)
        self._end.begin(n)
        self._pending.add(START, (range(n), lines, 0))
        self._drain()
        self._tracer.collect()
        self._place.advance(n)
        self._result.lines_in += n

    def _finish(self) -> None:
        """Call each node's finish() in rank order; route what it yields like any line."""
        for tag in self._order:
            node = self._nodes[tag]
            if node.finish is None:
                continue
            self._calls.finish(node)
            self._end.begin(1)
            self._place.advance(1)  # the next node's finish() lines get keys after these
            self._drain()

    def _drain(self) -> None:
        """Run the pending nodes until no line is pending; then write ``end``'s lines."""
        pending, nodes, calls = self._pending, self._nodes, self._calls
        while (waiting := pending.pop()) is not None:
            tag, (keys, lines, hops) = waiting
            calls.run(nodes[tag], keys, lines, hops)
        self._end.write()


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
