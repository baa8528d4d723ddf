"""Pipelines by name, routes, CSV record mode and compressed inputs, through the engine,
the config and the CLI (the daemon's side is in test_routes_daemon.py)."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.daemon import ROOT, SUPERVISOR
from tests.helpers import MemoryOutputs, TrickleReader, graph_from_toml, run_text
from workers.config import parse_config
from workers.engine import run_file
from workers.errors import ConfigError, InputError, ProcessingError
from workers.names import output_name, strip_suffix
from workers.pipelines import compile_pipelines

TWO = """
[[routes]]
match = ["*.csv", "batch-*"]
pipeline = "batches"
[[routes]]
match = ["*.log", "*.txt"]
pipeline = "logs"

[pipelines.logs.nodes.start]
processor = "upper"
[pipelines.batches]
format = "csv"
header = true
[pipelines.batches.nodes.start]
processor = "csv_select"
columns = ["b", "a"]
"""


def pipelines_of(text: str, base: Path | None = None):
    base = base or Path.cwd()
    config = parse_config(tomllib.loads(text), base / "config.toml")
    return config, compile_pipelines(config, str(base))


def config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        pipelines_of(text)
    return info.value


# -- routes --------------------------------------------------------------------------------


def test_routes_pick_the_first_match_on_the_name_without_its_compression_suffix() -> None:
    _, p = pipelines_of(TWO)
    assert p.route("x.csv") == "batches"
    assert p.route("x.csv.gz") == "batches"  # matched as x.csv
    assert p.route("batch-7.log") == "batches"  # the first route wins, in the order written
    assert p.route("app.log.1.gz") is None  # matched as app.log.1: no *.log.1 route
    assert p.route("app.log") == "logs" and p.route("APP.LOG.GZ") is None  # globs are case-sensitive
    assert p.route("caf\udce9.txt.zst") == "logs"  # a name that is not UTF-8
    reason = p.unrouted("app.log.1.gz")
    assert "app.log.1" in reason and "routes[1] ['*.csv', 'batch-*']" in reason and "routes[2]" in reason


def test_a_single_pipeline_table_is_the_default_pipeline_with_a_catch_all_route() -> None:
    config, p = pipelines_of('[pipeline.nodes.start]\nprocessor = "upper"\n')
    assert list(config.pipelines) == ["default"] and p.route("anything.at.all") == "default"
    assert p.route(".hidden.gz") == "default"


def test_each_pipeline_has_its_own_settings_and_check_lists_routes_and_graphs(tmp_path: Path) -> None:
    config, _ = pipelines_of(TWO.replace('[pipelines.batches]\n', '[pipelines.batches]\non_error = "skip_line"\n'))
    assert config.pipelines["batches"].on_error == "skip_line" and config.pipelines["logs"].on_error == "fail_file"
    path = tmp_path / "config.toml"
    path.write_text(TWO)
    out = subprocess.run([sys.executable, str(SUPERVISOR), "-c", str(path), "check"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "1. *.csv, batch-* -> batches" in out and "2. *.log, *.txt -> logs" in out
    assert "pipeline logs: lines" in out and "pipeline batches: csv (delimiter ',', quotechar '\"', header true)" in out
    assert "start -> upper" in out and "start -> csv_select" in out


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[pipeline.nodes.start]\nprocessor = "upper"\n[pipelines.a.nodes.start]\nprocessor = "upper"\n',
     "pipelines", "not both"),
    ('[pipelines.a.nodes.start]\nprocessor = "upper"\n[pipelines.b.nodes.start]\nprocessor = "upper"\n',
     "routes", "need [[routes]]"),
    ('[pipelines."a b".nodes.start]\nprocessor = "upper"\n', 'pipelines."a b"', "label"),
    ('[pipelines.a.nodes.start]\nprocessor = "upper"\n[[routes]]\nmatch = ["*"]\npipeline = "b"\n',
     "routes[1].pipeline", "no pipeline 'b'"),
    ('[pipelines.a.nodes.start]\nprocessor = "upper"\n[[routes]]\nmatch = []\npipeline = "a"\n',
     "routes[1].match", "at least one"),
    ('[pipelines.a.nodes.start]\nprocessor = "upper"\n[[routes]]\nmatch = ["*"]\n', "routes[1].pipeline",
     "required"),
    ('[pipelines.a.nodes.start]\nprocessor = "upper"\n[[routes]]\nmatch = ["*"]\npipeline = "a"\nmatches = 1\n',
     "routes[1].matches", "unknown key"),
    ('routes = 3\n[pipelines.a.nodes.start]\nprocessor = "upper"\n', "routes", "array of tables"),
    ('[pipelines.a]\nformat = "tsv"\n[pipelines.a.nodes.start]\nprocessor = "upper"\n', "pipelines.a.format",
     "one of"),
    ('[pipelines.a]\ndelimiter = ";"\n[pipelines.a.nodes.start]\nprocessor = "upper"\n', "pipelines.a.delimiter",
     'format = "csv"'),
    ('[pipelines.a]\nformat = "csv"\ndelimiter = ";;"\n[pipelines.a.nodes.start]\nprocessor = "upper"\n',
     "pipelines.a.delimiter", "one character"),
    ('[pipelines.a]\nformat = "csv"\nquotechar = ","\n[pipelines.a.nodes.start]\nprocessor = "upper"\n',
     "pipelines.a.quotechar", "differ"),
    ('[pipelines.a]\nmax_expansion = -1\n[pipelines.a.nodes.start]\nprocessor = "upper"\n',
     "pipelines.a.max_expansion", "at least 0"),
    ('[pipelines.a]\nmax_decompressed_mb = "big"\n[pipelines.a.nodes.start]\nprocessor = "upper"\n',
     "pipelines.a.max_decompressed_mb", "a number"),
    ('[pipelines.a.nodes.start]\nprocessor = "nope"\n', "pipelines.a.nodes.start.processor", "unknown processor"),
    ('[pipelines.a.nodes.start]\nprocessor = "upper"\nnext = "gone"\n', "pipelines.a.nodes.start.next",
     "no [pipelines.a.nodes.gone]"),
    ('[pipelines.a.nodes.other]\nprocessor = "upper"\n', "pipelines.a.nodes", "no [pipelines.a.nodes.start]"),
    ('[pipelines.a.nodes.start]\nprocessor = "csv_select"\ncolumns = [0]\n', "pipelines.a.nodes.start.processor",
     'format = "csv"'),
    ('[pipelines.a]\nformat = "csv"\n[pipelines.a.nodes.start]\nprocessor = "csv_route"\ncolumn = "status"\n'
     'routes = { x = "end" }\n', "pipelines.a.header", "header = true"),
])
def test_every_new_config_error_names_its_key(text: str, key: str, words: str) -> None:
    error = config_error(text)
    assert error.key == key, error
    assert words in str(error), error


# -- compressed inputs through the engine ---------------------------------------------------


def test_a_gzip_input_is_read_decompressed_and_progress_follows_the_compressed_bytes() -> None:
    graph = graph_from_toml('[pipeline.nodes.start]\nprocessor = "upper"\n')
    text = "".join(f"line {i} of a rotated log\n" for i in range(60_000))
    data = gzip.compress(text.encode())
    seen: list[tuple[int, int]] = []
    out = MemoryOutputs("app.log.1.gz")
    result = run_file(graph, "app.log.1.gz", io.BytesIO(data), out.sink, lambda b, n: seen.append((b, n)))
    assert out.streams[""].getvalue() == text.upper()
    assert result.lines_in == 60_000 and result.bytes_in == len(data)
    assert len(seen) > 3 and all(b <= len(data) for b, _ in seen) and seen[-1][0] == len(data)
    assert [b for b, _ in seen] == sorted(b for b, _ in seen)


def test_a_corrupt_archive_is_an_input_error_with_the_compressed_offset() -> None:
    graph = graph_from_toml('[pipeline.nodes.start]\nprocessor = "upper"\n')
    data = bytearray(gzip.compress(b"".join(b"%d some text that compresses\n" % i for i in range(50_000))))
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    with pytest.raises(InputError) as info:
        run_text(graph, bytes(data), name="x.log.gz")
    assert "x.log.gz" in str(info.value) and "gzip" in str(info.value) and "byte" in str(info.value)
    assert not isinstance(info.value, ProcessingError)  # an input error: failed/ at once


def test_the_bomb_limits_are_per_pipeline() -> None:
    graph = graph_from_toml('[pipeline]\nmax_decompressed_mb = 1\n[pipeline.nodes.start]\nprocessor = "upper"\n')
    with pytest.raises(InputError, match="max_decompressed_mb"):
        run_text(graph, gzip.compress(b"a\n" * (1 << 20)), name="bomb.gz")
    unlimited = graph_from_toml('[pipeline]\nmax_expansion = 0\nmax_decompressed_mb = 0\n'
                                '[pipeline.nodes.start]\nprocessor = "upper"\n')
    _, result = run_text(unlimited, gzip.compress(b"a\n" * (1 << 20)), name="fine.gz")
    assert result.lines_in == 1 << 20


def test_outputs_are_named_without_the_compression_suffix() -> None:
    assert output_name("app.log.1.gz") == "app.log.1" and output_name("app.log.1.gz", "errors") == "app.log.1.errors"
    assert output_name("x.csv.ZST") == "x.csv" and output_name("plain.log") == "plain.log"
    assert strip_suffix(".gz") == ".gz" and strip_suffix("a.tar.gz") == "a.tar"


# -- CSV records ---------------------------------------------------------------------------

CSV = """
[pipeline]
format = "csv"
header = true
[pipeline.nodes.start]
processor = "csv_select"
columns = ["name", "id"]
rename = { id = "key" }
next = "split"
[pipeline.nodes.split]
processor = "csv_route"
column = "key"
routes = { "2" = "two" }
[pipeline.nodes.two]
processor = "write"
output = "two"
"""


def test_csv_records_keep_quoted_newlines_and_delimiters_and_each_output_gets_the_header() -> None:
    graph = graph_from_toml(CSV)
    data = ('\ufeffid,name,note\r\n1,"Smith, J.",plain\r\n2,"two\r\nlines",x\r\n\r\n3,"say ""hi""",y\r\n')
    for trickle in (False, True):
        out, result = run_text(graph, data.encode(), trickle=trickle)
        assert out.streams[""].getvalue() == 'name,key\n"Smith, J.",1\n"say ""hi""",3\n'
        assert out.streams["two"].getvalue() == 'name,key\n"two\nlines",2\n'
        assert result.lines_in == 3


def test_a_text_processor_sees_a_record_as_its_csv_text_and_error_lines_are_the_records_first() -> None:
    graph = graph_from_toml('[pipeline]\nformat = "csv"\n'
                           '[pipeline.nodes.start]\nprocessor = "tests.helpers:fail_on_x"\n', ROOT)
    data = 'a,b\n"multi\nline\nfield",ok\nx,"bad\nrecord"\n'
    with pytest.raises(ProcessingError) as info:
        run_text(graph, data)
    assert info.value.line == 5  # record 3 starts on physical line 5
    out, _ = run_text(graph_from_toml('[pipeline]\nformat = "csv"\n[pipeline.nodes.start]\nprocessor = "upper"\n'),
                      data)
    assert out.streams[""].getvalue() == data.upper()


@pytest.mark.parametrize(("data", "line", "words"), [
    ('a,b\n1,"open\n2,3\n', 2, "ends inside a quoted field"),
    ('a,b\n1,"x"y,3\n', 2, "not valid CSV"),
    ('a,b\n1,2\n\x00\n', 3, "NUL"),
    ('a,b\n1,2\n3,x\ry\n', 3, "not valid CSV"),  # a lone CR, in a batch without quotes too
])
def test_bad_csv_is_an_input_error_naming_the_line(data: str, line: int, words: str) -> None:
    graph = graph_from_toml('[pipeline]\nformat = "csv"\n[pipeline.nodes.start]\nprocessor = "upper"\n')
    with pytest.raises(InputError) as info:
        run_text(graph, data)
    assert info.value.line == line and words in str(info.value)


def test_an_unclosed_quote_is_bounded_by_max_line_bytes() -> None:
    graph = graph_from_toml('[pipeline]\nformat = "csv"\nmax_line_bytes = 1000\n'
                           '[pipeline.nodes.start]\nprocessor = "upper"\n')
    with pytest.raises(InputError, match="max_line_bytes") as info:
        run_text(graph, 'a\n"' + "x\n" * 200_000)
    assert info.value.line == 2


def test_a_header_column_that_is_missing_fails_the_file_naming_node_and_column() -> None:
    graph = graph_from_toml(CSV)
    with pytest.raises(InputError) as info:
        run_text(graph, "id,title\n1,x\n", name="batch.csv")
    assert "batch.csv" in str(info.value) and "'name'" in str(info.value) and info.value.node == "start"
    assert not isinstance(info.value, ProcessingError)


def test_csv_in_another_dialect_is_written_back_in_it() -> None:
    graph = graph_from_toml('[pipeline]\nformat = "csv"\ndelimiter = ";"\nquotechar = "\'"\nheader = true\n'
                           '[pipeline.nodes.start]\nprocessor = "csv_select"\ncolumns = [1, 0]\n')
    out, _ = run_text(graph, "a;b\n1;'x;y'\n'p\nq';2\n")
    assert out.streams[""].getvalue() == "b;a\n'x;y';1\n2;'p\nq'\n"


def test_the_cli_runs_each_file_through_its_pipeline(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(TWO)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.log.gz").write_bytes(gzip.compress(b"hello\n"))
    (tmp_path / "in" / "b.csv").write_text("a,b\n1,2\n")
    (tmp_path / "in" / "c.dat").write_text("no route\n")
    done = subprocess.run([sys.executable, str(SUPERVISOR), "-c", str(config), "run", "--output-dir",
                           str(tmp_path / "out"), *(str(tmp_path / "in" / n) for n in ("a.log.gz", "b.csv", "c.dat"))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert (tmp_path / "out" / "a.log").read_text() == "HELLO\n"
    assert (tmp_path / "out" / "b.csv").read_text() == "b,a\n2,1\n"
    assert "c.dat: failed: no route matches" in done.stderr
    forced = subprocess.run([sys.executable, str(SUPERVISOR), "-c", str(config), "run", "--pipeline", "logs",
                             "--output-dir", str(tmp_path / "out"), str(tmp_path / "in" / "c.dat")],
                            capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0 and (tmp_path / "out" / "c.dat").read_text() == "NO ROUTE\n"


def test_a_trickled_compressed_csv_gives_what_the_plain_one_gives() -> None:
    graph = graph_from_toml(CSV)
    rows = "".join(f'{i},"name {i}\nwith a newline",n\r\n' for i in range(3000))
    data = ("id,name,note\r\n" + rows).encode()
    plain, _ = run_text(graph, data)
    out = MemoryOutputs()
    run_file(graph, "x.csv.gz", TrickleReader(gzip.compress(data), max_piece=300), out.sink)
    assert out.streams[""].getvalue() == plain.streams[""].getvalue()
    assert out.streams["two"].getvalue() == plain.streams["two"].getvalue()


def test_a_node_that_declares_no_tags_passes_its_columns_on() -> None:
    graph = graph_from_toml('[pipeline]\nformat = "csv"\nheader = true\n'
                           '[pipeline.nodes.start]\nprocessor = "csv_select"\ncolumns = ["b"]\nnext = "u"\n'
                           '[pipeline.nodes.u]\nprocessor = "tests.helpers:to_v"\n'
                           '[pipeline.nodes.v]\nprocessor = "csv_validate"\ninvalid = ""\n'
                           'columns.b = { type = "int" }\n', ROOT)
    out, _ = run_text(graph, "a,b\nx,1\ny,2\n")
    assert out.streams[""].getvalue() == "b\n1\n2\n"


def test_two_write_nodes_on_one_suffix_share_one_header_line() -> None:
    graph = graph_from_toml('[pipeline]\nformat = "csv"\nheader = true\n'
                           '[pipeline.nodes.start]\nprocessor = "regex_route"\nroutes = { w2 = "^y" }\n'
                           'default = "w1"\n[pipeline.nodes.w1]\nprocessor = "write"\noutput = "all"\n'
                           '[pipeline.nodes.w2]\nprocessor = "write"\noutput = "all"\n')
    out, _ = run_text(graph, "a,b\nx,1\ny,z\nx,2\n")
    lines = out.lines("all")
    assert lines[0] == "a,b" and sorted(lines[1:]) == ["x,1", "x,2", "y,z"]  # the header once, first


def test_records_of_different_columns_for_one_output_fail_the_file_naming_both_nodes() -> None:
    graph = graph_from_toml('[pipeline]\nformat = "csv"\nheader = true\n'
                           '[pipeline.nodes.start]\nprocessor = "csv_validate"\nnext = "sel"\ninvalid = "end"\n'
                           'columns.b = { type = "int" }\n'
                           '[pipeline.nodes.sel]\nprocessor = "csv_select"\ncolumns = ["b"]\n')
    with pytest.raises(InputError, match="different columns go to output/<name>") as info:
        run_text(graph, "a,b\ny,2\nx,zz\n", name="mixed.csv")
    assert "'start'" in str(info.value) and "'sel'" in str(info.value) and "mixed.csv" in str(info.value)


def test_a_record_of_several_lines_is_held_to_max_line_bytes() -> None:
    graph = graph_from_toml('[pipeline]\nformat = "csv"\nmax_line_bytes = 2048\n'
                           '[pipeline.nodes.start]\nprocessor = "upper"\n')
    field = '"' + ("y" * 900 + "\n") * 4 + '"'
    with pytest.raises(InputError, match="record longer than max_line_bytes") as info:
        run_text(graph, f"a,b\n1,{field}\n")
    assert info.value.line == 2
