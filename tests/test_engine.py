"""The tag-routing engine on real bytes: routing, order, errors, counters, tracing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers import graph_from_toml, run_text
from workers.errors import InputError, ProcessingError

ROUTE3 = """
[pipeline.nodes.start]
processor = "regex_route"
routes = { error = "ERROR", warn = "WARN" }
default = "info"
[pipeline.nodes.error]
processor = "upper"
[pipeline.nodes.warn]
processor = "lower"
[pipeline.nodes.info]
processor = "strip"
"""


def test_routes_each_line_by_first_matching_regex_and_keeps_input_order() -> None:
    graph = graph_from_toml(ROUTE3)
    out, result = run_text(graph, "a ERROR x\n  plain  \nWARN Y\nERROR and WARN\n")
    assert out.lines() == ["A ERROR X", "plain", "warn y", "ERROR AND WARN"]
    assert result.lines_in == 4 and result.lines_out == 4


def test_fan_out_copies_keep_emission_order_and_stay_with_their_line() -> None:
    graph = graph_from_toml("""
    [pipeline.nodes.start]
    processor = "fanout"
    to = ["loud", "end", "quiet"]
    [pipeline.nodes.loud]
    processor = "upper"
    [pipeline.nodes.quiet]
    processor = "lower"
    """)
    out, _ = run_text(graph, "Ab\nCd\n")
    # line 1's copies (loud, end, quiet) all come before line 2's, in emission order,
    # although "end" is reached one hop earlier than the others.
    assert out.lines() == ["AB", "Ab", "ab", "CD", "Cd", "cd"]


def test_fan_in_merges_lines_from_several_nodes_in_input_order() -> None:
    graph = graph_from_toml("""
    [pipeline.nodes.start]
    processor = "regex_route"
    routes = { slow = "^s" }
    default = "fast"
    [pipeline.nodes.slow]
    processor = "upper"
    next = "slower"
    [pipeline.nodes.slower]
    processor = "strip"
    next = "merge"
    [pipeline.nodes.fast]
    processor = "strip"
    next = "merge"
    [pipeline.nodes.merge]
    processor = "sample"
    every = 2
    """)
    out, _ = run_text(graph, "s1\nf2\ns3\nf4\nf5\n")
    # merge sees S1 f2 S3 f4 f5 in input order although the s-lines took two more hops,
    # so the stateful sample keeps the 1st, 3rd and 5th.
    assert out.lines() == ["S1", "S3", "f5"]


def test_a_cycle_runs_until_lines_leave_it() -> None:
    graph = graph_from_toml("""
    [pipeline.nodes.start]
    processor = "regex_route"
    routes = { trim = "^x" }
    default = "end"
    [pipeline.nodes.trim]
    processor = "replace"
    pattern = "^x"
    replacement = ""
    next = "start"
    """)
    out, result = run_text(graph, "xxxa\nb\nxc\n")
    assert out.lines() == ["a", "b", "c"]
    assert result.nodes["trim"].lines_in == 4


def test_hop_limit_fails_the_file_naming_node_and_line() -> None:
    graph = graph_from_toml("""
    [pipeline]
    max_hops = 5
    [pipeline.nodes.start]
    processor = "regex_route"
    routes = { again = "loop" }
    default = "end"
    [pipeline.nodes.again]
    processor = "strip"
    next = "start"
    """)
    with pytest.raises(ProcessingError) as info:
        run_text(graph, "fine\nloop forever\n")
    assert info.value.line == 2
    assert info.value.node in ("start", "again")
    assert "max_hops = 5" in str(info.value) and "input.log line 2" in str(info.value)


def test_hop_limit_with_skip_line_drops_only_the_looping_line() -> None:
    graph = graph_from_toml("""
    [pipeline]
    max_hops = 4
    on_error = "skip_line"
    [pipeline.nodes.start]
    processor = "regex_route"
    routes = { again = "loop" }
    default = "end"
    [pipeline.nodes.again]
    processor = "strip"
    next = "start"
    """)
    out, result = run_text(graph, "a\nloop\nb\n")
    assert out.lines() == ["a", "b"]
    assert result.error_count == 1 and result.errors[0]["line"] == 2


def _user_graph(tmp_path: Path, body: str, pipeline: str):
    """Write ``body`` as a module beside the config (a fresh name per test, since Python
    caches imports) and compile ``pipeline``, where ``myprocs`` names that module."""
    module = f"myprocs_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    return graph_from_toml(pipeline.replace("myprocs:", f"{module}:"), tmp_path)


def test_user_processors_from_a_module_beside_the_config(tmp_path: Path) -> None:
    graph = _user_graph(tmp_path, """
        def shout(lines):
            for line in lines:
                yield "end", line + "!"

        class Split:
            emits = ["end"]

            def __init__(self, sep=","):
                self.sep = sep

            def process(self, lines):
                return [("end", part) for line in lines for part in line.split(self.sep)]
    """, """
    [pipeline.nodes.start]
    processor = "regex_route"
    routes = { split = "," }
    default = "shout"
    [pipeline.nodes.split]
    processor = "myprocs:Split"
    sep = ","
    [pipeline.nodes.shout]
    processor = "myprocs:shout"
    """)
    out, _ = run_text(graph, "a,b\nhi\nc,d,e\n")
    assert out.lines() == ["a", "b", "hi!", "c", "d", "e"]


def test_stateful_finish_lines_come_after_all_others() -> None:
    graph = graph_from_toml("""
    [pipeline.nodes.start]
    processor = "count"
    patterns = { error = "ERROR" }
    next = "tail"
    [pipeline.nodes.tail]
    processor = "upper"
    """)
    out, _ = run_text(graph, "ERROR 1\nok\nERROR 2\n", trickle=True)
    assert out.lines() == ["ERROR 1", "OK", "ERROR 2", "count: error=2 other=1 total=3"]


def test_finish_output_is_routed_through_downstream_nodes(tmp_path: Path) -> None:
    graph = _user_graph(tmp_path, """
        class Total:
            emits = {"shout": "emits", "end": "emits"}

            def __init__(self):
                self.n = 0

            def process(self, lines):
                for line in lines:
                    self.n += 1
                    yield "end", line

            def finish(self):
                yield "shout", f"total {self.n}"
    """, """
    [pipeline.nodes.start]
    processor = "myprocs:Total"
    [pipeline.nodes.shout]
    processor = "upper"
    """)
    out, _ = run_text(graph, "a\nb\n")
    assert out.lines() == ["a", "b", "TOTAL 2"]


def test_processor_error_fails_the_file_naming_node_line_and_exception(tmp_path: Path) -> None:
    graph = _user_graph(tmp_path, """
        def picky(lines):
            for line in lines:
                if line == "bad":
                    raise ValueError("cannot take 'bad'")
                yield "end", line
    """, '[pipeline.nodes.start]\nprocessor = "myprocs:picky"\n')
    with pytest.raises(ProcessingError) as info:
        run_text(graph, "ok\nok\nbad\nok\n")
    err = info.value
    assert (err.line, err.node) == (3, "start")
    assert "ValueError: cannot take 'bad'" in str(err) and ":picky raised" in str(err)


def test_skip_line_isolates_failing_lines_of_a_batch_and_goes_on(tmp_path: Path) -> None:
    graph = _user_graph(tmp_path, """
        class Picky:
            emits = ["end"]
            def __init__(self):
                self.seen = []
            def process(self, lines):
                for line in lines:
                    self.seen.append(line)
                    if line.startswith("bad"):
                        raise ValueError(line)
                    yield "end", line
            def finish(self):
                yield "end", "seen " + ",".join(self.seen)
    """, """
    [pipeline]
    on_error = "skip_line"
    [pipeline.nodes.start]
    processor = "myprocs:Picky"
    """)
    out, result = run_text(graph, "a\nbad1\nb\nbad2\nc\n")
    # Each line reaches the processor exactly once: the failing ones are reported and
    # dropped, the rest of the batch is fed again from the line after the failure.
    assert out.lines() == ["a", "b", "c", "seen a,bad1,b,bad2,c"]
    assert [(e["line"], e["node"]) for e in result.errors] == [(2, "start"), (4, "start")]
    assert result.nodes["start"].errors == 2


def test_unknown_emitted_tag_is_an_error_naming_the_tag(tmp_path: Path) -> None:
    graph = _user_graph(tmp_path, """
        def lost(lines):
            for line in lines:
                yield "nowhere", line
    """, '[pipeline.nodes.start]\nprocessor = "myprocs:lost"\n')
    with pytest.raises(ProcessingError, match="unknown tag 'nowhere'") as info:
        run_text(graph, "x\n")
    assert info.value.line == 1


def test_malformed_pairs_from_a_user_processor_are_reported(tmp_path: Path) -> None:
    graph = _user_graph(tmp_path, """
        def broken(lines):
            for line in lines:
                yield "end", 42
    """, '[pipeline.nodes.start]\nprocessor = "myprocs:broken"\n')
    with pytest.raises(ProcessingError, match="must be strings"):
        run_text(graph, "x\n")


PASS = '[pipeline.nodes.start]\nprocessor = "strip"\n'


def test_binary_file_is_refused_with_the_line_of_the_first_nul() -> None:
    with pytest.raises(InputError, match="binary file") as info:
        run_text(graph_from_toml(PASS), b"text\nmore\nbin\x00ary\n")
    assert info.value.line == 3


def test_undecodable_bytes_fail_strict_and_are_replaced_with_replace() -> None:
    data = b"ok\ncaf\xe9\n"
    with pytest.raises(InputError, match="cannot decode byte 0xe9") as info:
        run_text(graph_from_toml(PASS), data)
    assert info.value.line == 2
    graph = graph_from_toml('[pipeline]\ndecode_errors = "replace"\n' + PASS)
    out, _ = run_text(graph, data)
    assert out.lines() == ["ok", "caf\ufffd"]


def test_a_line_over_max_line_bytes_is_refused_without_reading_it_whole() -> None:
    graph = graph_from_toml("[pipeline]\nmax_line_bytes = 100\n" + PASS)
    with pytest.raises(InputError, match="longer than max_line_bytes") as info:
        run_text(graph, "short\n" + "x" * 101 + "\nshort\n")
    assert info.value.line == 2
    # A line exactly at the limit is fine; an endless line fails within a bounded read.
    out, _ = run_text(graph, "y" * 100 + "\n")
    assert out.lines() == ["y" * 100]

    class Endless:
        read_bytes = 0

        def read(self, n: int) -> bytes:
            self.read_bytes += n
            return b"z" * n

    from tests.helpers import MemoryOutputs
    from workers.engine import run_file

    source = Endless()
    with pytest.raises(InputError, match="longer than max_line_bytes"):
        run_file(graph, "endless", source, MemoryOutputs().sink)
    assert source.read_bytes <= 2 * 256 * 1024


def test_line_endings_crlf_last_line_without_newline_and_empty_file() -> None:
    graph = graph_from_toml(PASS)
    out, _ = run_text(graph, b"a\r\nb\r\nlast", trickle=True)
    assert out.lines() == ["a", "b", "last"]
    out, result = run_text(graph, b"")
    assert out.lines() == [] and result.lines_in == 0


def test_chunk_boundaries_do_not_change_the_result() -> None:
    graph = graph_from_toml(ROUTE3)
    text = "".join(f"{'ERROR' if i % 3 == 0 else 'WARN'} línea {i} ü\r\n" for i in range(500))
    whole, _ = run_text(graph, text)
    trickled, _ = run_text(graph, text, trickle=True)
    assert whole.lines() == trickled.lines() and len(whole.lines()) == 500


def test_per_node_counters_count_lines_in_out_and_time() -> None:
    graph = graph_from_toml(ROUTE3 + '[pipeline.nodes.drop]\nprocessor = "filter"\ndrop = "x"\n')
    _, result = run_text(graph, "ERROR a\nWARN b\nc\nd\n")
    nodes = result.nodes
    assert (nodes["start"].lines_in, nodes["start"].lines_out) == (4, 4)
    assert (nodes["error"].lines_in, nodes["warn"].lines_in, nodes["info"].lines_in) == (1, 1, 2)
    assert nodes["drop"].lines_in == 0
    assert all(n.seconds >= 0 for n in nodes.values()) and nodes["start"].seconds > 0


def test_route_tracing_records_the_tags_of_sampled_lines() -> None:
    graph = graph_from_toml(ROUTE3)
    _, result = run_text(graph, "ERROR a\nWARN b\nc\nERROR d\n", trace_every=2)
    assert result.routes == [(1, ["start", "error", "end"]), (3, ["start", "info", "end"])]


def test_side_outputs_from_write_are_committed_with_the_main_output() -> None:
    graph = graph_from_toml("""
    [pipeline.nodes.start]
    processor = "regex_route"
    routes = { errors = "ERROR" }
    [pipeline.nodes.errors]
    processor = "write"
    output = "errors"
    next = "end"
    """)
    out, _ = run_text(graph, "a\nERROR b\nc\nERROR d\n")
    assert out.lines() == ["a", "ERROR b", "c", "ERROR d"]
    assert out.lines("errors") == ["ERROR b", "ERROR d"]


@pytest.mark.parametrize("lone", [True, False])
def test_pairs_that_are_not_tuples_are_unpacked_once_and_shown_as_emitted(tmp_path: Path, lone: bool) -> None:
    # A lone node takes the engine's unattributed path, a graph of two the general one:
    # both unpack a pair once (it may be a one-shot iterator), as a plain loop would.
    other = "" if lone else '[pipeline.nodes.other]\nprocessor = "strip"\n'
    body = """
        def iterators(lines):
            for line in lines:
                yield iter(("end", line + "!"))

        def lists(lines):
            for line in lines:
                yield ["end", line] if line != "bad" else ["end", 42]
    """
    graph = _user_graph(tmp_path, body, '[pipeline.nodes.start]\nprocessor = "myprocs:iterators"\n' + other)
    out, _ = run_text(graph, "a\nb\n")
    assert out.lines() == ["a!", "b!"]
    graph = _user_graph(tmp_path, body, '[pipeline.nodes.start]\nprocessor = "myprocs:lists"\n' + other)
    assert run_text(graph, "a\nb\n")[0].lines() == ["a", "b"]
    with pytest.raises(ProcessingError, match=r"emitted \['end', 42\]: tag and line must be strings") as info:
        run_text(graph, "a\nbad\n")
    assert info.value.line == 2
