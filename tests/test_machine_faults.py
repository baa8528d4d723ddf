"""A fault of the machine is not a fault of the file: a disk that fills (by blocks or
by inodes, with the state database and the journal on it), no descriptors left, a
database that is full or busy. Intake pauses and says so (log, /health, /metrics), no
attempt is charged, no worker dies for it, nothing partial is committed, and it
resumes by itself once the fault clears. Real mounts, real limits, real processes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import require_root
from tests.daemon import (
    BASE_CONFIG,
    dashboard_url,
    folder,
    http_json,
    journal,
    metric_value,
    start,
    wait_for,
    write_config,
)
from workers.faults import DATABASE_BUSY, DESCRIPTORS, DISK_FULL, fault_of


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of the test's own; ``mount -o remount`` grows it, teardown unmounts it."""
    require_root("mounting a tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def mount_tmpfs(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True, timeout=30)


def remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True, timeout=30)


def fault_config(tmp_path: Path, watch: Path, workers: int = 2) -> Path:
    text = BASE_CONFIG.replace('dir = "watch_dir"', f'dir = "{watch}"').replace("count = 1", f"count = {workers}")
    return write_config(tmp_path, text.replace("retry_backoff = 0.1", "retry_backoff = 0.2"))


def produce(watch: Path, names_and_texts: dict[str, str]) -> None:
    """Files the safe way, on the same filesystem: written beside, renamed in."""
    for name, text in names_and_texts.items():
        tmp = watch / f".in-{name}"
        tmp.write_text(text)
        os.rename(tmp, watch / "unprocessed" / name)


def paused_by(url: str, kind: str) -> dict | None:
    """/health's body when it is 503 for a fault of ``kind``, else None."""
    status, body = http_json(url + "health")
    fault = body.get("machine_fault") or {}
    return body if status == 503 and fault.get("kind") == kind else None


def nothing_charged(watch: Path) -> None:
    charged = [e for e in journal(watch) if e["event"] in ("retried", "failed")]
    assert not charged, charged


def test_a_full_disk_pauses_intake_charges_nothing_and_resumes_when_it_grows(tmp_path: Path, small_disk: Path,
                                                                              daemons) -> None:
    """Inputs of ~0.9 MB on a 24 MB disk that also holds the outputs, the state
    database and the journal: it fills mid-file."""
    mount_tmpfs(small_disk, "size=24m")
    watch = small_disk / "watch_dir"
    config = fault_config(tmp_path, watch)
    d = start(daemons, config)
    url = dashboard_url(d)
    workers = {w.pid for w in wait_for(lambda: len(d.workers()) == 2 and d.workers(), 30, "two workers")}
    line = "2026-12-01T00:00:00 INFO a line of a log that fills the disk\n"
    texts = {f"big-{i:02d}.log": f"file {i}\n" + line * (900_000 // len(line)) for i in range(16)}
    produce(watch, texts)
    body = wait_for(lambda: paused_by(url, DISK_FULL), 60, "/health 503: the disk is full")
    assert any("the disk is full" in p and str(watch) in p for p in body["problems"]), body
    assert metric_value(url, "foldermill_machine_fault", kind=DISK_FULL) == 1
    assert metric_value(url, "foldermill_intake_paused") == 1
    assert d.log().count("intake paused: the disk is full") == 1  # said once
    assert d.alive()
    remount(small_disk, "size=200m")
    wait_for(lambda: folder(watch, "processed") == sorted(texts), 90, "every file processed once the disk grew")
    wait_for(lambda: http_json(url + "health")[0] == 200, 15, "/health 200 again")
    assert metric_value(url, "foldermill_machine_fault", kind=DISK_FULL) == 0
    assert "intake resumed" in d.log()
    for name, text in texts.items():  # whole outputs, each once; nothing staged left over
        assert (watch / "output" / name).read_text() == text.upper(), name
    assert sorted(os.listdir(watch / "output")) == sorted(texts)
    nothing_charged(watch)
    assert {w.pid for w in d.workers()} == workers  # no worker died for it
    assert metric_value(url, "foldermill_worker_restarts_total", cause="crashed") in (None, 0)
    assert d.stop() == 0


def test_a_disk_out_of_inodes_pauses_intake_and_resumes(tmp_path: Path, small_disk: Path, daemons) -> None:
    """Room in bytes but no inode left (a tmpfs of 110 inodes: the queue's folders, its
    locks and state, then an input and an output per file)."""
    mount_tmpfs(small_disk, "size=64m,nr_inodes=110")
    watch = small_disk / "watch_dir"
    config = fault_config(tmp_path, watch)
    d = start(daemons, config)
    url = dashboard_url(d)
    texts = {f"small-{i:02d}.log": f"line {i}\n" for i in range(40)}
    produce(watch, texts)
    body = wait_for(lambda: paused_by(url, DISK_FULL), 60, "/health 503: no inode left")
    assert body["machine_fault"]["path"].startswith(str(watch)), body
    assert d.alive()
    remount(small_disk, "nr_inodes=2000")
    wait_for(lambda: folder(watch, "processed") == sorted(texts), 60, "every file processed once inodes were freed")
    wait_for(lambda: http_json(url + "health")[0] == 200, 15, "/health 200 again")
    for name, text in texts.items():
        assert (watch / "output" / name).read_text() == text.upper(), name
    assert not [n for n in os.listdir(watch / "output") if n.startswith(".")]
    nothing_charged(watch)
    assert d.stop() == 0


def test_no_descriptors_left_pauses_intake_and_resumes(tmp_path: Path, daemons) -> None:
    """The supervisor's own descriptor limit lowered under it (prlimit), then raised."""
    require_root("prlimit on another process")
    watch = tmp_path / "watch_dir"
    config = fault_config(tmp_path, watch, workers=1)
    d = start(daemons, config)
    url = dashboard_url(d)
    produce(watch, {"before.log": "before\n"})
    wait_for(lambda: folder(watch, "processed") == ["before.log"], 30, "a first file")
    soft, hard = (int(v) for v in subprocess.run(["prlimit", f"--pid={d.pid}", "--nofile", "--raw", "--noheadings",
                                                  "--output=SOFT,HARD"], capture_output=True, text=True,
                                                 check=True, timeout=10).stdout.split())
    in_use = len(os.listdir(f"/proc/{d.pid}/fd"))
    subprocess.run(["prlimit", f"--pid={d.pid}", f"--nofile={in_use}:{hard}"], check=True, timeout=10)
    try:
        produce(watch, {f"n{i}.log": f"n {i}\n" for i in range(5)})
        wait_for(lambda: paused_by(url, DESCRIPTORS), 30, "/health 503: no descriptors left")
        assert "intake paused: no file descriptors are left" in d.log()
    finally:
        subprocess.run(["prlimit", f"--pid={d.pid}", f"--nofile={soft}:{hard}"], check=True, timeout=10)
    wait_for(lambda: len(folder(watch, "processed")) == 6, 30, "the files processed once descriptors were back")
    nothing_charged(watch)
    assert d.alive() and "intake resumed" in d.log()
    assert d.stop() == 0


def test_sqlite_full_and_busy_are_faults_of_the_machine(tmp_path: Path) -> None:
    """What SQLite itself answers, told apart from a corruption: a database that cannot
    grow (max_page_count: SQLite's own SQLITE_FULL) and one another connection holds."""
    path = tmp_path / "s.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE t (x TEXT)")
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (?)", ("x" * 100_000,))
    fault = fault_of(full.value, str(path))
    assert fault is not None and fault.kind == DISK_FULL and fault.path == str(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as busy:
        other.execute("BEGIN IMMEDIATE")
    assert fault_of(busy.value, str(path)).kind == DATABASE_BUSY
    holder.execute("ROLLBACK")
    with pytest.raises(sqlite3.OperationalError) as syntax:
        db.execute("SELEC nothing")
    assert fault_of(syntax.value, str(path)) is None  # not the machine's
