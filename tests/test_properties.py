"""Property tests: the batched engine gives exactly what a naive run gives.

The reference below feeds one line at a time through the graph, depth first, calling
each processor's public ``process([line])``: the simplest correct reading of the
contract. The engine batches lines, uses the built-ins' fast paths, reads the input in
random-sized pieces, and must produce the same outputs, side outputs and errors.

Acyclic graphs may use every processor, stateful ones included (each node sees lines
in input order). Graphs with cycles use stateless processors: there the engine
promises the output order, not the order in which a node inside a cycle sees lines.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import MemoryOutputs, TrickleReader, graph_from_dict
from workers.engine import MAX_REPORTED_ERRORS, run_file
from workers.errors import InputError, ProcessingError
from workers.graph import END, START, Graph

WORDS = ["a", "b", "ab", "ERROR x", "x", "", "aa b", "WARN", "bb", "error"]
REGEXES = ["a", "^b", "ERROR", "x$", "(?i)error", "b+", "^$"]
STATELESS = ["regex_route", "regex_route_all", "fanout", "upper", "lower", "strip", "replace", "filter",
             "twice", "eager"]
STATEFUL = ["sample", "dedupe", "count", "write"]


def _options(draw: Any, kind: str, targets: list[str], tag: str) -> dict[str, Any]:
    pick = lambda: draw(st.sampled_from(targets))  # noqa: E731
    rx = lambda: draw(st.sampled_from(REGEXES))  # noqa: E731
    if kind in ("regex_route", "regex_route_all"):
        routes = {t: rx() for t in draw(st.lists(st.sampled_from(targets), min_size=1, max_size=3, unique=True))}
        return {"processor": "regex_route", "routes": routes, "default": draw(st.sampled_from([*targets, ""])),
                "all": kind == "regex_route_all"}
    if kind == "fanout":
        to = draw(st.lists(st.sampled_from(targets), min_size=1, max_size=3, unique=True))
        return {"processor": "fanout", "to": to}
    if kind in ("upper", "lower", "strip", "dedupe"):
        return {"processor": kind, "next": pick()}
    if kind == "replace":
        return {"processor": "replace", "pattern": rx(), "replacement": draw(st.sampled_from(["", "Z", "<\\g<0>>"])),
                "next": pick()}
    if kind == "filter":
        mode = draw(st.sampled_from(["keep", "drop"]))
        return {"processor": "filter", mode: rx(), "next": pick()}
    if kind == "twice":
        return {"processor": "tests.prop_procs:Twice", "a": pick(), "b": pick()}
    if kind == "eager":
        return {"processor": "tests.prop_procs:Eager", "to": pick()}
    if kind == "sample":
        every = draw(st.integers(1, 3))
        return {"processor": "sample", "every": every, "offset": draw(st.integers(0, every - 1)),
                "rest": draw(st.sampled_from([*targets, ""])), "next": pick()}
    if kind == "count":
        return {"processor": "count", "patterns": {"p": rx()}, "next": pick(), "summary": pick()}
    assert kind == "write"
    return {"processor": "write", "output": f"side-{tag}", "next": draw(st.sampled_from([*targets, ""]))}


@st.composite
def pipelines(draw: Any, cyclic: bool) -> dict[str, Any]:
    size = draw(st.integers(1, 5))
    tags = [START] + [f"n{i}" for i in range(1, size)]
    nodes = {}
    for i, tag in enumerate(tags):
        later = tags if cyclic else tags[i + 1 :]
        targets = [END, *later]
        kind = draw(st.sampled_from(STATELESS if cyclic else STATELESS + STATEFUL))
        nodes[tag] = _options(draw, kind, targets, tag)
    settings_ = {"max_hops": draw(st.integers(2, 6)) if cyclic else 64, "on_error": "skip_line"}
    return {"pipeline": {**settings_, "nodes": nodes}}


def naive(graph: Graph, lines: list[str]) -> tuple[MemoryOutputs, list[tuple[int | None, str]]]:
    """One line at a time, depth first, through each processor's public process()."""
    outputs = MemoryOutputs()
    instances = graph.instantiate()
    for inst in instances.values():
        if hasattr(inst, "start"):
            inst.start(outputs.sink)
    errors: list[tuple[int | None, str]] = []
    out: list[str] = []

    def visit(tag: str, line: str, hops: int, line_no: int | None) -> None:
        if tag == END:
            out.append(line)
            return
        if hops >= graph.settings.max_hops:
            errors.append((line_no, tag))
            return
        inst = instances[tag]
        process = getattr(inst, "process", inst)
        for t, text in list(process([line])):
            visit(t, text, hops + 1, line_no)

    for i, line in enumerate(lines):
        visit(START, line, 0, i + 1)
    for tag in sorted(graph.nodes, key=graph.rank.__getitem__):
        finish = getattr(instances[tag], "finish", None)
        for t, text in list(finish() if finish else ()):
            visit(t, text, 1, None)
    for inst in instances.values():
        if hasattr(inst, "flush"):
            inst.flush()
    outputs.sink.main.write("".join(line + "\n" for line in out))
    return outputs, errors


def engine(graph: Graph, lines: list[str], seed: int, piece: int) -> tuple[MemoryOutputs, list, int]:
    data = "".join(line + "\n" for line in lines).encode()
    outputs = MemoryOutputs()
    result = run_file(graph, "input.log", TrickleReader(data, seed, piece), outputs.sink)
    return outputs, [(e["line"], e["node"]) for e in result.errors], result.error_count


def _same(graph: Graph, lines: list[str], seed: int, piece: int) -> None:
    want, want_errors = naive(graph, lines)
    got, got_errors, error_count = engine(graph, lines, seed, piece)
    assert got.lines() == want.lines()
    for suffix in set(want.streams) | set(got.streams):
        assert got.lines(suffix) == want.lines(suffix), suffix
    # Every error is counted; the details of the first MAX_REPORTED_ERRORS are kept.
    assert error_count == len(want_errors)
    if error_count <= MAX_REPORTED_ERRORS:
        assert sorted(got_errors, key=repr) == sorted(want_errors, key=repr)
    else:
        assert len(got_errors) == MAX_REPORTED_ERRORS and not Counter(got_errors) - Counter(want_errors)


inputs = st.lists(st.sampled_from(WORDS), max_size=40)
hyp = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@hyp
@given(pipelines(cyclic=False), inputs, st.integers(0, 1000), st.integers(1, 64))
def test_batched_engine_equals_naive_reference_on_acyclic_graphs(data, lines, seed, piece) -> None:
    _same(graph_from_dict(data), lines, seed, piece)


@hyp
@given(pipelines(cyclic=True), inputs, st.integers(0, 1000), st.integers(1, 64))
def test_batched_engine_equals_naive_reference_on_graphs_with_cycles(data, lines, seed, piece) -> None:
    _same(graph_from_dict(data), lines, seed, piece)


@hyp
@given(st.sampled_from(["tests.prop_procs:Recycle", "tests.prop_procs:Twice"]), st.integers(2, 8), inputs,
       st.integers(0, 1000), st.integers(1, 64))
def test_a_lone_node_that_fails_the_file_on_error_equals_the_naive_reference(proc, hops, lines, seed, piece) -> None:
    # One node and on_error = "fail_file": the engine takes its no-attribution path
    # while the node emits only (end, line) pairs, and switches when a line cycles.
    options = {"a": "end", "b": "start"} if proc.endswith("Twice") else {}
    graph = graph_from_dict({"pipeline": {"max_hops": hops, "nodes": {START: {"processor": proc, **options}}}})
    want, want_errors = naive(graph, lines)
    if want_errors:
        with pytest.raises(ProcessingError) as info:
            engine(graph, lines, seed, piece)
        assert (info.value.line, info.value.node) in want_errors
        return
    got, _, _ = engine(graph, lines, seed, piece)
    assert got.lines() == want.lines()


# -- record mode (format = "csv") -----------------------------------------------------------

FIELDS = st.text(alphabet=st.sampled_from(list('ab1,"\n x;')), max_size=6)
CSV_KINDS = ["csv_route", "csv_validate", "csv_select", "write", "upper", "regex_route"]


def _csv_options(draw: Any, kind: str, targets: list[str], tag: str, width: int) -> dict[str, Any]:
    pick = lambda: draw(st.sampled_from(targets))  # noqa: E731
    column = lambda: draw(st.integers(0, width - 1))  # noqa: E731
    if kind == "csv_route":
        return {"processor": "csv_route", "column": column(), "routes": {"a": pick(), "1": pick()},
                "default": draw(st.sampled_from([*targets, ""]))}
    if kind == "csv_validate":
        rules = {str(column()): {"type": draw(st.sampled_from(["int", "str"])),
                                 "required": draw(st.booleans())}}
        nxt = pick()
        return {"processor": "csv_validate", "columns": rules, "next": nxt, "reason_column": f"why_{tag}",
                "invalid": draw(st.sampled_from([t for t in [*targets, ""] if t != nxt]))}
    if kind == "csv_select":
        # Keeps the record's width: the columns later nodes name by index stay there.
        order = draw(st.permutations(list(range(width))))
        return {"processor": "csv_select", "columns": order, "next": pick()}
    if kind == "write":
        return {"processor": "write", "output": f"side-{tag}", "next": draw(st.sampled_from([*targets, ""]))}
    if kind == "upper":
        return {"processor": "upper", "next": pick()}
    return {"processor": "regex_route", "routes": {pick(): draw(st.sampled_from(REGEXES))}, "default": pick()}


@st.composite
def csv_cases(draw: Any) -> tuple[dict[str, Any], list[str], list[list[str]]]:
    width = draw(st.integers(1, 3))
    size = draw(st.integers(1, 4))
    tags = [START] + [f"n{i}" for i in range(1, size)]
    nodes = {}
    for i, tag in enumerate(tags):
        kind = draw(st.sampled_from(CSV_KINDS))
        nodes[tag] = _csv_options(draw, kind, [END, *tags[i + 1 :]], tag, width)
    header = [f"h{i}" for i in range(width)]
    rows = draw(st.lists(st.lists(FIELDS, min_size=width, max_size=width), max_size=25))
    data = {"pipeline": {"format": "csv", "header": True, "on_error": "skip_line", "nodes": nodes}}
    return data, header, rows


def naive_records(graph: Graph, header: list[str], texts: list[str]) -> MemoryOutputs | None:
    """One record at a time, depth first, through process(); each node's records() hook
    first, with the columns that reach it; the main output starts with the header of
    the records sent to it (None: records of different columns are sent to it)."""
    from workers.records import RecordFormat

    fmt = RecordFormat(header=True)
    outputs = MemoryOutputs()
    instances = graph.instantiate()
    for inst in instances.values():
        if hasattr(inst, "start"):
            inst.start(outputs.sink)
    incoming: dict[str, Any] = {START: header}
    to_end: set[tuple[str, ...]] = set()
    order = [START]  # breadth first from start, then what nothing reaches
    for tag in order:
        order += [t for t in graph.nodes[tag].emits or () if t in graph.nodes and t not in order]
    for tag in order + [t for t in sorted(graph.nodes, key=graph.rank.__getitem__) if t not in order]:
        cols = incoming.get(tag, header)
        hook = getattr(instances[tag], "records", None)
        got = hook(fmt, cols) if hook else cols
        for nxt in graph.nodes[tag].emits or ():  # every node here declares its tags
            sent = got.get(nxt) if isinstance(got, dict) else got
            incoming.setdefault(nxt, sent)
            if nxt == END:
                to_end.add(tuple(sent))
    if len(to_end) > 1:
        return None
    out: list[str] = []

    def visit(tag: str, text: str) -> None:
        if tag == END:
            if not out:
                out.append(fmt.join(next(iter(to_end))))
            out.append(text)
            return
        inst = instances[tag]
        for t, produced in list(inst.process([text])):
            visit(t, produced)

    for text in texts:
        visit(START, text)
    outputs.sink.main.write("".join(line + "\n" for line in out))
    return outputs


@hyp
@given(csv_cases(), st.integers(0, 1000), st.integers(1, 64))
def test_record_mode_equals_the_naive_reference(case, seed, piece) -> None:
    from workers.records import RecordFormat

    data, header, rows = case
    graph = graph_from_dict(data)
    fmt = RecordFormat()
    texts = [fmt.join(row) for row in rows if row != [""]]  # a lone empty field is a blank line: no record
    want = naive_records(graph, header, texts)
    payload = "".join(t + "\n" for t in [fmt.join(header), *texts]).encode()
    got = MemoryOutputs()
    if want is None:  # records of different columns would reach the main output
        with pytest.raises(InputError, match="different columns"):
            run_file(graph, "input.csv", TrickleReader(payload, seed, piece), got.sink)
        return
    run_file(graph, "input.csv", TrickleReader(payload, seed, piece), got.sink)
    assert got.streams[""].getvalue() == want.streams[""].getvalue()
    for suffix in set(want.streams) | set(got.streams):
        assert got.lines(suffix) == want.lines(suffix), suffix
