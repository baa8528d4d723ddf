"""``check`` and ``run`` through the real CLI, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUPERVISOR = ROOT / "supervisor.py"


def cli(*args: str | Path, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SUPERVISOR), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_check_prints_the_routing_graph_of_the_shipped_config() -> None:
    proc = cli("-c", ROOT / "config.toml", "check")
    assert proc.returncode == 0, proc.stderr
    assert "start -> replace -> levels" in proc.stdout
    assert "triage -> regex_route -> errors, end" in proc.stdout
    assert "errors -> write -> end" in proc.stdout


def test_check_reports_a_bad_key_with_exit_status_2_and_no_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [pipeline.nodes.start]
        processor = "regex_route"
        routes = { error = "ERROR" }
    """)
    proc = cli("-c", config, "check")
    assert proc.returncode == 2
    assert "pipeline.nodes.start.routes.error" in proc.stderr and "no [pipeline.nodes.error]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_writes_outputs_where_the_daemon_would(tmp_path: Path) -> None:
    config = write_config(tmp_path, (ROOT / "config.toml").read_text())
    log = tmp_path / "app.log"
    log.write_text("INFO up\nERROR disk full password=hunter2\nWARN slow\n")
    proc = cli("-c", config, "run", log)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "watch_dir" / "output"
    assert (out / "app.log").read_text() == (
        "INFO up\nERROR disk full password=***\nWARN slow\ncount: error=1 warn=1 other=1 total=3\n")
    assert (out / "app.log.errors").read_text() == "ERROR disk full password=***\n"
    assert sorted(p.name for p in out.iterdir()) == ["app.log", "app.log.errors"]  # no temp files left
    # A second run never overwrites the first one's outputs: it takes a free name.
    proc = cli("-c", config, "run", log)
    assert proc.returncode == 0, proc.stderr
    assert (out / "app-1.log").exists() and (out / "app-1.log.errors").exists()
    assert (out / "app.log").read_text().startswith("INFO up")


def test_run_with_a_user_processor_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "processors.py").write_text(textwrap.dedent("""
        class Numbered:
            emits = ["end"]
            def __init__(self, width=3):
                self.width, self.n = width, 0
            def process(self, lines):
                for line in lines:
                    self.n += 1
                    yield "end", f"{self.n:0{self.width}d} {line}"
    """))
    config = write_config(tmp_path, """
        [watch]
        dir = "queue"
        [pipeline.nodes.start]
        processor = "processors:Numbered"
        width = 2
    """)
    data = tmp_path / "data.txt"
    data.write_text("a\nb\n")
    proc = cli("-c", config, "run", data, "--output-dir", tmp_path / "outs", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "outs" / "data.txt").read_text() == "01 a\n02 b\n"


def test_run_reports_a_failing_file_and_commits_nothing_for_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[pipeline.nodes.start]\nprocessor = "upper"\n')
    good, bad = tmp_path / "good.txt", tmp_path / "bad.bin"
    good.write_text("ok\n")
    bad.write_bytes(b"text\n\x00\x01\x02\n")
    proc = cli("-c", config, "run", bad, good, tmp_path / "missing.txt")
    assert proc.returncode == 1
    assert "bad.bin: failed: bad.bin line 2: binary file" in proc.stderr
    assert "missing.txt: cannot open" in proc.stderr
    out = tmp_path / "watch_dir" / "output"
    assert sorted(p.name for p in out.iterdir()) == ["good.txt"]
    assert (out / "good.txt").read_text() == "OK\n"


def peak_rss_mb(config: Path, path: Path) -> float:
    """Peak RSS of one ``run`` of ``path`` (os.wait4 reports this child alone)."""
    child = subprocess.Popen([sys.executable, str(SUPERVISOR), "-c", str(config), "run", str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, child.stderr.read()
    child.stdout.close()
    child.stderr.close()
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_a_200_mb_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
        [pipeline.nodes.start]
        processor = "regex_route"
        routes = { errors = "ERROR" }
        [pipeline.nodes.errors]
        processor = "write"
        output = "errors"
    """)
    big = tmp_path / "big.log"
    block = "".join(f"{'ERROR' if i % 10 == 0 else 'INFO'} line {i:06d} " + "x" * 180 + "\n" for i in range(5000))
    with open(big, "w") as f:
        while f.tell() < 200 * 1024 * 1024:
            f.write(block)
    size = big.stat().st_size
    small = tmp_path / "small.log"
    small.write_text("INFO one line\n")
    baseline_mb, peak_mb = peak_rss_mb(config, small), peak_rss_mb(config, big)
    # The same process on one line and on 200 MB: the difference is what the file costs.
    assert peak_mb - baseline_mb < 32, f"peak RSS {peak_mb:.0f} MB for {size >> 20} MB, {baseline_mb:.0f} MB for 1 line"
    out = tmp_path / "watch_dir" / "output"
    assert (out / "big.log").stat().st_size < size  # the ERROR lines went to the side output only
    assert (out / "big.log.errors").stat().st_size > 0
