"""The folder queue on a real tmp_path, with real competing processes."""

from __future__ import annotations

import errno
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


def make_tree_queue(tmp_path: Path) -> FolderQueue:
    q = FolderQueue(tmp_path / "w", ("*",), (".*", "*.tmp"), "", recursive=True)
    q.prepare()
    return q


def test_nested_names_move_through_directories_made_on_the_way(tmp_path: Path) -> None:
    q = make_tree_queue(tmp_path)
    (q.unprocessed / "a" / "b").mkdir(parents=True)
    (q.unprocessed / "a" / "b" / "x.log").write_text("x\n")
    (q.unprocessed / "a" / ".hidden").mkdir()
    (q.unprocessed / "a" / ".hidden" / "h.log").write_text("h\n")
    assert [c.name for c in q.scan()] == ["a/b/x.log"]
    assert q.claim("a/b/x.log") and (q.underprocess / "a" / "b" / "x.log").is_file()
    assert q.put_back("a/b/x.log") is PutBack.MOVED
    assert q.claim("a/b/x.log")
    assert q.claimed_names() == ["a/b/x.log"]
    assert q.finish("a/b/x.log", "a/b/x.log", "failed", reason="broke") == "a/b/x.log"
    assert (q.failed / "a" / "b" / "x.log.reason").read_text() == "broke\n"
    assert q.counts() == {"unprocessed": 0, "underprocess": 0, "processed": 0, "failed": 1}
    # The directories the moves emptied go once they stayed so; never the folders.
    assert q.remove_empty(now=float("inf"), after_s=0.0) >= 2
    assert not (q.unprocessed / "a" / "b").exists() and not (q.underprocess / "a").exists()
    assert (q.unprocessed / "a" / ".hidden" / "h.log").exists() and q.unprocessed.is_dir()


def test_a_symlinked_directory_is_never_moved_through(tmp_path: Path) -> None:
    q = make_tree_queue(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.log").write_text("not yours\n")
    (q.unprocessed / "d").mkdir()
    (q.unprocessed / "d" / "x.log").write_text("x\n")
    assert [c.name for c in q.scan()] == ["d/x.log"]
    (q.unprocessed / "d" / "x.log").unlink()
    (q.unprocessed / "d").rmdir()
    (q.unprocessed / "d").symlink_to(outside)  # swapped after the listing, as a hostile producer would
    try:
        claimed = q.claim("d/secret.log")
    except OSError as exc:  # ELOOP or EXDEV: refused, said by the intake
        claimed = False
        assert exc.errno in (errno.ELOOP, errno.EXDEV), exc
    assert not claimed, "a file was claimed through a symlinked directory"
    assert (outside / "secret.log").read_text() == "not yours\n" and not q.holds("d/secret.log")


def test_a_directory_name_taken_by_a_file_gives_the_directory_a_collision_name(tmp_path: Path) -> None:
    from workers.outputs import unique_name

    q = make_tree_queue(tmp_path)
    (q.processed / "acme").write_text("a flat file processed earlier\n")
    assert unique_name("acme/x.csv", lambda n: q.taken(n, ())) == "acme-1/x.csv"
    (q.output / "acme-1").mkdir()
    (q.output / "acme-1" / "x.csv").write_text("taken\n")
    assert unique_name("acme/x.csv", lambda n: q.taken(n, ())) == "acme-1/x-1.csv"


def test_a_reason_being_written_in_a_directory_of_failed_is_swept_once_its_writer_is_dead(tmp_path: Path) -> None:
    q = make_tree_queue(tmp_path)
    folder = q.failed / "a" / "b"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = folder / f".fm-reason.{int(dead.stdout)}.1.tmp"
    live = folder / f".fm-reason.{os.getpid()}.2.tmp"
    left.write_text("half a reason")
    live.write_text("being written")
    q.sweep_debris(lambda token: None)
    assert not left.exists() and live.exists()


def test_the_cleanup_of_empty_directories_never_goes_through_a_symlink(tmp_path: Path) -> None:
    q = make_tree_queue(tmp_path)
    (q.unprocessed / "a" / "b").mkdir(parents=True)
    (q.unprocessed / "a" / "b" / "x.log").write_text("x\n")
    assert q.claim("a/b/x.log")  # unprocessed/a/b is noted as maybe empty
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    os.rename(q.unprocessed / "a", tmp_path / "moved-away")
    (q.unprocessed / "a").symlink_to(outside)  # a producer swaps the directory for a symlink
    q.remove_empty(now=float("inf"), after_s=0.0)
    assert (outside / "b").is_dir() and (q.unprocessed / "a").is_symlink()
