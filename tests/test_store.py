"""The state database on its own: a real SQLite file in tmp_path, real files for the
name rules. Retention (``Store.prune``) and the schema migrations."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tests.daemon import behave_config, drop, folder, start, wait_for
from workers.queue import Candidate, FolderQueue
from workers.store import SCHEMA_VERSION, Store


class Folders:
    """The store's ``NameRules`` over a real failed/ and output/ folder."""

    def __init__(self, root: Path) -> None:
        self.failed, self.output = root / "failed", root / "output"
        self.failed.mkdir(parents=True)
        self.output.mkdir()

    def taken(self, name: str) -> bool:
        return (self.output / name).exists() or (self.failed / name).exists()

    def derived(self, name: str) -> list[str]:
        return [f"output/{name}", f"failed/{name}"]

    def left_failed(self, name: str) -> None:
        pass

    def in_failed(self, name: str, final_name: str) -> bool:
        return (self.failed / final_name).exists()


def claim(store: Store, folders: Folders, names: list[str], first_ino: int = 100) -> dict[str, int]:
    records = store.claim([Candidate(n, 1, 1, first_ino + i, 0o100644) for i, n in enumerate(names)], "me", folders)
    return {r.name: r.id for r in records}


def statuses(path: Path) -> dict[str, str]:
    return dict(sqlite3.connect(path).execute("SELECT name, status FROM files"))


def test_prune_forgets_old_finished_records_and_keeps_live_and_failed_in_place(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store, folders = Store(db), Folders(tmp_path)
    ids = claim(store, folders, ["done.log", "gone.log", "live.log", "failed-here.log", "failed-removed.log"])
    store.finished([(ids["done.log"], "processed"), (ids["gone.log"], "vanished"),
                    (ids["failed-here.log"], "failed"), (ids["failed-removed.log"], "failed")])
    (folders.failed / "failed-here.log").write_text("x\n")  # still in failed/: its record stays
    store.add_digests([("d-old", "done.log", ids["done.log"])])

    # Nothing is older than the cut-off yet: nothing goes.
    assert store.prune(time.time() - 3600, time.time() - 3600, folders.in_failed) == (0, False)
    assert len(statuses(db)) == 5

    later = time.time() + 1
    assert store.prune(later, later, folders.in_failed) == (3, False)
    # ... all but the newest record, which keeps ids growing
    assert statuses(db) == {"live.log": "claimed", "failed-here.log": "failed", "failed-removed.log": "failed"}
    assert store.digest_owner("d-old") == ""
    store.close()


def test_a_failed_file_on_its_way_to_failed_keeps_its_record_and_undated_digests_are_dated(tmp_path: Path) -> None:
    queue = FolderQueue(tmp_path / "w", ("*",), (".*",), "")
    queue.prepare()
    db = queue.state_dir / "state.db"
    store, folders = Store(db), Folders(tmp_path)
    ids = claim(store, folders, ["moving.log", "newest.log"])
    store.finished([(ids["moving.log"], "failed"), (ids["newest.log"], "processed")])
    (queue.underprocess / "moving.log").write_text("x\n")  # its move to failed/ has not happened yet
    sqlite3.connect(db, isolation_level=None).execute(
        "INSERT INTO digests (digest, final_name, file_id, added) VALUES ('old-writer', 'a.log', 1, 0)")
    later = time.time() + 1
    assert store.prune(later, time.time() - 60, queue.holds_failed) == (0, False)
    assert statuses(db)["moving.log"] == "failed"
    assert store.digest_owner("old-writer") == "a.log"  # written by an older supervisor: dated, kept
    (queue.underprocess / "moving.log").unlink()
    assert store.prune(later, time.time() - 60, queue.holds_failed) == (1, False)
    store.close()


def test_prune_works_in_small_steps_and_says_when_there_is_more(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store, folders = Store(db), Folders(tmp_path)
    ids = claim(store, folders, [f"f{i}.log" for i in range(5)])
    store.finished([(i, "processed") for i in ids.values()])
    later = time.time() + 1
    assert store.prune(later, later, folders.in_failed, limit=2) == (2, True)
    assert store.prune(later, later, folders.in_failed, limit=2) == (2, True)
    assert store.prune(later, later, folders.in_failed, limit=2) == (0, False)
    assert statuses(db) == {"f4.log": "processed"}  # the newest stays: ids keep growing
    store.close()


def test_a_pruned_file_that_comes_back_is_a_new_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    store, folders = Store(db), Folders(tmp_path)
    first = claim(store, folders, ["app.log"], first_ino=7)["app.log"]
    newer = claim(store, folders, ["other.log"], first_ino=8)["other.log"]
    store.finished([(first, "processed"), (newer, "processed")])
    later = time.time() + 1
    store.prune(later, later, folders.in_failed)
    again = store.claim([Candidate("app.log", 1, 1, 7, 0o100644)], "me", folders)
    assert again[0].id > newer and again[0].attempts == 0 and not again[0].known
    store.close()


def test_version_2_databases_are_migrated_to_dated_digests(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    old = sqlite3.connect(db)
    old.executescript("""
        CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, final_name TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL, owner TEXT, not_before REAL NOT NULL DEFAULT 0, reason TEXT, commit_pairs TEXT,
            updated REAL NOT NULL);
        CREATE INDEX files_status ON files (status);
        CREATE INDEX files_final ON files (final_name);
        CREATE TABLE digests (digest TEXT PRIMARY KEY, final_name TEXT NOT NULL, file_id INTEGER NOT NULL);
        INSERT INTO files VALUES (1, 'a.log', 5, 1, 1, 'a.log', 0, 'processed', 'x', 0, NULL, NULL, 1.0);
        INSERT INTO files VALUES (2, 'b.log', 6, 1, 1, 'b.log', 0, 'processed', 'x', 0, NULL, NULL, 2.0);
        INSERT INTO digests VALUES ('abc', 'a.log', 1);
        PRAGMA user_version = 2;
    """)
    old.commit()
    old.close()
    before = time.time()
    store, folders = Store(db), Folders(tmp_path)
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    (added,) = check.execute("SELECT added FROM digests WHERE digest = 'abc'").fetchone()
    assert added >= before  # dated at the upgrade: kept a whole retention period from then
    indexes = {n for (n,) in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "files_final" not in indexes and "files_age" in indexes
    # The old records are old (updated 1970): they go but the newest; the digest is young: it stays.
    assert store.prune(time.time() - 60, time.time() - 60, folders.in_failed) == (1, False)
    assert store.digest_owner("abc") == "a.log"
    store.close()


def test_version_1_databases_are_migrated_with_their_records(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    old = sqlite3.connect(db)
    old.executescript("""
        CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, final_name TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL, owner TEXT, not_before REAL NOT NULL DEFAULT 0, reason TEXT, updated REAL NOT NULL,
            UNIQUE (name, ino, size, mtime_ns));
        CREATE INDEX files_status ON files (status);
        CREATE TABLE digests (digest TEXT PRIMARY KEY, final_name TEXT NOT NULL, file_id INTEGER NOT NULL);
        INSERT INTO files VALUES (3, 'w.log', 9, 1, 1, 'w-1.log', 2, 'waiting', 'x', 0, 'boom', 5.0);
    """)
    old.commit()
    old.close()
    store, folders = Store(db), Folders(tmp_path)
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert store.live() == {("w.log", 9)}
    again = store.claim([Candidate("w.log", 1, 1, 9, 0o100644)], "me", folders)
    assert (again[0].id, again[0].final_name, again[0].attempts) == (3, "w-1.log", 2)  # attempts and name kept
    store.close()


def test_the_daemon_prunes_old_records_and_keeps_a_failed_files_while_it_is_in_failed(tmp_path: Path,
                                                                                       daemons: list) -> None:
    # A retention of ~1 s: records of finished files go soon after they finish.
    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace("settle = 0.3\n", "settle = 0.3\nstate_retention_days = 0.00001\n"))
    (tmp_path / "flags" / "stop").touch()
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    for name in ("a.log", "b.log"):
        drop(watch, name, "fine\n")
    drop(watch, "bad.log", "FAILIF stop\n")
    wait_for(lambda: folder(watch, "processed") == ["a.log", "b.log"] and folder(watch, "failed") == ["bad.log"],
             30, "a and b processed, bad failed")
    drop(watch, "c.log", "fine\n")  # the newest record: it always stays (ids keep growing)
    wait_for(lambda: "c.log" in folder(watch, "processed"), 30, "c processed")
    db = watch / ".foldermill" / "state.db"
    wait_for(lambda: statuses(db) == {"bad.log": "failed", "c.log": "processed"}, 30,
             "a's and b's records pruned, bad's kept while it is in failed/")
    (watch / "failed" / "bad.log").unlink()  # the operator gives up on it
    wait_for(lambda: statuses(db) == {"c.log": "processed"}, 30, "bad's record pruned once it left failed/")
    assert "state retention: forgot" in d.log()
    assert d.stop() == 0


def test_a_replay_stays_one_until_it_is_processed(tmp_path: Path) -> None:
    """Marked once; a failure and a retry keep the mark (no duplicate of itself under
    dedupe), "replayed" begins once, and processing clears it. A file whose record was
    pruned gets a marked one."""
    store, folders = Store(tmp_path / "state.db"), Folders(tmp_path)
    (file_id,) = claim(store, folders, ["r.log"], first_ino=7).values()
    store.finished([(file_id, "processed")])
    (tmp_path / "output" / "r.log").write_text("old\n")  # its earlier output
    store.replaying("r.log", 7)
    first = store.claim([Candidate("r.log", 1, 1, 7, 0o100644)], "me", folders)[0]
    assert (first.replay_of, first.replay_begins, first.final_name) == ("r.log", True, "r-1.log")
    store.finished([(first.id, "failed")])
    again = store.claim([Candidate("r-1.log", 1, 1, 7, 0o100644)], "me", folders)[0]
    assert again.replay_of == "r.log" and not again.replay_begins
    store.finished([(again.id, "processed")])
    assert store.db.execute("SELECT replay_of FROM files WHERE id = ?", (again.id,)).fetchone() == (None,)
    store.replaying("gone.log", 99)  # no record left (pruned): a new one, marked
    fresh = store.claim([Candidate("gone.log", 1, 1, 99, 0o100644)], "me", folders)[0]
    assert fresh.replay_of == "gone.log" and fresh.replay_begins


def test_a_journal_whose_end_a_power_cut_damaged_gets_its_next_entry_on_a_line_of_its_own(tmp_path: Path) -> None:
    """A power cut can keep a journal's new size but not its data: a run of NUL bytes
    where its last lines were. The next entry starts on a new line, and readers (the
    daemon's tail, ``history``) skip the damage, not the entries around it."""
    from workers.ops import history
    from workers.store import Journal, journal_entry, tail_journal

    path = tmp_path / "input.log"
    path.write_bytes(b'{"event":"claimed","file":"a.log"}\n' + b"\0" * 700)
    journal = Journal(path, 1 << 20, 2, tmp_path / "journal.lock")
    journal.write([journal_entry("processed", "a.log")])
    journal.close()
    lines = path.read_bytes().split(b"\n")
    assert lines[1] == b"\0" * 700 and lines[2].startswith(b'{"ts"'), lines  # not glued to the damage
    assert [e["event"] for e in tail_journal(path)] == ["claimed", "processed"]
    glued = tmp_path / "old.log"  # as a journal written before this fix may be
    glued.write_bytes(b"\0" * 50 + b'{"event":"processed","file":"b.log"}\n{broken\n')
    assert [e["file"] for e in tail_journal(glued)] == ["b.log"]

    class Watch:
        dir = tmp_path
        journal_keep = 2

    class Config:
        watch = Watch

    assert [e["event"] for e in history(Config, "a.log")] == ["claimed", "processed"]  # type: ignore[arg-type]


def test_journal_lines_a_full_disk_refused_are_written_first_once_it_takes_them(tmp_path: Path) -> None:
    """On a real full disk (a tmpfs of 1 MiB, filled): the kernel writes what fits of a
    batch, then ENOSPC. What was not written (half a line, here) is kept and raised; the
    next write puts it first, so no line is lost or cut in two."""
    import errno
    import subprocess

    import pytest

    from tests.components import require_root
    from workers.store import Journal, journal_entry, tail_journal

    require_root("mounting a tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True, timeout=30)
    try:
        journal = Journal(disk / "input.log", 1 << 20, 2, disk / "journal.lock")
        journal.write([journal_entry("claimed", "a.log")])
        with open(disk / "filler", "wb", buffering=0) as filler, pytest.raises(OSError) as full:
            while True:
                filler.write(b"x" * 4096)
        assert full.value.errno == errno.ENOSPC
        long = journal_entry("processed", "a.log", reason="r" * 9000)  # more than the page the journal ends in
        with pytest.raises(OSError) as refused:
            journal.write([long])
        assert refused.value.errno == errno.ENOSPC and journal.owes()
        (disk / "filler").unlink()
        journal.write([journal_entry("claimed", "b.log")])
        journal.close()
        assert not journal.owes()
        assert [(e["event"], e["file"]) for e in tail_journal(disk / "input.log")] == [
            ("claimed", "a.log"), ("processed", "a.log"), ("claimed", "b.log")]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=30)


class Compressed(Folders):
    """Name rules where ``x.gz``'s output is ``x``'s, as the daemon's are."""

    def derived(self, name: str) -> list[str]:
        return [f"output/{name.removesuffix('.gz')}", f"failed/{name}"]

    def taken(self, name: str) -> bool:
        return (self.output / name.removesuffix(".gz")).exists() or (self.failed / name).exists()


def test_one_batch_of_claims_never_gives_two_files_one_name(tmp_path: Path) -> None:
    """A batch's names are chosen in one transaction of few statements (its rows and its
    reservations looked up at once, written at once): still, no two files of it, nor a
    file of it and a live file of an earlier batch or a file on disk, share a name."""
    folders = Compressed(tmp_path)
    store = Store(tmp_path / "state.db")
    (folders.output / "on-disk.log").write_text("an earlier file's output\n")
    earlier = claim(store, folders, ["live.log"], first_ino=1)  # live: its names stay reserved
    failed = claim(store, folders, ["back.log"], first_ino=2)
    store.finished([(failed["back.log"], "failed")])
    names = ["a.log", "a.log.gz", "on-disk.log", "live.log.gz", "back.log", "back.log.gz", "b.log"]
    inodes = {"back.log": 2}
    records = store.claim([Candidate(n, 1, 1, inodes.get(n, 50 + i), 0o100644) for i, n in enumerate(names)],
                          "me", folders)
    final = {r.name: r.final_name for r in records}
    assert final["a.log"] == "a.log" and final["b.log"] == "b.log"
    assert final["a.log.gz"] == "a.log-1.gz"  # a.log, earlier in the batch, has output/a.log
    assert final["on-disk.log"] == "on-disk-1.log"
    assert final["live.log.gz"] == "live.log-1.gz"  # live.log, claimed before, holds output/live.log
    assert final["back.log"] == "back.log"  # seen before: a file moved back keeps its name if it is free
    assert final["back.log.gz"] == "back.log-1.gz"  # ... which it reserved again, in this batch
    assert [r.known for r in records] == [False, False, False, False, True, False, False]
    keys = [k for r in records for k in folders.derived(r.final_name)] + folders.derived("live.log")
    assert len(keys) == len(set(keys))
    rows = dict(sqlite3.connect(tmp_path / "state.db").execute("SELECT key, file_id FROM reserved"))
    assert {rows[k] for k in folders.derived("live.log")} == {earlier["live.log"]}
    assert all(rows[k] == r.id for r in records for k in folders.derived(r.final_name))


def test_a_batch_bigger_than_a_lookup_finds_every_file_seen_before(tmp_path: Path) -> None:
    """More names than one ``IN (...)`` lookup takes: the rows of files claimed before
    are found in every chunk (their ids kept), the new ones get rows of their own."""
    folders = Folders(tmp_path)
    store = Store(tmp_path / "state.db")
    names = [f"f{i:04d}.log" for i in range(1000)]
    before = claim(store, folders, names[::3])  # inodes 100, 101...: each name's own below
    inodes = {n: 100 + i for i, n in enumerate(names[::3])}
    records = store.claim([Candidate(n, 1, 1, inodes.get(n, 5000 + i), 0o100644) for i, n in enumerate(names)],
                          "me", folders)
    assert [r.final_name for r in records] == names
    assert {r.name: r.id for r in records if r.known} == before
    assert len({r.id for r in records}) == len(names)


def test_one_file_twice_in_a_batch_keeps_one_row_and_one_name(tmp_path: Path) -> None:
    """The daemon never sends the same (name, inode) twice in one batch; if a caller
    did, the second finds the row the first made, as when each file was a statement."""
    folders = Folders(tmp_path)
    store = Store(tmp_path / "state.db")
    twice = Candidate("a.log", 1, 1, 7, 0o100644)
    first, second = store.claim([twice, twice], "me", folders)
    assert (first.id, first.final_name, first.known) == (second.id, "a.log", False)
    assert second.known and second.final_name == "a.log"
    assert len(statuses(tmp_path / "state.db")) == 1
