"""``check`` and ``run`` through the real CLI, in a subprocess."""

from __future__ import annotations

import json
import os
import re
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
    # How a daemon of this user would see writers (root here: every process in /proc).
    assert "writers, as user root sees them:" in proc.stdout and "inotify open/close events" in proc.stdout


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


@pytest.mark.parametrize("declared", [True, False])
def test_a_processors_own_side_output_never_replaces_another_files_output(tmp_path: Path, declared: bool) -> None:
    """A side output a processor opens itself (ctx.side_output) is reserved with the file's
    final name when declared (side_outputs), so the output/x.log.audit of a file named
    x.log.audit is never replaced by x.log's; an undeclared one fails the file instead."""
    (tmp_path / "processors.py").write_text(textwrap.dedent(f"""
        class Audited:
            emits = ["end"]
            side_outputs = {["audit"] if declared else []!r}
            def start(self, ctx):
                self.audit = ctx.side_output("audit")
            def process(self, lines):
                for line in lines:
                    self.audit.write("seen " + line + "\\n")
                    yield "end", line
    """))
    config = write_config(tmp_path, """
        [watch]
        dir = "queue"
        [pipeline.nodes.start]
        processor = "processors:Audited"
    """)
    outs = tmp_path / "outs"
    outs.mkdir()
    (outs / "x.log.audit").write_text("another file's output\n")  # a file named x.log.audit, processed earlier
    data = tmp_path / "x.log"
    data.write_text("a\n")
    proc = cli("-c", config, "run", data, "--output-dir", outs, cwd=ROOT)
    assert (outs / "x.log.audit").read_text() == "another file's output\n"
    if declared:
        assert proc.returncode == 0, proc.stderr
        assert (outs / "x-1.log").read_text() == "a\n" and (outs / "x-1.log.audit").read_text() == "seen a\n"
    else:
        assert proc.returncode == 1 and "side output 'audit' is not declared" in proc.stdout + proc.stderr
        assert sorted(p.name for p in outs.iterdir()) == ["x.log.audit"]


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


# -- the operator's verbs ------------------------------------------------------------------------


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "foldermill 0.1.0"


def test_status_retry_and_history_against_a_stopped_and_a_running_supervisor(tmp_path: Path, daemons) -> None:
    from tests.daemon import behave_config, drop, folder, journal, start, wait_for

    config = behave_config(tmp_path)
    assert "max_attempts = 2" in config.read_text()
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    broken = tmp_path / "flags" / "broken"
    broken.touch()
    # Fails (costing an attempt) while the flag is set; after it is cleared, the ONCE line
    # kills one more attempt: only a file with fresh attempts survives that.
    drop(watch, "flaky.log", "FAILIF broken\nONCE flaky\nfine\n")
    drop(watch, "ok.log", "fine\n")
    wait_for(lambda: folder(watch, "failed") == ["flaky.log"] and folder(watch, "processed") == ["ok.log"], 20,
             "one failed and one processed file")

    def attempts() -> list[tuple[str, int | None]]:
        return [(e["event"], e.get("attempt")) for e in journal(watch)
                if e["file"] == "flaky.log" and e["event"] in ("retried", "failed", "processed")]

    wait_for(lambda: attempts() == [("retried", 1), ("failed", 2)], 10,  # it exhausted its attempts
             "the journal line that follows the move to failed/")

    def status() -> dict:
        return json.loads(cli("-c", config, "status", "--json").stdout)

    running = wait_for(lambda: (s := status())["folders"].get("failed") == 1 and s, 10,
                       "status to show the failed file (the API's snapshot is up to 0.75 s old)")
    assert running["source"].startswith("running supervisor")
    assert running["workers"] and running["recent_failures"][0]["file"] == "flaky.log"
    assert running["machine_fault"] is None and running["writers"]["proc"] == "all"
    text = cli("-c", config, "status").stdout
    assert "source: running supervisor" in text and "failed 1" in text
    assert "writers are seen by:" in text and "INTAKE PAUSED" not in text
    history = cli("-c", config, "history", "ok.log")
    assert history.returncode == 0 and "claimed" in history.stdout and "processed" in history.stdout
    assert cli("-c", config, "history", "nope.log").returncode == 1
    # retry against the running supervisor, the cause still there: two fresh attempts, both
    # spent (without the reset its third attempt would fail it at once).
    assert cli("-c", config, "retry", "flaky.log").returncode == 0
    wait_for(lambda: [e for e, _ in attempts()].count("failed") == 2, 20,
             "flaky.log retried by the running supervisor and failed again")
    assert attempts() == [("retried", 1), ("failed", 2), ("retried", 1), ("failed", 2)]
    assert "attempt 2 of 2" in (watch / "failed" / "flaky.log.reason").read_text()
    # The journal's order is the order of events: the request, then the running daemon's
    # claim of the file it sent back (the CLI writes it before the move).
    events = [e["event"] for e in journal(watch) if e["file"] == "flaky.log"]
    after = events[events.index("retry-requested"):]
    assert after[:2] == ["retry-requested", "claimed"], events
    assert d.stop() == 0

    stopped = json.loads(cli("-c", config, "status", "--json").stdout)
    assert stopped["source"].startswith("no supervisor is running") and stopped["folders"]["failed"] == 1
    assert stopped["recent_failures"][0]["file"] == "flaky.log"
    assert cli("-c", config, "retry", "../etc").returncode == 1
    assert cli("-c", config, "retry", "missing.log").returncode == 1
    retried = cli("-c", config, "retry", "--all")
    assert retried.returncode == 0 and "flaky.log: back in unprocessed/" in retried.stdout
    assert folder(watch, "failed") == [] and folder(watch, "unprocessed") == ["flaky.log"]
    # retry while stopped, the cause fixed: the next supervisor gives it fresh attempts too,
    # so the ONCE crash costs one and the second one processes it.
    broken.unlink()
    d = start(daemons, config)
    wait_for(lambda: folder(watch, "processed") == ["flaky.log", "ok.log"], 20, "flaky.log processed")
    assert d.stop() == 0
    entries = [json.loads(line) for line in cli("-c", config, "history", "flaky.log", "--json").stdout.splitlines()]
    outcomes = [(e["event"], e.get("attempt")) for e in entries if e["event"] in ("retried", "failed", "processed")]
    assert outcomes == [("retried", 1), ("failed", 2)] * 2 + [("retried", 1), ("processed", None)]
    assert entries[0]["event"] == "claimed" and entries[-1]["event"] == "processed"


def test_the_systemd_unit_stops_with_sigterm_and_waits_for_the_grace_period() -> None:
    unit = (ROOT / "deploy" / "foldermill.service").read_text()
    assert "ExecStart=" in unit and "supervisor.py -c" in unit
    assert "KillSignal=SIGTERM" in unit and "Restart=on-failure" in unit
    timeout = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))
    assert timeout > 30  # [workers] shutdown_grace defaults to 30 s


def _on_a_terminal(args: list[str], timeout_s: float = 60) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; return (status, what it drew)."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(SUPERVISOR), *args], stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace")


def test_run_shows_a_progress_bar_on_a_terminal_and_lines_otherwise(tmp_path: Path) -> None:
    config = write_config(tmp_path, (ROOT / "config.toml").read_text())
    big = tmp_path / "big.log"
    big.write_text("".join(f"INFO request {i} took {i % 97}ms user=u{i % 13}\n" for i in range(300_000)))
    status, drawn = _on_a_terminal(["-c", str(config), "run", str(big)])
    assert status == 0
    assert "\x1b[F" in drawn  # redrawn in place
    assert "big.log" in drawn and "%" in drawn and "ETA" in drawn
    assert "1/1 files" in drawn and "[########################] 100.0%" in drawn
    proc = cli("-c", config, "run", big, "--output-dir", tmp_path / "again")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress: ")]
    assert lines and lines[-1].startswith("progress: 1/1 files") and "\x1b" not in proc.stderr


def test_once_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    from tests.daemon import BASE_CONFIG, drop, folder
    from tests.daemon import write_config as write_daemon_config

    config = write_daemon_config(tmp_path, BASE_CONFIG)
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    for i in range(30):
        drop(watch, f"f{i:02d}.log", "x\n" * 2000)
    status, drawn = _on_a_terminal(["-c", str(config), "--once"])
    assert status == 0 and len(folder(watch, "processed")) == 30
    assert "30/30 files" in drawn and "100.0%" in drawn
