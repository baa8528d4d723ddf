"""One folder, many kinds of files, through the real daemon: routes to pipelines by
name, compressed inputs made by the real gzip, bzip2, xz and zstd tools, CSV batches."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.components import require
from tests.daemon import BASE_CONFIG, SUPERVISOR, behave_config, drop, folder, journal, start, wait_for, write_config

ROUTED = BASE_CONFIG.replace('[pipeline.nodes.start]\nprocessor = "upper"\n', "") + """
[[routes]]
match = ["*.csv"]
pipeline = "batches"
[[routes]]
match = ["*.log", "*.log.*", "*.txt"]
pipeline = "logs"

[pipelines.logs.nodes.start]
processor = "upper"

[pipelines.batches]
format = "csv"
header = true
[pipelines.batches.nodes.start]
processor = "csv_validate"
invalid = "bad"
columns.amount = { required = true, type = "float" }
[pipelines.batches.nodes.bad]
processor = "write"
output = "invalid"
"""

_rng = random.Random(7)
LOG = "".join(f"2026-12-02 INFO request {i} id={_rng.getrandbits(64):016x} done\n" for i in range(2000))
CSV = '\ufeffid,amount,note\r\n1,9.5,"a note, with a comma"\r\n2,x,"two\r\nlines"\r\n3,,empty\r\n5,7\r\n4,1e3,ok\r\n'


def compress(tool: str, data: bytes, *args: str) -> bytes:
    return subprocess.run([require(tool), "-c", *args], input=data, capture_output=True, check=True,
                          timeout=60).stdout


def done(watch: Path, names: list[str]) -> bool:
    finished = set(folder(watch, "processed")) | set(folder(watch, "failed"))
    return all(n in finished for n in names)


def scrape(d) -> str:
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    with urllib.request.urlopen(f"{url}metrics", timeout=10) as response:
        return response.read().decode()


def test_one_drop_of_many_kinds_each_through_its_pipeline(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, ROUTED)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    inputs = {
        "app.log.1.gz": compress("gzip", LOG.encode()[:40_000]) + compress("gzip", LOG.encode()[40_000:]),
        "app.log.2.bz2": compress("bzip2", LOG.encode()),
        "app.log.3.xz": compress("xz", LOG.encode()),
        "notes.txt.zst": compress("zstd", LOG.encode(), "-q"),
        "today.log": LOG.encode(),
        "batch.csv": CSV.encode(),
        "batch2.csv.gz": compress("gzip", CSV.encode()),
        "image.dat": b"no route for this one\n",
    }
    for name, data in inputs.items():
        drop(watch, name, data)
    wait_for(lambda: done(watch, list(inputs)), 60, "every file of the drop finished")
    assert folder(watch, "failed") == ["image.dat"]
    reason = (watch / "failed" / "image.dat.reason").read_text()
    assert "no route matches" in reason and "routes[1] ['*.csv']" in reason and "routes[2]" in reason
    for name, data in inputs.items():  # every input moved on unchanged
        where = "failed" if name == "image.dat" else "processed"
        assert (watch / where / name).read_bytes() == data, name
    for name in ("app.log.1", "app.log.2", "app.log.3", "notes.txt", "today.log"):
        assert (watch / "output" / name).read_text() == LOG.upper(), name
    for name in ("batch.csv", "batch2.csv"):
        assert (watch / "output" / name).read_text() == 'id,amount,note\n1,9.5,"a note, with a comma"\n4,1e3,ok\n'
        invalid = (watch / "output" / f"{name}.invalid").read_text()
        assert invalid.startswith("id,amount,note,errors\n")  # the BOM is no part of the header
        assert invalid.count("\n") == 1 + 4  # the header, 3 records (one of them two lines)
        assert '2,x,"two\nlines",amount: not a float' in invalid and "3,,empty,amount: is empty" in invalid
        assert "5,7,\"has 2 fields, the header has 3\"" in invalid  # a ragged row (its reason quoted: a comma)
    events = {e["file"]: e for e in journal(watch) if e["event"] in ("processed", "failed")}
    assert {n: events[n].get("pipeline") for n in inputs} == {
        "app.log.1.gz": "logs", "app.log.2.bz2": "logs", "app.log.3.xz": "logs", "notes.txt.zst": "logs",
        "today.log": "logs", "batch.csv": "batches", "batch2.csv.gz": "batches", "image.dat": None}
    assert events["app.log.1.gz"]["output"] == ["app.log.1"] and events["app.log.1.gz"]["lines_in"] == 2000
    history = subprocess.run([sys.executable, str(SUPERVISOR), "-c", str(config), "history", "batch.csv"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "pipeline='batches'" in history.stdout, history.stdout
    def counted() -> str | None:
        text = scrape(d)
        return text if 'foldermill_pipeline_files_total{outcome="processed",pipeline="batches"} 2.0' in text else None

    metrics = wait_for(counted, 10, "the per-pipeline counters in /metrics")
    assert 'foldermill_pipeline_files_total{outcome="processed",pipeline="logs"} 5.0' in metrics
    assert 'foldermill_pipeline_lines_total{pipeline="logs"} 10000.0' in metrics
    assert 'foldermill_node_lines_total{direction="in",node="start",pipeline="batches"} 10.0' in metrics
    assert "image.dat" not in metrics  # a label is a configured name, never a file's
    assert d.stop() == 0


def test_a_bad_archive_fails_at_once_and_the_daemon_keeps_going(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, ROUTED.replace("[pipelines.logs.nodes.start]",
                                                   "[pipelines.logs]\nmax_decompressed_mb = 4\n"
                                                   "[pipelines.logs.nodes.start]"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    good = compress("xz", LOG.encode())
    corrupt = bytearray(compress("gzip", LOG.encode() * 20))
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 8] = b"\x00" * 8
    bad = {
        "truncated.log.zst": compress("zstd", LOG.encode() * 20, "-q")[:-7],
        "corrupt.log.gz": bytes(corrupt),
        "bomb.log.bz2": compress("bzip2", b"\n" * (64 << 20)),
    }
    for name, data in bad.items():
        drop(watch, name, data)
    drop(watch, "fine.log.xz", good)
    wait_for(lambda: done(watch, [*bad, "fine.log.xz"]), 60, "the bad archives and the good one finished")
    assert folder(watch, "failed") == sorted(bad) and folder(watch, "processed") == ["fine.log.xz"]
    reasons = {n: (watch / "failed" / f"{n}.reason").read_text() for n in bad}
    assert "truncated zstd" in reasons["truncated.log.zst"]
    assert re.search(r"corrupt gzip data at compressed byte \d+", reasons["corrupt.log.gz"])
    assert "max_decompressed_mb" in reasons["bomb.log.bz2"] or "max_expansion" in reasons["bomb.log.bz2"]
    failed = [e for e in journal(watch) if e["event"] == "failed"]
    assert all(e["attempt"] == 1 for e in failed) and len(failed) == 3  # input errors: no retry
    assert not any((watch / "output" / n).exists() for n in ("truncated.log", "corrupt.log", "bomb.log"))
    assert d.alive()
    assert d.stop() == 0


def test_a_plain_file_and_its_compressed_twin_get_outputs_of_their_own(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, ROUTED)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "app.log", "plain\n")
    drop(watch, "app.log.gz", compress("gzip", b"zipped\n"))
    wait_for(lambda: len(folder(watch, "processed")) == 2, 30, "both files processed")
    outputs = {n: (watch / "output" / n).read_text() for n in folder(watch, "output")}
    assert sorted(outputs.values()) == ["PLAIN\n", "ZIPPED\n"], outputs  # neither replaced the other
    # One after the other: the later one's output/app.log is taken on disk, not just reserved.
    drop(watch, "b.log", "first\n")
    wait_for(lambda: "b.log" in folder(watch, "processed"), 30, "b.log processed")
    drop(watch, "b.log.GZ", compress("gzip", b"second\n"))
    drop(watch, "b.log.xz", compress("xz", b"third\n"))
    wait_for(lambda: len(folder(watch, "processed")) == 5, 30, "its compressed twins processed")
    outputs = {n: (watch / "output" / n).read_text() for n in folder(watch, "output") if n.startswith("b")}
    assert outputs["b.log"] == "FIRST\n" and sorted(outputs.values()) == ["FIRST\n", "SECOND\n", "THIRD\n"], outputs
    assert d.stop() == 0


def test_a_reload_that_changes_a_route(tmp_path: Path, daemons) -> None:
    text = ROUTED + '\n[pipelines.quiet.nodes.start]\nprocessor = "lower"\n'
    config = write_config(tmp_path, text)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "before.txt", "Mixed Case\n")
    wait_for(lambda: folder(watch, "processed") == ["before.txt"], 30, "a .txt file through the logs pipeline")
    assert (watch / "output" / "before.txt").read_text() == "MIXED CASE\n"
    split = 'match = ["*.log", "*.log.*"]\npipeline = "logs"\n[[routes]]\nmatch = ["*.txt"]\npipeline = "quiet"'
    config.write_text(config.read_text().replace('match = ["*.log", "*.log.*", "*.txt"]\npipeline = "logs"', split))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.log(), 10, "the reload in the log")
    assert "3 routes" in d.log()
    drop(watch, "after.txt", "Mixed Case\n")
    drop(watch, "after.log", "Mixed Case\n")
    wait_for(lambda: done(watch, ["after.txt", "after.log"]), 30, "the files after the reload")
    assert (watch / "output" / "after.txt").read_text() == "mixed case\n"
    assert (watch / "output" / "after.log").read_text() == "MIXED CASE\n"
    # A reload naming a pipeline that does not exist is refused; the routes stay.
    config.write_text(config.read_text().replace('pipeline = "quiet"', 'pipeline = "gone"'))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.log(), 10, "the refusal in the log")
    assert "routes[3].pipeline" in d.log()
    drop(watch, "later.txt", "Mixed Case\n")
    wait_for(lambda: done(watch, ["later.txt"]), 30, "a file after the refused reload")
    assert (watch / "output" / "later.txt").read_text() == "mixed case\n"
    assert d.stop() == 0


def test_content_dedupe_is_per_pipeline(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, ROUTED.replace('settle = 0.3\n', 'settle = 0.3\ndedupe = "content"\n', 1))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    same = "id,amount,note\n1,2.5,x\n"
    drop(watch, "first.log", same)
    wait_for(lambda: done(watch, ["first.log"]), 30, "first.log processed")
    drop(watch, "again.log", same)  # the same bytes through the same pipeline: a duplicate
    drop(watch, "batch.csv", same)  # ... through another one: work of its own
    wait_for(lambda: done(watch, ["again.log", "batch.csv"]), 30, "both copies finished")
    events = {e["file"]: e["event"] for e in journal(watch) if e["event"] in ("processed", "duplicate")}
    assert events == {"first.log": "processed", "again.log": "duplicate", "batch.csv": "processed"}
    assert (watch / "output" / "batch.csv").read_text() == same
    assert d.stop() == 0


def test_a_side_output_added_by_a_reload_never_replaces_another_files_output(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace("retry_backoff = 0.1", "retry_backoff = 3"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "a.log.extra", "earlier\n")  # its main output is output/a.log.extra
    wait_for(lambda: done(watch, ["a.log.extra"]), 30, "a.log.extra processed")
    (tmp_path / "flags" / "broken").touch()
    drop(watch, "a.log", "FAILIF broken\n")
    wait_for(lambda: any(e["event"] == "retried" and e["file"] == "a.log" for e in journal(watch)), 30,
             "a.log's first attempt failed; it waits claimed for its retry")
    # The reload adds a side output "extra": a.log's would be output/a.log.extra.
    text = config.read_text()
    config.write_text(text.replace("[pipeline.nodes.start]", '[pipeline.nodes.start]\nprocessor = "write"\n'
                                   'output = "extra"\nnext = "b"\n[pipeline.nodes.b]', 1))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.log(), 10, "the reload in the log")
    (tmp_path / "flags" / "broken").unlink()
    wait_for(lambda: "a.log" not in folder(watch, "underprocess") and len(folder(watch, "processed")) == 2, 30,
             "a.log processed after the reload")
    assert (watch / "output" / "a.log.extra").read_text() == "EARLIER\n"  # never replaced
    renamed = [e for e in journal(watch) if e["event"] == "renamed"]
    assert [(e["file"], e["previous"], e["final"]) for e in renamed] == [("a.log", "a.log", "a-1.log")]
    assert (watch / "output" / "a-1.log.extra").read_text() == "FAILIF broken\n"
    assert (watch / "output" / "a-1.log").read_text() == "FAILIF BROKEN\n"
    assert d.stop() == 0
