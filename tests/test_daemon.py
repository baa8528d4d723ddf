"""The supervisor daemon with real processes, real files and real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemon import (
    BASE_CONFIG,
    alive,
    behave_config,
    drop,
    event_time,
    folder,
    journal,
    pace,
    start,
    wait_for,
    write_config,
)


def outcome(watch: Path, name: str) -> str:
    for where in ("processed", "failed", "unprocessed", "underprocess"):
        if name in folder(watch, where):
            return where
    return "missing"


def all_done(watch: Path, names: list[str]) -> bool:
    return all(outcome(watch, n) in ("processed", "failed") for n in names)


# -- 1. lifecycle ------------------------------------------------------------------------------


def test_lifecycle_files_at_start_and_dropped_while_running(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path)
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    for i in range(5):
        drop(watch, f"early-{i}.log", f"early {i}\nline two\n")
    (watch / "unprocessed" / ".hidden").write_text("hidden\n")
    (watch / "unprocessed" / "partial.tmp").write_text("not yet\n")
    d = start(daemons, config)
    for i in range(5):
        drop(watch, f"late-{i}.log", f"late {i}\n")
    names = [f"early-{i}.log" for i in range(5)] + [f"late-{i}.log" for i in range(5)]
    wait_for(lambda: folder(watch, "processed") == sorted(names), 30, "all ten files in processed/")
    assert (watch / "output" / "early-3.log").read_text() == "EARLY 3\nLINE TWO\n"
    assert (watch / "output" / "late-4.log").read_text() == "LATE 4\n"
    # Hidden and excluded names are never touched.
    assert sorted(os.listdir(watch / "unprocessed")) == [".hidden", "partial.tmp"]
    assert folder(watch, "underprocess") == [] and folder(watch, "failed") == []
    events = journal(watch)
    assert sorted(e["file"] for e in events if e["event"] == "processed") == sorted(names)
    assert d.stop() == 0


def test_once_processes_what_is_ready_and_exits(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path)
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    for i in range(20):
        drop(watch, f"f{i:02d}.txt", f"line {i}\n")
    d = start(daemons, config, "--once")
    assert d.wait(60) == 0, d.log()
    assert len(folder(watch, "processed")) == 20 and folder(watch, "unprocessed") == []


def test_a_name_already_processed_gets_a_unique_suffix(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    drop(watch, "same.log", "first\n")
    wait_for(lambda: folder(watch, "processed") == ["same.log"], 20, "the first same.log processed")
    drop(watch, "same.log", "second\n")
    wait_for(lambda: folder(watch, "processed") == ["same-1.log", "same.log"], 20, "the second one as same-1.log")
    assert (watch / "output" / "same.log").read_text() == "FIRST\n"
    assert (watch / "output" / "same-1.log").read_text() == "SECOND\n"
    assert (watch / "processed" / "same-1.log").read_text() == "second\n"


# -- 2. worker crashes ---------------------------------------------------------------------------


def test_a_crashing_file_costs_attempts_then_fails_while_others_flow(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    drop(watch, "exit.log", "fine\nEXIT\n")
    drop(watch, "segv.log", "SEGV\n")
    drop(watch, "once.log", "ONCE once-flag\nfine\n")
    for i in range(10):
        drop(watch, f"ok-{i}.log", f"ok {i}\n")
    names = ["exit.log", "segv.log", "once.log"] + [f"ok-{i}.log" for i in range(10)]
    wait_for(lambda: all_done(watch, names), 60, "every file processed or failed")
    assert folder(watch, "failed") == ["exit.log", "segv.log"]
    assert "exited with status 3" in (watch / "failed" / "exit.log.reason").read_text()
    assert "SIGSEGV" in (watch / "failed" / "segv.log.reason").read_text()
    assert outcome(watch, "once.log") == "processed"
    assert (watch / "output" / "once.log").read_text() == "ONCE ONCE-FLAG\nFINE\n"
    assert all(outcome(watch, f"ok-{i}.log") == "processed" for i in range(10))
    events = journal(watch)
    retried = [e for e in events if e["event"] == "retried"]
    assert {e["file"] for e in retried} == {"exit.log", "segv.log", "once.log"}
    assert not (watch / "output" / "exit.log").exists()  # no partial output of a failed file
    assert not [n for n in os.listdir(watch / "output") if n.endswith(".tmp")]


def test_sigkill_of_a_busy_worker_retries_its_file(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "busy.log", "PID busy.pid\nSLEEP 3\nafter\n")
    pid_file = tmp_path / "flags" / "busy.pid"
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20, "the worker to start busy.log"))
    pid_file.unlink()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: outcome(watch, "busy.log") == "processed", 30, "busy.log processed on its second attempt")
    assert (watch / "output" / "busy.log").read_text() == "PID BUSY.PID\nSLEEP 3\nAFTER\n"
    retried = [e for e in journal(watch) if e["event"] == "retried"]
    assert len(retried) == 1 and "SIGKILL" in retried[0]["reason"] and retried[0]["worker"] == pid
    assert [w.pid for w in d.workers()] and pid not in [w.pid for w in d.workers()]


# -- 3. supervisor crash --------------------------------------------------------------------------


def test_sigkill_of_the_supervisor_then_restart_processes_everything_once(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace("count = 1", "count = 2\nbatch_files = 4"))
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    names = [f"f{i:03d}.log" for i in range(120)]
    for name in names:
        drop(watch, name, f"{name}\nSLEEP 0.02\nend of {name}\n")
    d = start(daemons, config)
    wait_for(lambda: len(folder(watch, "processed")) >= 20, 60, "some files processed")
    children = [c.pid for c in d.children()]
    assert len(children) >= 3  # manager + 2 workers
    d.kill()
    wait_for(lambda: not alive(children), 10, "workers and manager to die with their supervisor")
    stranded = set(folder(watch, "underprocess"))
    assert stranded  # it died with files in flight
    d2 = start(daemons, config, "--once")
    assert d2.wait(120) == 0, d2.log()
    assert folder(watch, "processed") == names
    assert folder(watch, "underprocess") == [] and folder(watch, "unprocessed") == []
    for name in names:
        assert (watch / "output" / name).read_text() == f"{name.upper()}\nSLEEP 0.02\nEND OF {name.upper()}\n"
    # At no cost: the supervisor's death charged nobody an attempt.
    events = journal(watch)
    assert not [e for e in events if e["event"] in ("retried", "failed")]
    assert {e["attempt"] for e in events if e["event"] == "claimed"} == {1}
    recovered_at = {e["file"]: i for i, e in enumerate(events) if e["event"] == "recovered"}
    assert set(recovered_at) == stranded  # the second supervisor took back exactly what was in flight
    for name in stranded:
        again = [e for e in events[recovered_at[name]:] if e["event"] == "claimed" and e["file"] == name]
        assert len(again) == 1 and again[0]["attempt"] == 1, (name, again)
        assert again[0]["supervisor"] == f"{os.uname().nodename}:{d2.pid}"
    assert sorted(os.listdir(watch / "output")) == names  # nothing twice, no temp files


# -- 5. partial writes ---------------------------------------------------------------------------


def _slow_writer(path: Path, lines: int, pause_s: float, reopen: bool) -> None:
    if reopen:
        for i in range(lines):
            with open(path, "a") as f:
                f.write(f"line {i}\n")
            pace(pause_s)
        return
    with open(path, "w") as f:
        for i in range(lines):
            f.write(f"line {i}\n")
            f.flush()
            pace(pause_s)


@pytest.mark.parametrize("reopen", [False, True], ids=["held-open", "reopened-per-line"])
def test_a_slow_writer_is_not_claimed_before_it_is_done(tmp_path: Path, daemons, reopen: bool) -> None:
    # A writer that reopens the file for every line is only protected by settle, which
    # must exceed its pauses: 1 s against 0.12 s leaves room for a loaded machine.
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("settle = 0.3", "settle = 1.0"))
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    target = watch / "unprocessed" / "slow.log"
    writer = threading.Thread(target=_slow_writer, args=(target, 25, 0.12, reopen))
    writer.start()
    seen_early = []
    while writer.is_alive():
        if outcome(watch, "slow.log") in ("underprocess", "processed", "failed"):
            seen_early.append(outcome(watch, "slow.log"))
        writer.join(timeout=0.05)
    assert not seen_early, "claimed while the writer was still writing"
    wait_for(lambda: outcome(watch, "slow.log") == "processed", 20, "slow.log processed after the writer finished")
    assert (watch / "output" / "slow.log").read_text() == "".join(f"LINE {i}\n" for i in range(25))


# Writes argv[2] lines into argv[1], in place, pausing argv[3] s after each, one open file;
# creates argv[4] once it has closed it.
PAUSING_WRITER = """
import pathlib, sys, threading
path, lines, pause_s, closed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
with open(path, "w") as f:
    for i in range(lines):
        f.write(f"line {i}\\n")
        f.flush()
        threading.Event().wait(pause_s)
pathlib.Path(closed).touch()
"""


def test_a_writer_that_holds_the_file_open_is_waited_for_past_settle(tmp_path: Path, daemons) -> None:
    # Its pauses (1 s) are longer than settle (0.3 s): only the /proc check can hold the
    # file back; without it the file would be claimed half-written in the first pause.
    config = write_config(tmp_path)
    assert "settle = 0.3" in config.read_text()
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    target, closed = watch / "unprocessed" / "held.log", tmp_path / "writer-closed"
    writer = subprocess.Popen([sys.executable, "-c", PAUSING_WRITER, str(target), "4", "1.0", str(closed)])
    seen_early = []

    def writer_closed() -> bool:
        where = outcome(watch, "held.log")  # first where it is, then whether it was still open
        if not closed.exists() and where in ("underprocess", "processed", "failed"):
            seen_early.append(where)
        return closed.exists()

    wait_for(writer_closed, 30, "the writer to close the file")
    assert writer.wait(timeout=10) == 0
    assert not seen_early, "claimed while the writer still held it open"
    wait_for(lambda: outcome(watch, "held.log") == "processed", 20, "held.log processed once closed")
    assert (watch / "output" / "held.log").read_text() == "".join(f"LINE {i}\n" for i in range(4))
    claims = [e for e in journal(watch) if e["event"] == "claimed" and e["file"] == "held.log"]
    assert len(claims) == 1 and claims[0]["size"] == len("".join(f"line {i}\n" for i in range(4)))


def test_the_journal_counts_every_skipped_line_not_only_those_reported(tmp_path: Path, daemons) -> None:
    """on_error = "skip_line": a file with 150 bad lines is processed; its journal entry
    counts 150 skipped, though only the first 100 are reported with their line."""
    (tmp_path / "skipper.py").write_text(textwrap.dedent("""
        def fail_on_x(lines):
            for line in lines:
                if line.startswith("x"):
                    raise ValueError("a line starting with x")
                yield "end", line
    """))
    config = write_config(tmp_path, BASE_CONFIG.replace('[pipeline.nodes.start]\nprocessor = "upper"\n', ""),
                          '[pipeline]\non_error = "skip_line"\n'
                          '[pipeline.nodes.start]\nprocessor = "skipper:fail_on_x"\n')
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    drop(watch, "bad.log", "ok\n" + "x\n" * 150 + "ok\n")
    entry = wait_for(lambda: next((e for e in journal(watch) if e["event"] == "processed"), None), 20,
                     "bad.log processed")
    assert entry["skipped"] == 150 and entry["lines_in"] == 152 and entry["lines_out"] == 2, entry
    assert (watch / "output" / "bad.log").read_text() == "ok\nok\n"


def test_a_rename_in_is_picked_up_by_its_event_not_by_the_next_pass(tmp_path: Path, daemons) -> None:
    """With passes 30 s apart, a file renamed in is claimed within seconds: its file event
    wakes the loop. (How fast is a benchmark's question: BENCHMARKS.md, pickup latency,
    median 5 ms; a timed bound here would measure the machine's load.)"""
    config = write_config(tmp_path)
    config.write_text(re.sub(r"(?m)^poll_interval = .*$", "poll_interval = 30", config.read_text(), count=1))
    assert "poll_interval = 30" in config.read_text()
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    latencies = []
    for i in range(5):
        tmp = watch / "unprocessed" / f"x{i}.tmp"
        tmp.write_text("hello\n")
        renamed_at = time.time()
        os.rename(tmp, watch / "unprocessed" / f"x{i}")
        wait_for(lambda i=i: outcome(watch, f"x{i}") == "processed", 10, f"x{i} processed")
        claimed = next(e for e in journal(watch) if e["event"] == "claimed" and e["file"] == f"x{i}")
        latencies.append(event_time(claimed) - renamed_at)
    assert max(latencies) < 5, latencies  # the first pass after start is 30 s away


# -- 6. limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "content", "reason"), [
    ("file_timeout = 1", "SLEEP 30\n", "file_timeout = 1s"),
    ("max_memory_mb = 150", "ALLOC 400\n", "max_memory_mb = 150"),
], ids=["file_timeout", "max_memory_mb"])
def test_a_limit_kills_the_worker_and_costs_an_attempt(tmp_path: Path, daemons, setting: str, content: str,
                                                        reason: str) -> None:
    config = behave_config(tmp_path, "")
    config.write_text(config.read_text().replace("max_attempts = 2", f"max_attempts = 1\n{setting}"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    before = wait_for(lambda: [w.pid for w in d.workers()], 20, "a worker")
    drop(watch, "limit.log", content)
    drop(watch, "fine.log", "fine\n")
    wait_for(lambda: all_done(watch, ["limit.log", "fine.log"]), 30, "both files done")
    assert outcome(watch, "limit.log") == "failed" and outcome(watch, "fine.log") == "processed"
    assert reason in (watch / "failed" / "limit.log.reason").read_text()
    after = wait_for(lambda: [w.pid for w in d.workers()], 20, "a replacement worker")
    assert not set(before) & set(after)


# -- 7. graceful stop --------------------------------------------------------------------------


def test_sigterm_lets_in_flight_files_finish(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "inflight.log", "PID inflight.pid\nSLEEP 1\ndone\n")
    wait_for(lambda: (tmp_path / "flags" / "inflight.pid").exists(), 20, "inflight.log to start")
    children = [c.pid for c in d.children()]
    assert d.stop() == 0
    assert outcome(watch, "inflight.log") == "processed"
    assert folder(watch, "underprocess") == []
    wait_for(lambda: not alive(children), 10, "no child to outlive the supervisor")
    assert "Traceback" not in d.log()


def test_sigterm_past_the_grace_period_returns_files_to_unprocessed(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace("shutdown_grace = 10", "shutdown_grace = 0.5"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "long.log", "PID long.pid\nSLEEP 30\n")
    wait_for(lambda: (tmp_path / "flags" / "long.pid").exists(), 20, "long.log to start")
    assert d.stop() == 0
    assert outcome(watch, "long.log") == "unprocessed"
    assert folder(watch, "underprocess") == []
    assert [e["event"] for e in journal(watch) if e["file"] == "long.log"][-1] == "requeued"


# -- 8. bad input ------------------------------------------------------------------------------


def test_bad_input_is_reported_by_name_and_the_daemon_keeps_running(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("TOP SECRET\n")
    unp = watch / "unprocessed"
    drop(watch, "empty.log", "")
    drop(watch, "binary.bin", b"\x7fELF\x00\x01\x02\n")
    drop(watch, "latin1.log", b"caf\xe9\n")
    drop(watch, "with space.log", "a b\n")
    drop(watch, "ünïcødé.log", "ü\n")
    drop(watch, "new\nline.log", "nl\n")
    os.symlink(secret, unp / "link.log")
    (unp / "adir").mkdir()
    names = ["empty.log", "binary.bin", "latin1.log", "with space.log", "ünïcødé.log", "new\nline.log",
             "link.log", "adir"]
    wait_for(lambda: all_done(watch, names), 30, "every bad input handled")
    assert outcome(watch, "empty.log") == "processed" and (watch / "output" / "empty.log").read_text() == ""
    for name in ("with space.log", "ünïcødé.log", "new\nline.log"):
        assert outcome(watch, name) == "processed", name
    assert (watch / "output" / "ünïcødé.log").read_text() == "Ü\n"
    reasons = {n: (watch / "failed" / f"{n}.reason").read_text() for n in folder(watch, "failed")}
    assert "binary file: NUL byte" in reasons["binary.bin"] and "line 1" in reasons["binary.bin"]
    assert "cannot decode byte 0xe9" in reasons["latin1.log"]
    assert "is a symlink" in reasons["link.log"] and "is a directory" in reasons["adir"]
    assert os.path.islink(watch / "failed" / "link.log")  # moved as a link, never followed
    assert not any("SECRET" in p.read_text() for p in (watch / "output").iterdir() if p.is_file())
    assert d.alive()
    drop(watch, "after.log", "still here\n")
    wait_for(lambda: outcome(watch, "after.log") == "processed", 20, "a normal file after the bad ones")


def test_an_unreadable_file_fails_with_permission_denied_and_the_daemon_keeps_running(tmp_path: Path,
                                                                                     daemons) -> None:
    # Root reads a chmod 000 file anyway, and CI runs as root: there the supervisor runs
    # without the capabilities that override file permissions (see drop_file_override).
    config = write_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config, unprivileged=True)
    assert d.alive()
    status = Path(f"/proc/{d.pid}/status").read_text()
    effective = int(re.search(r"CapEff:\s*([0-9a-f]+)", status).group(1), 16)
    assert not effective & 0b110, status  # neither CAP_DAC_OVERRIDE nor CAP_DAC_READ_SEARCH
    tmp = watch / ".incoming-unreadable"
    tmp.write_text("locked\n")
    os.chmod(tmp, 0)
    os.rename(tmp, watch / "unprocessed" / "unreadable.log")
    wait_for(lambda: outcome(watch, "unreadable.log") == "failed", 20, "unreadable.log in failed/")
    reason = (watch / "failed" / "unreadable.log.reason").read_text()
    assert "Permission denied" in reason and "unreadable.log" in reason, reason
    assert not (watch / "output" / "unreadable.log").exists()
    # The journal line is written after the step that moved the file: wait for it.
    failed = wait_for(lambda: [e for e in journal(watch) if e["file"] == "unreadable.log" and e["event"] == "failed"],
                      10, "the journal's failed line for unreadable.log")
    assert len(failed) == 1 and "Permission denied" in failed[0]["reason"]
    assert d.alive()
    drop(watch, "after.log", "still here\n")
    wait_for(lambda: outcome(watch, "after.log") == "processed", 20, "a normal file after the unreadable one")
    assert d.stop() == 0


# -- attempts, retries, crash loops, start-up errors ------------------------------------------


def test_attempt_counts_survive_a_supervisor_restart(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace("max_attempts = 2", "max_attempts = 3").replace(
        "retry_backoff = 0.1", "retry_backoff = 1.5"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "poison.log", "EXIT\n")
    wait_for(lambda: [e for e in journal(watch) if e["event"] == "retried"], 20, "the first failed attempt")
    assert d.stop() == 0  # during its backoff
    # After a restart the file needs two more deaths (1.5 s, then 3 s apart), not three.
    start(daemons, config)
    wait_for(lambda: outcome(watch, "poison.log") == "failed", 30, "poison.log in failed/")
    # The journal line follows the move: wait for it.
    wait_for(lambda: [e for e in journal(watch) if e["event"] == "failed"], 10, "the journal's failed line")
    attempts = [e["attempt"] for e in journal(watch) if e["event"] in ("retried", "failed")]
    assert attempts == [1, 2, 3]
    assert "attempt 3 of 3" in (watch / "failed" / "poison.log.reason").read_text()


def attempts_of(watch: Path, name: str) -> list[tuple[str, int | None]]:
    """(event, attempt) of every failed attempt and outcome of ``name``, in order."""
    return [(e["event"], e.get("attempt")) for e in journal(watch)
            if e["file"] == name and e["event"] in ("retried", "failed", "processed")]


def test_a_failed_file_moved_back_is_retried_with_fresh_attempts(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    assert "max_attempts = 2" in config.read_text()
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    broken = tmp_path / "flags" / "broken"
    broken.touch()
    # Fails at line 1 while the flag is set; once it is cleared, the ONCE line kills the
    # first attempt after it, so the file needs two attempts after the move back.
    content = "FAILIF broken\nONCE second\nfine\n"
    drop(watch, "bad.log", content)
    wait_for(lambda: outcome(watch, "bad.log") == "failed", 20, "bad.log in failed/")
    # The journal line follows the move within the same loop step.
    wait_for(lambda: attempts_of(watch, "bad.log") == [("retried", 1), ("failed", 2)], 10,
             "the journal to say: retried at attempt 1, failed at attempt 2")
    before = (watch / "failed" / "bad.log").stat()
    # The operator fixes the cause (not the file) and moves the same bytes back.
    broken.unlink()
    os.rename(watch / "failed" / "bad.log", watch / "unprocessed" / "bad.log")
    wait_for(lambda: outcome(watch, "bad.log") == "processed", 20, "bad.log processed after the retry")
    after = (watch / "processed" / "bad.log").stat()  # the same file all along: the same identity
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    # Fresh attempts: it failed once more (attempt 1 again) and still had one left.
    want = [("retried", 1), ("failed", 2), ("retried", 1), ("processed", None)]
    wait_for(lambda: attempts_of(watch, "bad.log") == want, 10, f"the journal to say {want}")
    events = journal(watch)
    moved_back = max(i for i, e in enumerate(events) if e["file"] == "bad.log" and e["event"] == "failed")
    claims = [e for e in events[moved_back:] if e["file"] == "bad.log" and e["event"] == "claimed"]
    assert claims and claims[0]["attempt"] == 1
    assert (watch / "processed" / "bad.log").read_text() == content
    assert (watch / "output" / "bad.log").read_text() == content.upper()


def test_a_worker_that_dies_right_after_start_is_backed_off(tmp_path: Path, daemons) -> None:
    # The module imports fine in the supervisor (config check) but kills every worker.
    (tmp_path / "broken.py").write_text(textwrap.dedent("""
        import multiprocessing, os
        if multiprocessing.current_process().name.startswith("foldermill-worker"):
            os._exit(7)
        def process(lines):
            for line in lines:
                yield "end", line
    """))
    config = write_config(tmp_path, BASE_CONFIG.replace('processor = "upper"', 'processor = "broken:process"'))
    d = start(daemons, config)
    wait_for(lambda: "crash-looping" in d.log(), 30, "the crash-loop report")
    deaths = d.log().count("exited with status 7")
    assert 3 <= deaths <= 4, d.log()
    assert "next start in" in d.log()
    assert d.alive()


def test_journal_rotates_by_size_and_keeps_every_transition(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, BASE_CONFIG.replace("settle = 0.3", "settle = 0.3\njournal_max_mb = 0.002\n"
                                                                         "journal_keep = 50"))
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    names = [f"r{i:03d}.log" for i in range(60)]
    for name in names:
        drop(watch, name, "x\n")
    d = start(daemons, config, "--once")
    assert d.wait(60) == 0
    rotated = sorted(p.name for p in watch.glob("input.log.*"))
    assert len(rotated) >= 2, rotated  # one write per step, so a rotation per step at most
    events = journal(watch)
    assert sorted(e["file"] for e in events if e["event"] == "claimed") == names
    assert sorted(e["file"] for e in events if e["event"] == "processed") == names


def test_ready_marker_decides_and_is_consumed_with_the_file(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, BASE_CONFIG.replace("settle = 0.3", 'settle = 0.3\nready_marker = "{name}.ready"'))
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    drop(watch, "batch.csv", "a,b\n")
    drop(watch, "other.csv", "c\n")
    drop(watch, "other.csv.ready", "")
    wait_for(lambda: outcome(watch, "other.csv") == "processed", 20, "other.csv (it has its marker)")
    assert outcome(watch, "batch.csv") == "unprocessed"
    drop(watch, "batch.csv.ready", "")
    wait_for(lambda: outcome(watch, "batch.csv") == "processed", 20, "batch.csv once its marker came")
    assert sorted(os.listdir(watch / "unprocessed")) == [".gitkeep"] or not os.listdir(watch / "unprocessed")


def test_start_up_errors_exit_3_with_a_clear_message(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, BASE_CONFIG.replace('dir = "watch_dir"', 'dir = "/proc/foldermill-nope"'))
    d = start(daemons, config, "--once")
    assert d.wait(30) == 3
    assert "cannot create the queue folders in /proc/foldermill-nope" in d.log()
    # processed/ on another filesystem: rename would not be atomic.
    other = Path("/dev/shm") / f"fm-test-{os.getpid()}"
    other.mkdir(exist_ok=True)
    try:
        config = write_config(tmp_path)
        watch = tmp_path / "watch_dir"
        (watch / "unprocessed").mkdir(parents=True)
        os.symlink(other, watch / "processed")
        d = start(daemons, config, "--once")
        assert d.wait(30) == 3
        assert "different filesystems" in d.log()
    finally:
        os.rmdir(other)


def test_sigkill_of_the_manager_is_survived(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    # One file per job, each slow enough that some are out on the workers at the kill.
    config.write_text(config.read_text().replace("count = 1", "count = 2\nbatch_files = 1"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    names = [f"m{i:02d}.log" for i in range(40)]
    for name in names[:20]:
        drop(watch, name, f"{name}\nSLEEP 0.2\n")
    manager = wait_for(lambda: [c for c in d.children() if c.name() == "fm-manager"], 10, "the manager process")
    wait_for(lambda: len(folder(watch, "processed")) >= 3, 30, "some files processed")
    manager[0].kill()
    in_flight = folder(watch, "underprocess")
    assert in_flight  # the manager died with files out on the workers
    wait_for(lambda: "the manager process died" in d.log(), 20, "the supervisor to notice")
    for name in names[20:]:
        drop(watch, name, f"{name}\nSLEEP 0.05\n")
    wait_for(lambda: folder(watch, "processed") == names, 60, "every file processed after the manager restart")
    assert folder(watch, "failed") == [] and d.alive()
    # At no cost: the files in flight went out again without a charged attempt.
    events = journal(watch)
    assert not [e for e in events if e["event"] in ("retried", "failed")]
    claims = [e for e in events if e["event"] == "claimed"]
    assert {e["attempt"] for e in claims} == {1}, [e for e in claims if e["attempt"] != 1]
    assert sorted({e["file"] for e in claims}) == names
    assert sorted(e["file"] for e in events if e["event"] == "processed") == names
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    wait_for(lambda: _status(url + "health") == 200, 20, "the dashboard to answer again")
    assert d.stop() == 0


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except OSError:
        return 0


def test_trace_json_logs_and_worker_count_options(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config, "--trace", "--log-format", "json", "--workers", "2")
    wait_for(lambda: len(d.workers()) == 2, 20, "two workers (--workers 2 overrides count = 1)")
    drop(watch, "t.log", "".join(f"line {i}\n" for i in range(150)))
    wait_for(lambda: outcome(watch, "t.log") == "processed", 20, "t.log processed")
    assert d.stop() == 0
    entries = [json.loads(line) for line in d.log().splitlines() if line.strip()]
    messages = [e["msg"] for e in entries]
    assert all({"ts", "level", "msg"} <= set(e) for e in entries)
    assert any(m.startswith("claimed 't.log'") for m in messages)  # every transition, with --trace
    assert any(m.startswith("processed 't.log'") for m in messages)
    assert any(m.startswith("route 't.log' line 1: start -> end") for m in messages)  # sampled routes


def test_sighup_reloads_a_valid_pipeline_and_refuses_an_invalid_one(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    before = [f"a{i:02d}.log" for i in range(20)]
    for name in before:
        drop(watch, name, "Mixed Case\n")
    wait_for(lambda: folder(watch, "processed") == before, 30, "the first files, upper-cased")
    # An invalid file: the running pipeline stays.
    config.write_text(config.read_text().replace('processor = "upper"', 'processor = "uper"'))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.log(), 10, "the refusal in the log")
    assert "pipeline.nodes.start.processor" in d.log()
    drop(watch, "b00.log", "Mixed Case\n")
    wait_for(lambda: outcome(watch, "b00.log") == "processed", 20, "a file after the refused reload")
    assert (watch / "output" / "b00.log").read_text() == "MIXED CASE\n"
    # A valid one, while files flow: files claimed after the reload get it.
    config.write_text(config.read_text().replace('processor = "uper"', 'processor = "lower"'))
    during = [f"c{i:02d}.log" for i in range(20)]
    for name in during[:10]:
        drop(watch, name, "Mixed Case\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.log(), 10, "the reload in the log")
    for name in during[10:]:
        drop(watch, name, "Mixed Case\n")
    wait_for(lambda: folder(watch, "processed") == sorted([*before, "b00.log", *during]), 30,
             "every file processed once across the reload")
    outputs = {n: (watch / "output" / n).read_text() for n in during}
    assert set(outputs.values()) <= {"MIXED CASE\n", "mixed case\n"}
    assert all(outputs[n] == "mixed case\n" for n in during[10:])  # claimed after the reload
    assert sorted(os.listdir(watch / "output")) == sorted([*before, "b00.log", *during])  # nothing twice
    assert d.stop() == 0


def test_content_dedupe_survives_a_restart(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, BASE_CONFIG.replace("settle = 0.3", 'settle = 0.3\ndedupe = "content"'))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "first.log", "same content\n")
    wait_for(lambda: outcome(watch, "first.log") == "processed", 20, "first.log processed")
    drop(watch, "second.log", "same content\n")
    drop(watch, "other.log", "different\n")
    wait_for(lambda: all_done(watch, ["second.log", "other.log"]), 20, "the duplicate and the other file")
    assert d.stop() == 0
    start(daemons, config)
    drop(watch, "third.log", "same content\n")
    wait_for(lambda: outcome(watch, "third.log") == "processed", 20, "third.log after a restart")
    events = {e["file"]: e for e in journal(watch) if e["event"] in ("processed", "duplicate")}
    assert events["first.log"]["event"] == "processed" and events["other.log"]["event"] == "processed"
    for dup in ("second.log", "third.log"):
        assert events[dup]["event"] == "duplicate" and events[dup]["of"] == "first.log"
    assert sorted(os.listdir(watch / "output")) == ["first.log", "other.log"]  # no output for duplicates
