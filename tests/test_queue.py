"""The folder queue on a real tmp_path, with real competing processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from filelock import FileLock, Timeout

from tests.daemon import ROOT, wait_for
from workers.queue import LOCK_COUNT, FolderQueue, PutBack


def make_queue(tmp_path: Path, marker: str = "") -> FolderQueue:
    q = FolderQueue(tmp_path / "w", ("*",), (".*", "*.tmp"), marker)
    q.prepare()
    return q


def put(q: FolderQueue, name: str, text: str = "x\n") -> None:
    (q.unprocessed / name).write_text(text)


def test_claim_finish_and_put_back(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    put(q, "a.log")
    assert q.claim("a.log") and (q.underprocess / "a.log").exists()
    assert not q.claim("a.log")  # gone from unprocessed/
    q.finish("a.log", "a-1.log", "processed")
    assert (q.processed / "a-1.log").exists() and not q.holds("a.log")
    put(q, "b.log")
    assert q.claim("b.log") and q.put_back("b.log") is PutBack.MOVED and (q.unprocessed / "b.log").exists()
    assert q.claim("b.log")
    q.finish("b.log", "b.log", "failed", reason="it broke")
    assert (q.failed / "b.log.reason").read_text() == "it broke\n"
    assert q.counts() == {"unprocessed": 0, "underprocess": 0, "processed": 1, "failed": 1}


def test_names_that_never_count_as_work(tmp_path: Path) -> None:
    q = make_queue(tmp_path, marker="{name}.ready")
    for name in ("ok.log", ".hidden", "part.tmp", "ok.log.ready", ".gitkeep"):
        put(q, name)
    assert [c.name for c in q.scan()] == ["ok.log"]
    assert q.has_marker("ok.log") and not q.has_marker("other.log")


def test_taken_names_cover_processed_failed_and_outputs(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    (q.output / "x.log.errors").write_text("")
    (q.failed / "y.log").write_text("")
    assert q.taken("x.log", ["errors"]) and not q.taken("x.log", [])
    assert q.taken("y.log", []) and not q.taken("z.log", ["errors"])


def test_a_filelock_on_the_same_lock_file_excludes_a_claim(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    put(q, "f.log")
    lock = FileLock(q.locks_dir / f"{q.lock_index('f.log'):04d}.lock", timeout=0)
    with lock:
        assert not q.claim("f.log")
    assert q.claim("f.log")
    other = FileLock(q.locks_dir / f"{q.lock_index('f.log'):04d}.lock", timeout=0)
    try:
        other.acquire()
        raise AssertionError("a FileLock got a lock the queue holds")
    except Timeout:
        pass
    q.finish("f.log", "f.log", "processed")
    other.acquire()
    other.release()


def test_a_lock_file_removed_by_hand_is_not_kept_locked_in_the_dark(tmp_path: Path) -> None:
    """A slot's descriptor stays open between claims (the open-files limit permitting).
    If a person removes the lock file meanwhile, another claimer locks a new file of that
    name: the next claim here must lock that one too, not the removed one, or two
    claimers would both hold the slot."""
    q = make_queue(tmp_path)
    put(q, "f.log")
    assert q.claim("f.log")
    q.finish("f.log", "f.log", "processed")
    path = q.locks_dir / f"{q.lock_index('f.log'):04d}.lock"
    path.unlink()
    put(q, "f.log")
    with FileLock(path, timeout=0):  # the other claimer, on a new file of that name
        assert not q.claim("f.log")
    assert q.claim("f.log")


def test_no_lock_descriptor_is_kept_open_before_the_manager_is_forked(tmp_path: Path) -> None:
    """prepare() tries a lock: its descriptor must not be kept (a forked manager would
    share it, and with it any lock taken on it later, past the supervisor's death)."""
    q = make_queue(tmp_path)
    assert q.locks.kept == {}


def test_lock_files_stay_bounded(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    for i in range(3000):
        put(q, f"n{i}")
        assert q.claim(f"n{i}")
        q.finish(f"n{i}", f"n{i}", "processed")
    assert len(os.listdir(q.locks_dir)) <= LOCK_COUNT


HOLDER = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from workers.queue import FolderQueue
    q = FolderQueue(Path({watch!r}), ("*",), (), "")
    assert q.claim("held.log")
    print("claimed", flush=True)
    threading.Event().wait(60)
""")


def test_recovery_never_robs_a_live_owner_and_takes_back_a_dead_ones_file(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    put(q, "held.log")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT), watch=str(q.root))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        assert q.recover(set()) == ([], [])  # its owner is alive
        assert (q.underprocess / "held.log").exists()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert wait_for(lambda: q.recover(set())[0], 5, "recovery of the dead owner's file") == ["held.log"]
        assert (q.unprocessed / "held.log").exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
