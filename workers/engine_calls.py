"""How the engine calls a node, and turns what it emitted into segments.

``workers/engine.py`` (the scheduler) hands each node its pending lines through a
:class:`Caller`, which calls the processor in the way it allows (a built-in's fast
path, a generator fed the whole batch, a function one line at a time, or the graph's
lone node writing as it goes); a :class:`Router` turns the outputs into segments, one
per destination tag, and hands them on. This is the engine's hot path: per line, the
usual calls do no Python work beyond the processor's own (engine.py, "Speed"); the
loops bind what they use to locals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import chain
from operator import itemgetter
from typing import Any

from workers.engine_parts import EndWriter, ErrorPolicy, Node, Pending, Segment, Tracer
from workers.graph import END, Graph


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
    do not unpack), for ``Router.route`` to check and report as they were emitted. ``exc``:
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
        """(position of the line being read, pair) for each output, for ``Router.route``."""
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


class Caller:
    """Calls a node on the lines pending at it, in the way its processor allows: a
    built-in's fast path (whole batches, routed by position), a generator (fed the whole
    batch, each output attributed to the line being read), anything else (one line per
    call), or, for the graph's lone node, writing ``end`` lines as they come. Counts
    each node's lines and seconds; the outputs go to the router, failing lines to the
    error policy."""

    __slots__ = ("_alone", "_errors", "_router")

    def __init__(self, errors: ErrorPolicy, router: Router, alone: bool) -> None:
        self._errors = errors
        self._router = router
        # The graph's only node, no line skipped and none traced: _run_alone may apply.
        self._alone = alone

    def run(self, node: Node, keys: Any, lines: list[str], hops: Any) -> None:
        """Run ``node`` on the lines pending at it (those past ``max_hops`` fail first)."""
        keys, lines, hops = self._errors.check_hops(node, keys, lines, hops)
        if not lines:
            return
        stats = node.stats
        stats.lines_in += len(lines)
        started = time.perf_counter()
        if node.batch is not None:
            self._run_batch_path(node, keys, lines, hops)
        elif node.streaming:
            if self._alone and type(keys) is range:  # a batch's own lines, not a cycle's
                self._run_alone(node, keys, lines, hops)
            else:
                self._run_streaming(node, keys, lines, hops)
        else:
            self._run_per_line(node, keys, lines, hops)
        stats.seconds += time.perf_counter() - started

    def finish(self, node: Node) -> None:
        """Call the node's finish(); route what it yields like a line's outputs."""
        assert node.finish is not None  # the scheduler calls only the nodes that have one
        outputs = [(0, pair) for pair in self._errors.call_checked(node, node.finish, 0)]
        self._router.route(node, [0], outputs, 0)

    def _run_batch_path(self, node: Node, keys: Any, lines: list[str], hops: Any) -> None:
        """A built-in's fast path: disjoint (tag, positions, texts) entries, no fan-out."""
        batch = node.batch
        assert batch is not None  # only nodes with a fast path come here
        try:
            routes = batch(lines)
        except Exception as exc:
            if not self._errors.skips_lines():
                self._errors.fail(node, keys[0], exc)
            # Built-in fast paths are stateless or count once per line: retrying one
            # line at a time isolates the failing ones; the others go on as routed.
            for i, line in enumerate(lines):
                try:
                    routes = batch([line])
                except Exception as line_exc:
                    self._errors.fail(node, keys[i], line_exc)
                    continue
                self._router.emit_routes(node, [keys[i]], [line], hops if type(hops) is int else [hops[i]], routes)
            return
        self._router.emit_routes(node, keys, lines, hops, routes)

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
                self._router.emit_first(node, texts)
                return
        except Exception as exc:
            self._errors.fail(node, keys[max(len(feed) - feed.left() - 1, 0)], exc)
        self._router.emit_first(node, texts)
        got = _Capture(chain((pair,), pairs), feed)
        if got.exc is not None:
            self._errors.fail(node, keys[max(len(feed) - feed.left() - 1, 0)], got.exc)
        self._router.route(node, keys, got.outputs(len(feed)), hops)

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
                if not self._router.route_uniform(node, sub_keys, got, sub_hops):
                    self._router.route(node, sub_keys, got.outputs(len(feed)), sub_hops)
                return
            failed_at = max(len(feed) - feed.left() - 1, 0)
            self._errors.fail(node, sub_keys[failed_at], got.exc)
            outputs = [o for o in got.outputs(len(feed)) if o[0] != failed_at]
            self._router.route(node, sub_keys, outputs, sub_hops)
            start += failed_at + 1

    def _run_per_line(self, node: Node, keys: Any, lines: list[str], hops: Any) -> None:
        """A processor that returns a list: one line per call, so attribution is exact."""
        process = node.process
        outputs: list[tuple[int, Any]] = []
        for i, line in enumerate(lines):
            try:
                outputs.extend((i, pair) for pair in process([line]))
            except Exception as exc:
                self._errors.fail(node, keys[i], exc)
                outputs = [o for o in outputs if o[0] != i]
        self._router.route(node, keys, outputs, hops)


class Router:
    """Turns what a node call emitted into segments, one per destination tag, and hands
    them on: to the end writer for ``end``, to the pending lines of a node otherwise
    (noting traced lines' routes). Each copy of a line gets the key that keeps the
    output in order (engine.py, "Order"); a user processor's malformed outputs fail
    their line through the error policy."""

    __slots__ = ("_end", "_errors", "_nodes", "_pending", "_tracer")

    def __init__(self, graph: Graph, errors: ErrorPolicy, tracer: Tracer, pending: Pending, end: EndWriter) -> None:
        self._nodes = graph.nodes  # the tags a pair may name, besides end
        self._errors = errors
        self._tracer = tracer
        self._pending = pending
        self._end = end

    def emit_routes(self, node: Node, keys: Any, lines: list[str], hops: Any, routes: Any) -> None:
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

    def emit_first(self, node: Node, texts: list[str]) -> None:
        """Lines for ``end`` emitted before any segment of the batch (``Caller._run_alone``)."""
        node.stats.lines_out += len(texts)
        self._end.add_first(texts)

    def route_uniform(self, node: Node, keys: Any, got: _Capture, hops: Any) -> bool:
        """Route a call in which every line emitted the same number k of well-formed
        pairs, output j coming from line j // k: one list comparison proves it, and
        then no work is done per pair. False (nothing routed) for any other call.

        The keys are what ``route`` would give: the line's own for k = 1, the line's
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
        distinct = (first,) if single else dict.fromkeys(tags)  # in order of appearance, as route
        if not all(t == END or t in self._nodes for t in distinct):
            return False
        if k > 1:
            if single and first == END and not self._tracer.active():
                self._emit_joined(node, keys, texts, k)
                return True
            keys = [(*key, p) if type(key) is tuple else (key, p) for key in keys for p in range(k)]
            hops = hops if type(hops) is int else [h for h in hops for _ in range(k)]
        routes: list[tuple[str, list[int] | None, list[Any]]]
        if single:
            routes = [(first, None, texts)]
        else:
            routes = [(tag, pos, _take(texts, pos)) for tag, pos in _positions(tags, distinct).items()]
        self.emit_routes(node, keys, texts, hops, routes)
        return True

    def route(self, node: Node, keys: Any, outputs: list[tuple[int, Any]], hops: Any) -> None:
        """Turn attributed (position, pair) outputs into segments, one per tag.

        A line that emitted several pairs gives each copy its sibling position in the
        key, so copies keep their emission order at ``end``.
        """
        counts: dict[int, int] = {}
        for at, _ in outputs:
            counts[at] = counts.get(at, 0) + 1
        by_tag: dict[str, Segment] = {}
        sibling: dict[int, int] = {}
        check_pair = self._errors.check_pair
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
        """Each line's k copies, all for ``end`` (``EndWriter.add_joined``)."""
        node.stats.lines_out += len(texts)
        self._end.add_joined(keys, texts, k)

    def _emit(self, tag: str, seg: Segment) -> None:
        """Hand a segment on: to the end writer for ``end``, else to wait at its node."""
        if not seg[1]:
            return
        if self._tracer.active():
            self._tracer.trace(tag, seg[0])
        if tag == END:
            self._end.add(seg)
        else:
            self._pending.add(tag, seg)


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
