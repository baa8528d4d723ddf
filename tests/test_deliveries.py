"""What real producers do, through the real daemon: the same name twice, any name the
filesystem allows, writers that hard-link, clocks that step, files removed by hand,
and failures of the whole system (issue 9)."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from tests.components import require, require_root
from tests.daemon import (
    BASE_CONFIG,
    ROOT,
    Daemon,
    alive,
    dashboard_url,
    drop,
    folder,
    http_json,
    journal,
    metric_value,
    pace,
    start,
    wait_for,
    write_config,
)
from workers.names import NAME_MAX, name_bytes, output_name, reason_name

CONTROL = '''
import pathlib, threading

class Control:
    """Upper-cases lines. HOLD <flag>: wait while the flag file exists (and say so with
    <flag>.held); FAILONCE <flag>: raise the first time; FAIL: always raise."""
    emits = ["end"]

    def __init__(self, flags=""):
        self.flags = pathlib.Path(flags)

    def process(self, lines):
        for line in lines:
            word, _, arg = line.partition(" ")
            if word == "HOLD":
                (self.flags / (arg + ".held")).touch()
                while (self.flags / arg).exists():
                    threading.Event().wait(0.02)
            elif word == "FAILONCE" and not (self.flags / arg).exists():
                (self.flags / arg).touch()
                raise RuntimeError("failing once, on purpose")
            elif word == "FAIL":
                raise RuntimeError("failing, on purpose")
            yield "end", line.upper()
'''


def control_config(tmp_path: Path, watch: str = "", workers: str = "") -> Path:
    """Every line goes to the side output <final>.errors and on through Control."""
    (tmp_path / "control.py").write_text(CONTROL)
    flags = tmp_path / "flags"
    flags.mkdir(exist_ok=True)
    text = BASE_CONFIG.replace('[pipeline.nodes.start]\nprocessor = "upper"\n', "")
    text = text.replace("settle = 0.3\n", "settle = 0.3\n" + textwrap.dedent(watch))
    text = text.replace("shutdown_grace = 10\n", "shutdown_grace = 10\n" + textwrap.dedent(workers))
    return write_config(tmp_path, text + textwrap.dedent(f"""
        [pipeline.nodes.start]
        processor = "write"
        output = "errors"
        next = "ctl"

        [pipeline.nodes.ctl]
        processor = "control:Control"
        flags = "{flags}"
    """))


class Hold:
    """A flag that keeps a HOLD line waiting until released."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.flag = tmp_path / "flags" / name
        self.flag.touch()
        self.line = f"HOLD {name}\n"

    def wait_held(self) -> None:
        wait_for(self.flag.with_name(self.flag.name + ".held").exists, 20, f"a worker to reach {self.line.strip()}")

    def release(self) -> None:
        self.flag.unlink()


def upper(content: str) -> str:
    return content.upper()


def processed_contents(watch: Path) -> dict[str, bytes]:
    return {n: (watch / "processed" / n).read_bytes() for n in folder(watch, "processed")}


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


# -- 1. a second delivery of a name in flight ---------------------------------------------------


def test_a_new_delivery_waits_while_its_name_is_retried_and_gets_its_own_name(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    hold = Hold(tmp_path, "h1")
    first = f"first\n{hold.line}FAILONCE f1\n"
    drop(watch, "report.log", first)
    hold.wait_held()
    drop(watch, "report.log", "second\n")  # the producer sends the name again
    hold.release()  # the first attempt now fails; the file is retried, and must not replace the second
    wait_for(lambda: len(folder(watch, "processed")) == 2, 30, "both deliveries processed")
    assert processed_contents(watch) == {"report.log": first.encode(), "report-1.log": b"second\n"}
    assert (watch / "output" / "report.log").read_text() == upper(first)
    assert (watch / "output" / "report-1.log").read_text() == "SECOND\n"
    assert (watch / "output" / "report-1.log.errors").read_text() == "second\n"
    events = [(e["event"], e["final"]) for e in journal(watch) if e["file"] == "report.log"]
    assert events.count(("processed", "report.log")) == 1 and events.count(("processed", "report-1.log")) == 1
    assert ("retried", "report.log") in events


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_file_that_cannot_go_back_is_adopted_not_replaced(tmp_path: Path, daemons, how: str) -> None:
    config = control_config(tmp_path)
    config.write_text(config.read_text().replace("shutdown_grace = 10", "shutdown_grace = 0.3"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    hold = Hold(tmp_path, "h2")
    first = f"first\n{hold.line}"
    drop(watch, "report.log", first)
    hold.wait_held()
    drop(watch, "report.log", "second\n")
    children = [c.pid for c in d.children()]
    if how == "sigterm":
        assert d.stop() == 0  # past its grace: the first goes back... but the name is taken
    else:
        d.kill()
    wait_for(lambda: not alive(children), 10, "the old supervisor's children to exit")
    assert (watch / "underprocess" / "report.log").read_bytes() == first.encode()
    assert (watch / "unprocessed" / "report.log").read_bytes() == b"second\n"
    hold.release()
    d2 = start(daemons, config, "--once")
    assert d2.wait(60) == 0, d2.log()
    assert processed_contents(watch) == {"report.log": first.encode(), "report-1.log": b"second\n"}
    assert folder(watch, "underprocess") == [] and folder(watch, "unprocessed") == []
    adopted = [e for e in journal(watch) if e["event"] == "adopted"]
    assert len(adopted) == 1 and adopted[0]["final"] == "report.log" and adopted[0]["attempt"] == 1  # at no cost
    assert not [e for e in journal(watch) if e["event"] == "retried"]


# -- 2. side outputs never take another file's name --------------------------------------------


def test_a_side_output_never_overwrites_another_files_output(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path)
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    drop(watch, "app.log", "main file\n")
    drop(watch, "app.log.errors", "the other file\n")
    d = start(daemons, config, "--once")
    assert d.wait(60) == 0, d.log()
    outputs = {e["file"]: e["output"] for e in journal(watch) if e["event"] == "processed"}
    assert set(outputs) == {"app.log", "app.log.errors"}
    assert not set(outputs["app.log"]) & set(outputs["app.log.errors"]), outputs
    assert (watch / "output" / "app.log.errors").read_text() == "main file\n"  # app.log's side output
    other = outputs["app.log.errors"][0]
    assert other != "app.log.errors" and (watch / "output" / other).read_text() == "THE OTHER FILE\n"


# -- 3. a crash between committing outputs and moving the input --------------------------------


def test_committed_outputs_roll_forward_even_if_a_retry_would_fail(tmp_path: Path, daemons) -> None:
    require_root("chattr +i holds the crash window open")
    config = control_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    # processed/ refuses the move (immutable, even for root): the crash window held open.
    subprocess.run(["chattr", "+i", str(watch / "processed")], check=True)
    try:
        content = "line one\nFAILONCE retry-fails\n"
        (tmp_path / "flags" / "retry-fails").touch()  # this first attempt succeeds...
        drop(watch, "c.log", content)
        wait_for(lambda: (watch / "output" / "c.log").exists(), 20, "c.log's outputs committed")
        d.kill()
    finally:
        subprocess.run(["chattr", "-i", str(watch / "processed")], check=True)
    (tmp_path / "flags" / "retry-fails").unlink()  # ...and a second one would fail
    assert folder(watch, "underprocess") + folder(watch, "unprocessed") == ["c.log"]
    d2 = start(daemons, config, "--once")
    assert d2.wait(60) == 0, d2.log()
    assert folder(watch, "processed") == ["c.log"] and folder(watch, "failed") == []
    assert (watch / "output" / "c.log").read_text() == upper(content)
    assert (watch / "output" / "c.log.errors").read_text() == content
    assert not (tmp_path / "flags" / "retry-fails").exists()  # it was not processed again
    assert not [n for n in os.listdir(watch / "output") if n.startswith(".")]


# -- 4, 5. a file's identity while it waits; ready markers after a retry ------------------------


def test_a_file_rewritten_while_waiting_for_its_retry_keeps_its_attempts(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path, workers="")
    config.write_text(config.read_text().replace("max_attempts = 2", "max_attempts = 3").replace(
        "retry_backoff = 0.1", "retry_backoff = 2"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "poison.log", "FAIL\n")
    wait_for(lambda: [e for e in journal(watch) if e["event"] == "retried"], 20, "the first failed attempt")
    assert d.stop() == 0  # during its backoff: back to unprocessed/
    path = watch / "unprocessed" / "poison.log"
    with open(path, "a") as f:  # the producer rewrites it in place (same inode, new size and mtime)
        f.write("FAIL again\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))
    start(daemons, config)
    wait_for(lambda: folder(watch, "failed") == ["poison.log"], 30, "poison.log in failed/ after 3 attempts")
    # The journal says "failed" once the move is done: just after it, not before.
    wait_for(lambda: any(e["event"] == "failed" for e in journal(watch)), 10, "the journal's failed entry")
    attempts = [(e["event"], e["attempt"], e["final"]) for e in journal(watch) if e["event"] in ("retried", "failed")]
    assert attempts == [("retried", 1, "poison.log"), ("retried", 2, "poison.log"), ("failed", 3, "poison.log")]
    drop(watch, "poison.log", "fine\n")  # no stale record reserves a name: the collision rule alone applies
    wait_for(lambda: folder(watch, "processed") == ["poison-1.log"], 20, "a new poison.log as poison-1.log")


@pytest.mark.parametrize("how", ["stopped-during-backoff", "recovered-after-sigkill"])
def test_a_file_back_without_its_ready_marker_is_not_stuck(tmp_path: Path, daemons, how: str) -> None:
    config = control_config(tmp_path, watch='ready_marker = "{name}.ready"\n')
    config.write_text(config.read_text().replace("retry_backoff = 0.1", "retry_backoff = 3"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    hold = Hold(tmp_path, "h5")
    content = "FAILONCE m1\n" if how == "stopped-during-backoff" else f"{hold.line}"
    drop(watch, "m.csv", content)
    drop(watch, "m.csv.ready", "")
    if how == "stopped-during-backoff":
        wait_for(lambda: [e for e in journal(watch) if e["event"] == "retried"], 20, "the failed first attempt")
        assert d.stop() == 0
    else:
        hold.wait_held()
        d.kill()
        hold.release()
    assert not (watch / "unprocessed" / "m.csv.ready").exists()  # consumed at the first claim
    d2 = start(daemons, config, "--once")
    assert d2.wait(60) == 0, d2.log()
    assert folder(watch, "processed") == ["m.csv"]


# -- 6. a writer that hard-links the file in while still writing --------------------------------

WRITER = """
import os, sys, threading
path, link = sys.argv[1], sys.argv[2]
with open(path, "w") as f:
    f.write("line 0\\n"); f.flush()
    os.link(path, link)
    for i in range(1, 4):
        threading.Event().wait(1.0)  # longer than settle: only the open-writer check protects it
        f.write(f"line {i}\\n"); f.flush()
"""


def test_a_hard_linked_file_is_not_claimed_while_its_writer_has_it_open(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "writing.log"),
                               str(watch / "unprocessed" / "linked.log")])
    early = []
    while writer.poll() is None:
        early += folder(watch, "underprocess") + folder(watch, "processed")
        pace(0.05)
    assert writer.wait() == 0
    assert not early, f"claimed while its writer was still writing: {early[:3]}"
    wait_for(lambda: folder(watch, "processed") == ["linked.log"], 20, "linked.log once its writer closed it")
    assert (watch / "output" / "linked.log").read_text() == "".join(f"LINE {i}\n" for i in range(4))


# -- 7. clock steps ----------------------------------------------------------------------------


def faketime_env(stamp: Path) -> dict[str, str]:
    """libfaketime (Debian's faketime) moves the wall clock of the supervisor and its
    children, read from ``stamp`` at every call; the monotonic clock stays real."""
    require("faketime")  # fails under CI, says how to install elsewhere
    lib = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    stamp.write_text("+0\n")
    return {"LD_PRELOAD": str(lib), "FAKETIME_TIMESTAMP_FILE": str(stamp), "FAKETIME_NO_CACHE": "1",
            "DONT_FAKE_MONOTONIC": "1"}


def test_wall_clock_steps_neither_charge_attempts_nor_disable_timeouts(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path, workers="file_timeout = 3\n")
    config.write_text(config.read_text().replace("max_attempts = 2", "max_attempts = 1"))
    watch = tmp_path / "watch_dir"
    stamp = tmp_path / "faketime"
    d = start(daemons, config, env=faketime_env(stamp))
    hold = Hold(tmp_path, "h7")
    drop(watch, "steady.log", f"a\n{hold.line}b\n")
    hold.wait_held()
    stamp.write_text("+2d\n")  # the wall clock jumps two days forward while the file is in flight
    pace(1.0)  # a few loop steps under the new time
    hold.release()
    wait_for(lambda: folder(watch, "processed") == ["steady.log"], 20, "steady.log processed on its first attempt")
    stamp.write_text("-2d\n")  # ...and back: a file past file_timeout must still be stopped
    stuck = Hold(tmp_path, "h7b")
    drop(watch, "stuck.log", stuck.line)
    stuck.wait_held()
    wait_for(lambda: folder(watch, "failed") == ["stuck.log"], 20, "stuck.log stopped by file_timeout")
    assert "file_timeout = 3s" in (watch / "failed" / "stuck.log.reason").read_text()
    stuck.release()
    assert not [e for e in journal(watch) if e["event"] == "retried"]
    assert d.alive()


# -- 8, 9. names: 255 bytes, not UTF-8, control characters, leading dashes ----------------------


def test_any_name_the_filesystem_allows_goes_through_end_to_end(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    longest = "é" * 125 + ".log"  # 254 bytes; with "-1" or ".errors" it no longer fits
    assert name_bytes(longest) == 254 and name_bytes(longest + ".errors") > NAME_MAX
    names = {
        os.fsdecode(b"caf\xe9.log"): "latin-1 name\n",
        "tab\there.log": "control character\n",
        "-rf.log": "leading dash\n",
        longest: "long name\n",
        "x" * NAME_MAX: "255 bytes, no extension\n",
    }
    for name, content in names.items():
        drop(watch, name, content)
    drop(watch, os.fsdecode(b"bad\xff.log"), "FAIL\n")
    wait_for(lambda: len(folder(watch, "processed")) == 5 and len(folder(watch, "failed")) == 1, 30,
             "every file processed, the failing one failed")
    for name, content in names.items():
        assert (watch / "processed" / name).read_text() == content
        assert (watch / "output" / name).read_text() == content.upper()
        assert (watch / "output" / output_name(name, "errors")).read_text() == content
    drop(watch, longest, "again\n")  # the same long name: its collision name must fit too
    wait_for(lambda: len(folder(watch, "processed")) == 6, 20, "the second long-named delivery")
    again = next(n for n in folder(watch, "processed") if n not in names)
    assert name_bytes(again) <= NAME_MAX and again.endswith("-1.log")
    assert (watch / "output" / again).read_text() == "AGAIN\n"
    bad = os.fsdecode(b"bad\xff.log")
    assert "failing, on purpose" in (watch / "failed" / reason_name(bad)).read_text()
    # Shown escaped, never as raw bytes, everywhere a person or a program reads it.
    raw = (watch / "input.log").read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    events = journal(watch)
    assert {"caf\\xe9.log", "tab\\there.log", "bad\\xff.log"} <= {e["file"] for e in events}
    shortened = [e for e in events if e.get("outputs_shortened")]
    assert shortened and all(name_bytes(v) <= NAME_MAX for e in shortened for v in e["outputs_shortened"].values())
    url = dashboard_url(d)
    wait_for(lambda: "caf\\\\xe9.log" in get(url + "trace")[1].decode(), 10, "the name shown in /trace")
    status, body = get(url + "errors")
    assert status == 200 and json.loads(body)["errors"][0]["file"] == "bad\\xff.log"
    history = subprocess.run([sys.executable, "supervisor.py", "-c", str(config), "history", bad],
                             cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=30)
    assert history.returncode == 0 and "bad\\xff.log" in history.stdout, history.stderr
    assert d.alive() and "Traceback" not in d.log()


# -- 10. an input removed from underprocess/ by hand -------------------------------------------


def test_an_input_removed_from_underprocess_costs_that_file_only(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    hold = Hold(tmp_path, "h10")
    drop(watch, "gone.log", hold.line)
    hold.wait_held()
    (watch / "underprocess" / "gone.log").unlink()
    hold.release()
    wait_for(lambda: [e for e in journal(watch) if e["event"] == "vanished"], 20, "the vanished entry")
    drop(watch, "after.log", "after\n")
    wait_for(lambda: folder(watch, "processed") == ["after.log"], 20, "the next file processed")
    assert d.alive() and "Traceback" not in d.log()


# -- fault isolation: one file, or the whole system ----------------------------------------------


def test_outputs_that_cannot_be_written_cost_an_attempt_not_the_daemon(tmp_path: Path, daemons) -> None:
    require_root("chattr +i makes output/ unwritable, even for root")
    config = control_config(tmp_path)
    config.write_text(config.read_text().replace("retry_backoff = 0.1", "retry_backoff = 1.5"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    subprocess.run(["chattr", "+i", str(watch / "output")], check=True)
    try:
        drop(watch, "blocked.log", "x\n")
        wait_for(lambda: [e for e in journal(watch) if e["event"] == "retried"], 20, "a failed attempt")
    finally:
        subprocess.run(["chattr", "-i", str(watch / "output")], check=True)
    wait_for(lambda: folder(watch, "processed") == ["blocked.log"], 20, "blocked.log on its second attempt")
    retried = next(e for e in journal(watch) if e["event"] == "retried")
    assert "blocked.log" in retried["reason"] and "Operation not permitted" in retried["reason"]
    assert d.alive()


def test_a_removed_watch_dir_stops_the_daemon_with_status_3(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "a.log", "a\n")
    wait_for(lambda: folder(watch, "processed") == ["a.log"], 20, "a first file")
    os.rename(watch, tmp_path / "moved-away")
    assert d.wait(30) == 3
    assert "is gone" in d.log() and "Traceback" not in d.log()


def test_a_read_only_remount_pauses_intake_and_it_resumes_when_writable_again(tmp_path: Path, daemons) -> None:
    """A read-only remount (an operator's, or the kernel's errors=remount-ro) needs a
    person, but once they remount it writable there is nothing else to do: the daemon
    paused, said so, and resumes by itself (an exit would keep it down under systemd's
    RestartPreventExitStatus=3)."""
    config = control_config(tmp_path)
    require_root("a read-only bind mount")
    config.write_text(config.read_text().replace("settle = 0.3", "settle = 2"))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    url = dashboard_url(d)
    (watch / "unprocessed" / "r.log").write_text("r\n")  # written in place: claimed once settled
    subprocess.run(["mount", "--bind", str(watch), str(watch)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(watch)], check=True)
        _, health = wait_for(lambda: (h := http_json(url + "health"))[0] == 503 and h[1].get("machine_fault") and h,
                             30, "/health to say the filesystem is read-only")
        assert any("read-only" in p for p in health["problems"]), health
        assert health["machine_fault"]["kind"] == "read_only"
        assert metric_value(url, "foldermill_machine_fault", kind="read_only") == 1
        assert "intake paused: the filesystem is read-only" in d.log()
        status = subprocess.run([sys.executable, str(ROOT / "supervisor.py"), "-c", str(config), "status"],
                                capture_output=True, text=True, timeout=60).stdout
        assert "INTAKE PAUSED by a fault of the machine: the filesystem is read-only" in status, status
        assert d.alive() and outcome_of(watch, "r.log") == "unprocessed"
        subprocess.run(["mount", "-o", "remount,bind,rw", str(watch)], check=True)
        wait_for(lambda: folder(watch, "processed") == ["r.log"], 30, "r.log processed once writable again")
        wait_for(lambda: http_json(url + "health")[0] == 200, 10, "/health back to 200")
        assert metric_value(url, "foldermill_machine_fault", kind="read_only") == 0
        assert metric_value(url, "foldermill_machine_faults_total", kind="read_only") == 1
        assert "intake resumed" in d.log()
    finally:
        # Lazily: the daemon keeps claim-lock descriptors open between claims (as it keeps
        # its state database open), and those opened since the bind mount are on it.
        subprocess.run(["umount", "--lazy", str(watch)], check=True)
    assert not [e for e in journal(watch) if e["event"] in ("retried", "failed")]  # nothing charged
    assert d.alive() and "Traceback" not in d.log()


def outcome_of(watch: Path, name: str) -> str:
    return next((f for f in ("unprocessed", "underprocess", "processed", "failed") if name in folder(watch, f)), "")


def test_a_corrupt_state_database_is_a_clear_start_up_error(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path)
    state = tmp_path / "watch_dir" / ".foldermill"
    state.mkdir(parents=True)
    (state / "state.db").write_bytes(b"this is not a database" * 100)
    d = start(daemons, config, "--once")
    assert d.wait(30) == 3
    assert "state database" in d.log() and "Traceback" not in d.log()
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(state / "state.db").execute("SELECT * FROM files")


def test_sigterm_while_starting_stops_cleanly(tmp_path: Path, daemons) -> None:
    config = control_config(tmp_path)
    d = Daemon(config)
    daemons.append(d)
    wait_for(lambda: "starting:" in d.log() or not d.alive(), 30, "the supervisor to be part-way through starting")
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log()
    assert "Traceback" not in d.log()


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("delay_s", [0.0, 0.03, 0.1, 0.25, 0.5])
def test_sigterm_at_any_moment_of_start_up_exits_0(tmp_path: Path, daemons, delay_s: float) -> None:
    """From the supervisor's first line on (its handler is the first thing it sets), a
    SIGTERM is a clean stop, however early: while it imports, forks, opens the state."""
    config = control_config(tmp_path)
    d = Daemon(config)
    daemons.append(d)
    wait_for(lambda: catches_sigterm(d.pid) or not d.alive(), 10, "the supervisor's SIGTERM handler (its first line)",
             interval_s=0.001)
    # Caught before the modules that take most of the start-up are loaded (the state
    # database's _sqlite3 among them): the handler really is the first thing it does.
    assert "_sqlite3" not in Path(f"/proc/{d.pid}/maps").read_text()
    pace(delay_s)
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log()
    assert "Traceback" not in d.log()


def test_a_long_name_with_a_long_extension_delivered_twice(tmp_path: Path, daemons) -> None:
    """Found by the model-based test: the collision name kept a 253-byte "extension"."""
    config = control_config(tmp_path)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    name = "a." + "b" * 253
    drop(watch, name, "first\n")
    wait_for(lambda: folder(watch, "processed") == [name], 20, "the first delivery")
    drop(watch, name, "second\n")
    wait_for(lambda: len(folder(watch, "processed")) == 2, 20, "the second delivery, under a collision name")
    second = next(n for n in folder(watch, "processed") if n != name)
    assert name_bytes(second) <= NAME_MAX and (watch / "output" / second).read_text() == "SECOND\n"
