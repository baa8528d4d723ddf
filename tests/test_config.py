"""Config loading and graph validation: every error names the key (and the node)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from workers.config import load_config
from workers.errors import ConfigError
from workers.graph import compile_graph

ROOT = Path(__file__).resolve().parents[1]
START = '[pipeline.nodes.start]\nprocessor = "upper"\n'


def load(tmp_path: Path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    config = load_config(path)
    return config, compile_graph(config.pipelines["default"], str(tmp_path))


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def test_shipped_config_is_valid_and_every_key_has_a_comment() -> None:
    config = load_config(ROOT / "config.toml")
    logs = compile_graph(config.pipelines["logs"], str(ROOT))
    batches = compile_graph(config.pipelines["batches"], str(ROOT))
    assert config.watch.dir == ROOT / "watch_dir"
    assert set(logs.nodes) == {"start", "levels", "triage", "errors"}
    assert set(batches.nodes) == {"start", "rejects", "pick", "by_status", "voided"}
    assert [(r.match, r.pipeline) for r in config.routes] == [(("*.csv", "batch-*"), "batches"), (("*",), "logs")]
    # Settings: each key right under its comment. Nodes: a comment above each table.
    lines = (ROOT / "config.toml").read_text().splitlines()
    in_nodes = False
    for i, line in enumerate(lines):
        if line.startswith("["):
            in_nodes = ".nodes." in line
            if in_nodes:
                assert lines[i - 1].startswith("#"), f"no comment above {line}"
        elif "=" in line and not line.startswith("#") and not in_nodes:
            assert lines[i - 1].startswith("#"), f"no comment for {line!r}"


def test_defaults_and_paths_relative_to_the_config_file(tmp_path: Path) -> None:
    config, _ = load(tmp_path, START)
    assert config.watch.dir == tmp_path / "watch_dir"
    assert config.output_dir == tmp_path / "watch_dir" / "output"
    p = config.pipelines["default"]
    assert (p.max_hops, p.on_error, p.encoding, p.decode_errors, p.max_line_bytes) == (
        64, "fail_file", "utf-8", "strict", 1048576)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[watch]\ndirr = 'x'\n" + START, "watch.dirr", "unknown key"),
        ("[whatch]\n" + START, "whatch", "unknown key"),
        ("[watch]\ndir = 3\n" + START, "watch.dir", "must be a string"),
        ("[watch]\ndir = ''\n" + START, "watch.dir", "must not be empty"),
        ("[pipeline]\nmax_hops = 0\n" + START, "pipeline.max_hops", "at least 1"),
        ("[watch]\nbacklog_window = 10\n" + START, "watch.backlog_window", "at least 100"),
        ("[pipeline]\nmax_hops = true\n" + START, "pipeline.max_hops", "must be an integer"),
        ("[pipeline]\non_error = 'ignore'\n" + START, "pipeline.on_error", "'fail_file', 'skip_line'"),
        ("[pipeline]\nencoding = 'klingon'\n" + START, "pipeline.encoding", "not an encoding"),
        ("[pipeline]\nencoding = 'utf-16'\n" + START, "pipeline.encoding", "ASCII-compatible"),
        ("[pipeline]\ndecode_errors = 'ignore'\n" + START, "pipeline.decode_errors", "'strict', 'replace'"),
        ("[pipeline]\nmax_line_bytes = 'big'\n" + START, "pipeline.max_line_bytes", "must be an integer"),
        ("[pipeline]\nnodes = 3\n", "pipeline.nodes", "must be a table"),
        ("[pipeline.nodes.other]\nprocessor = 'upper'\n", "pipeline.nodes", "no [pipeline.nodes.start]"),
        ("[pipeline.nodes.start]\nnext = 'end'\n", "pipeline.nodes.start.processor", "is required"),
        (START + "[pipeline.nodes.end]\nprocessor = 'upper'\n", "pipeline.nodes.end", "terminal tag"),
        ("[pipeline.nodes.start]\nprocessor = 'uppr'\n", "pipeline.nodes.start.processor", "unknown processor 'uppr'"),
        ("[pipeline.nodes.start]\nprocessor = 'upper'\nnxt = 'end'\n", "pipeline.nodes.start.nxt",
         "unknown option"),
        ("[pipeline.nodes.start]\nprocessor = 'upper'\nnext = 'nowhere'\n", "pipeline.nodes.start.next",
         "no [pipeline.nodes.nowhere]"),
        ("[pipeline.nodes.start]\nprocessor = 'regex_route'\nroutes = { a = '(' }\n",
         "pipeline.nodes.start.routes.a", "not a valid regular expression"),
        ("[pipeline.nodes.start]\nprocessor = 'regex_route'\nroutes = { a = 'x' }\n",
         "pipeline.nodes.start.routes.a", "no [pipeline.nodes.a]"),
        ("[pipeline.nodes.start]\nprocessor = 'filter'\n", "pipeline.nodes.start", "keep"),
        ("[pipeline.nodes.start]\nprocessor = 'nosuchmodule_xyz:thing'\n", "pipeline.nodes.start.processor",
         "cannot import module 'nosuchmodule_xyz'"),
        ("[pipeline.nodes.start]\nprocessor = 'json:nothing_here'\n", "pipeline.nodes.start.processor",
         "has no attribute 'nothing_here'"),
        ("[pipeline.nodes.start]\nprocessor = 'json:__name__'\n", "pipeline.nodes.start.processor",
         "not a class or a function"),
        ("[workers]\nbackend = 'spark'\n" + START, "workers.backend", "'local', 'celery'"),
        ("[celery]\nbroker_url = 'amqp://x'\n" + START, "celery.broker_url", "redis://"),
        ("[celery]\nvisibility_timeout = 60\n" + START, "celery.visibility_timeout", "longer than"),
        ("[web]\nport = 70000\n" + START, "web.port", "0 to 65535"),
        ("[web]\nallowed_hosts = ['.example.org']\n" + START, "web.allowed_hosts", "without a port"),
        ("[web]\nallowed_hosts = ['dash:8000']\n" + START, "web.allowed_hosts", "without a port"),
        ("[web]\nallowed_hosts = ['a..b']\n" + START, "web.allowed_hosts", "without a port"),
        ("[web]\nprotect_reads = true\n" + START, "web.protect_reads", "needs [web] token"),
    ],
)
def test_each_config_error_names_its_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    err = error_of(tmp_path, text)
    assert err.key.startswith(key), (err.key, str(err))
    assert words in str(err)


def test_user_processor_options_are_checked_against_its_signature(tmp_path: Path) -> None:
    (tmp_path / "cfgprocs.py").write_text(textwrap.dedent("""
        class Tagger:
            def __init__(self, tag, prefix=""):
                if not tag:
                    raise ValueError("tag must not be empty")
                self.tag = tag
            def process(self, lines):
                for line in lines:
                    yield "end", line

        def plain(lines):
            return [("end", line) for line in lines]
    """))
    node = "[pipeline.nodes.start]\nprocessor = 'cfgprocs:Tagger'\n"
    assert error_of(tmp_path, node).key == "pipeline.nodes.start.tag"
    err = error_of(tmp_path, node + "tag = 'x'\ncolour = 'red'\n")
    assert err.key == "pipeline.nodes.start.colour" and "accepted: tag, prefix" in str(err)
    err = error_of(tmp_path, node + "tag = ''\n")
    assert err.key == "pipeline.nodes.start" and "ValueError: tag must not be empty" in str(err)
    err = error_of(tmp_path, "[pipeline.nodes.start]\nprocessor = 'cfgprocs:plain'\nx = 1\n")
    assert err.key == "pipeline.nodes.start.x" and "takes none" in str(err)
    _, graph = load(tmp_path, node + "tag = 'x'\n")
    assert graph.nodes["start"].emits is None


def test_missing_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[watch\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_config_is_frozen(tmp_path: Path) -> None:
    config, _ = load(tmp_path, START)
    with pytest.raises(AttributeError):
        config.pipelines["default"].max_hops = 3  # type: ignore[misc]


def test_celery_defaults_work_together(tmp_path: Path) -> None:
    """backend = "celery" and a broker are all it takes: the visibility timeout left out
    is derived from [workers] (the longest job, 600 s x 64 + 30, plus 600 s)."""
    config, _ = load(tmp_path, "[workers]\nbackend = 'celery'\n[celery]\nbroker_url = 'redis://127.0.0.1:6379/0'\n"
                     + START)
    assert config.celery.visibility_timeout == 600 * 64 + 30 + 600
    small, _ = load(tmp_path, "[workers]\nbackend = 'celery'\nfile_timeout = 10\nbatch_files = 4\n" + START)
    assert small.celery.visibility_timeout == 10 * 4 + 30 + 600


def test_a_reload_must_not_outlast_the_running_visibility_timeout(tmp_path: Path) -> None:
    from workers.config import reloaded

    running, _ = load(tmp_path, "[workers]\nbackend = 'celery'\nfile_timeout = 10\nbatch_files = 4\n" + START)
    longer, _ = load(tmp_path, "[workers]\nbackend = 'celery'\nfile_timeout = 200\nbatch_files = 4\n" + START)
    with pytest.raises(ConfigError) as info:
        reloaded(running, longer)
    assert info.value.key == "celery.visibility_timeout"
    same, _ = load(tmp_path, "[workers]\nbackend = 'celery'\nfile_timeout = 10\nbatch_files = 4\n" + START)
    assert reloaded(running, same)[1] == []  # a derived timeout is no change of [celery]


@pytest.mark.parametrize("name", ["report.csv.filepart", "a.log.partial", "big.iso.crdownload", "x.pdf.download",
                                  "data.!sync", "~$budget.xlsx", "a.log.part", "a.tmp", ".hidden", "a.swp", "a~"])
def test_upload_temporary_names_are_never_work_by_default(tmp_path: Path, name: str) -> None:
    """WinSCP uploads to NAME.filepart and renames at the end; browsers, sync tools and
    Office write under names of their own: none of them is ever claimed half-written."""
    from workers.queue import FolderQueue

    config, _ = load(tmp_path, START)
    q = FolderQueue(tmp_path, config.watch.include, config.watch.exclude, "")
    assert not q.is_candidate_name(name)
    assert q.is_candidate_name("report.csv") and q.is_candidate_name("a.log")
