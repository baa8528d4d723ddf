"""Writers the daemon cannot see in /proc: a non-dumpable process (as a network server's
session is), the daemon without the capabilities of root (as the service user of the
shipped unit). The first line holds a file open in place (inotify's open and close
events); the second catches a file that changed between its claim and its commit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import (
    behave_config,
    dashboard_url,
    folder,
    http_json,
    journal,
    metric_value,
    start,
    wait_for,
)

# A writer that makes itself non-dumpable (its /proc/<pid>/fd is then root's, 0500, and
# only CAP_SYS_PTRACE reads it), opens argv[1] for appending, and then, for each line on
# stdin: "write TEXT" appends TEXT and a line end (flushed at once), "close" closes.
WRITER = r"""
import ctypes, sys
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
f = open(sys.argv[1], "a")
print("open", flush=True)
for command in sys.stdin:
    verb, _, text = command.rstrip("\n").partition(" ")
    if verb == "write":
        f.write(text + "\n")
        f.flush()
    elif verb == "close":
        f.close()
    print("done", flush=True)
"""


class HiddenWriter:
    """A real, non-dumpable process writing one file in place, one command at a time."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "open\n"

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"  # it did it

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def writers() -> Iterator[list[HiddenWriter]]:
    started: list[HiddenWriter] = []
    yield started
    for w in started:
        w.end()


def hidden_from(d_pid: int, writer: HiddenWriter) -> bool:
    """The daemon's own view: can its user list the writer's descriptors? (Checked from
    the daemon's side with its capabilities: /proc/<daemon>/status.)"""
    status = Path(f"/proc/{d_pid}/status").read_text()
    effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    owner = os.stat(f"/proc/{writer.proc.pid}/fd").st_uid
    return not effective >> 19 & 1 and owner == 0  # no CAP_SYS_PTRACE; non-dumpable: root's


def test_a_file_held_open_by_an_unseen_writer_waits_for_its_close(tmp_path: Path, daemons, writers) -> None:
    """Pauses longer than settle, by a writer /proc does not show: inotify's open keeps
    the file waiting until its close, so it is processed whole the first time."""
    config = behave_config(tmp_path)  # settle = 0.3
    watch = tmp_path / "watch_dir"
    d = start(daemons, config, unprivileged=True)
    assert "/proc: only the processes of user" in d.log()  # what it said it sees
    writer = HiddenWriter(watch / "unprocessed" / "upload.log")
    writers.append(writer)
    assert hidden_from(d.pid, writer)
    for i in range(4):
        writer.send(f"write chunk {i}")
        # .get: the first snapshots, before the first count of the folders, have none.
        wait_for(lambda: http_json(dashboard_url(d) + "stats")[1]["folders"].get("unprocessed") == 1, 10,
                 "the file seen waiting")
        assert not folder(watch, "underprocess") and not folder(watch, "processed")
        # Longer than settle (0.3 s) twice over: without the open seen, it would be taken now.
        wait_for(lambda: os.stat(watch / "unprocessed" / "upload.log").st_mtime < time.time() - 0.9,
                 5, "a pause of 0.9 s after the chunk")
        assert not folder(watch, "underprocess") and not folder(watch, "processed"), f"taken after chunk {i}"
    writer.send("close")
    wait_for(lambda: folder(watch, "processed") == ["upload.log"], 20, "upload.log processed after its close")
    assert (watch / "output" / "upload.log").read_text() == "".join(f"CHUNK {i}\n" for i in range(4))
    events = [e["event"] for e in journal(watch) if e["file"] == "upload.log"]
    assert events == ["claimed", "processed"], events  # once, and never caught changing


def test_a_file_that_changes_after_its_claim_is_never_committed(tmp_path: Path, daemons, writers) -> None:
    """The writer opened it before the daemon started (no open event to see) and is
    hidden from /proc: the file is claimed while still being written. It changes
    during processing, so the commit refuses it, costs nothing, and it is processed
    again once stable: whole."""
    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    writer = HiddenWriter(watch / "unprocessed" / "early.log")
    writers.append(writer)
    writer.send("write SLEEP 1.5")  # processing takes 1.5 s
    writer.send("write first")
    old = time.time() - 5
    os.utime(watch / "unprocessed" / "early.log", (old, old))  # looks settled at start-up
    d = start(daemons, config, unprivileged=True)
    assert hidden_from(d.pid, writer)
    wait_for(lambda: folder(watch, "underprocess") == ["early.log"], 20, "early.log claimed while still open")
    writer.send("write second")  # into the claimed file: the writer's descriptor follows it
    writer.send("close")
    wait_for(lambda: folder(watch, "processed") == ["early.log"], 30, "early.log processed once stable")
    assert (watch / "output" / "early.log").read_text() == "SLEEP 1.5\nFIRST\nSECOND\n"
    wait_for(lambda: [e for e in journal(watch) if e["event"] == "processed"], 10, "the processed line")
    events = [e for e in journal(watch) if e["file"] == "early.log"]
    kinds = [e["event"] for e in events]
    assert kinds == ["claimed", "changed", "processed"], kinds
    changed = events[1]
    assert "still being written" in changed["reason"] and "no attempt" in changed["reason"]
    url = dashboard_url(d)
    assert metric_value(url, "foldermill_inputs_changed_while_processing_total") == 1
    assert not [n for n in os.listdir(watch / "output") if n.startswith(".")]  # its staged outputs went
