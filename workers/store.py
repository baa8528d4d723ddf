"""State that outlives a restart: SQLite (WAL) for attempts, names and totals, and the
human-readable journal ``input.log``.

A file is identified by (name, inode) while it is live: renames between queue folders
keep both, so a file keeps its attempts and its final name across retries and restarts,
while a new delivery that reuses a name (a new inode) is a new file. SQLite in WAL mode is safe for
several supervisors on one host; on a network filesystem its locking is not, and
several supervisors there must each have their own watch dir (docs/operations/state.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock

from workers.errors import FoldermillError
from workers.faults import fault_of
from workers.names import shown, unshown
from workers.outputs import unique_name
from workers.queue import STATE_DIR, Candidate

SCHEMA_VERSION = 4
FILES = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,             -- names are stored shown (workers/names.py): valid UTF-8, exact
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    final_name TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,           -- claimed | waiting | committing | processed | failed | vanished | replay
    owner TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    reason TEXT,
    commit_pairs TEXT,              -- while committing: JSON [[staged, final], ...] in output/
    replay_of TEXT,                 -- a replay, until it finishes: the final name of its earlier outputs
    updated REAL NOT NULL
);
"""
SCHEMA = FILES + """
CREATE INDEX IF NOT EXISTS files_identity ON files (name, ino);
CREATE INDEX IF NOT EXISTS files_age ON files (status, updated);
CREATE TABLE IF NOT EXISTS reserved (key TEXT PRIMARY KEY, file_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS reserved_file ON reserved (file_id);
CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS digests (digest TEXT PRIMARY KEY, final_name TEXT NOT NULL, file_id INTEGER NOT NULL,
                                    added REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS digests_added ON digests (added);
"""
PRUNE_ROWS = 500  # rows per pruning transaction: a few milliseconds of the write lock


def state_db_path(watch_dir: Path) -> Path:
    """Where a watch dir's state database is (the one rule: the daemon, the CLI, the
    dashboard and the workers all find it here)."""
    return watch_dir / STATE_DIR / "state.db"

LIVE = ("claimed", "waiting", "committing")
_LIVE_SQL = "('claimed', 'waiting', 'committing')"
NO_FILE = 0  # a file id no row has (SQLite ids start at 1): for a name chosen before its row exists


class NameRules(Protocol):
    """What the store needs to know of the folders to choose a final name."""

    def taken(self, name: str) -> bool:
        """The name, or one derived from it, is in use on disk."""

    def derived(self, name: str) -> list[str]:
        """Keys ("folder/name") of every name a file with this final name uses."""

    def left_failed(self, name: str) -> None:
        """A failed file was moved back by hand: what it left in failed/ is stale."""


class StateError(FoldermillError):
    """The state database cannot be used (corrupt, not a database, unwritable)."""


@dataclass(frozen=True)
class FileRecord:
    id: int
    name: str
    final_name: str
    attempts: int  # failed attempts so far
    committed: tuple[tuple[str, str], ...] = ()  # its outputs were being committed when its owner died
    known: bool = False  # claimed before: an earlier execution may have left staged files
    replay_of: str = ""  # a processed file replayed: the final name its earlier outputs have
    replay_begins: bool = False  # this claim is the replay's first: the journal says "replayed"


class Store:
    """One connection per supervisor process; every method is one short transaction.

    A file is identified by its name and inode while it is live (claimed, waiting,
    committing): renames between queue folders keep both, and so does a producer that
    rewrites or touches a file waiting for its retry, which therefore keeps its attempts
    and its final name. A final name, with every name derived from it (its outputs, its
    reason file), is reserved for the file while it is live (table ``reserved``), so no
    other file can be given a name that would collide with one of them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit is not synced by itself (a power cut may lose the last
            # ones); the commit path syncs the WAL (``sync``) before the folders depend
            # on what it says, with the group commit's syncfs when it is on that disk.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._failed_cursor = 0  # where the last prune stopped among old failed rows
            self._migrate()
            self.db.executescript(SCHEMA)
            if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:  # no write on a full disk
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:
            if fault_of(exc, str(path)) is not None:
                raise  # a full disk, a busy database: the machine's, not a corruption
            raise StateError(f"the state database {path} cannot be used: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StateError(f"the state database {path} cannot be used: {exc} (move it aside to start afresh; "
                             "attempt counts and totals are then lost, the folders and the journal stay)") from None

    def _migrate(self) -> None:
        """Version 1 identified a file by (name, inode, size, mtime) with a UNIQUE
        constraint: copy its rows into the version 2 table. Version 3 dates digests (for
        their retention), indexes files by (status, age) for pruning and drops an index
        nothing read. Version 4 marks replays (``replay_of``)."""
        self.db.create_function("shown", 1, shown, deterministic=True)
        with self._tx() as db:  # under the write lock: two supervisors never migrate twice
            (version,) = db.execute("PRAGMA user_version").fetchone()
            tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version >= SCHEMA_VERSION or "files" not in tables:
                return
            if version < 2:
                db.execute("ALTER TABLE files RENAME TO files_v1")
                db.execute(FILES)
                db.execute("INSERT INTO files (id, name, ino, size, mtime_ns, final_name, attempts, status, owner, "
                           "not_before, reason, updated) SELECT id, shown(name), ino, size, mtime_ns, "
                           "shown(final_name), attempts, status, owner, not_before, reason, updated FROM files_v1")
                db.execute("DROP TABLE files_v1")
            if "replay_of" not in {row[1] for row in db.execute("PRAGMA table_info(files)")}:
                db.execute("ALTER TABLE files ADD COLUMN replay_of TEXT")
            db.execute("DROP INDEX IF EXISTS files_status")
            db.execute("DROP INDEX IF EXISTS files_final")
            if "digests" in tables:
                columns = {row[1] for row in db.execute("PRAGMA table_info(digests)")}
                if "added" not in columns:  # dated now: kept a full retention period from the upgrade
                    db.execute("ALTER TABLE digests ADD COLUMN added REAL NOT NULL DEFAULT 0")
                    db.execute("UPDATE digests SET added = ?", (time.time(),))
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def sync(self) -> None:
        """Make every committed transaction durable: fsync the WAL (where they are until
        a checkpoint copies them, which syncs by itself)."""
        wal = Path(f"{self.path}-wal")
        fd = os.open(wal if wal.exists() else self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    def waiting_until(self, now: float) -> dict[tuple[str, int], float]:
        """Files backing off before their next attempt: (name, inode) -> not_before."""
        rows = self.db.execute(
            "SELECT name, ino, not_before FROM files WHERE status = 'waiting' AND not_before > ?", (now,))
        return {(unshown(name), ino): nb for name, ino, nb in rows}

    def live(self) -> set[tuple[str, int]]:
        """(name, inode) of every file that was claimed before and is not finished."""
        rows = self.db.execute(f"SELECT name, ino FROM files WHERE status IN {_LIVE_SQL}")
        return {(unshown(name), ino) for name, ino in rows}

    def claim(self, claims: Iterable[Candidate], owner: str, names: NameRules) -> list[FileRecord]:
        """Record files just claimed; choose each new file's final name once, for good.

        A batch is one transaction of few statements: the rows of its names are looked
        up at once, and so are the reservations of its new files' own names (the usual
        final name); their rows are inserted one by one (each needs its id) and their
        reservations written at once. A name in use, and a file seen before, take the
        slower way, a statement or more each."""
        taken, derived = names.taken, names.derived
        batch = list(claims)
        now = time.time()
        records = []
        with self._tx() as db:
            known = _latest_rows(db, batch)
            fresh = _FreshNames(db, [c.name for c in batch if (shown(c.name), c.ino) not in known], derived)
            for c in batch:
                name = shown(c.name)
                row = known.get((name, c.ino))
                if row is None:  # new: its name chosen first (it reserves nothing yet), then one INSERT
                    chosen = fresh.own_name(c.name, taken)
                    if chosen is None:  # in use: the first free name from it on, the table read
                        fresh.write()  # so what this batch reserved so far is there
                        chosen = self._free_name(db, NO_FILE, c.name, taken, derived)
                    final, keys = chosen
                    cur = db.execute(
                        "INSERT INTO files (name, ino, size, mtime_ns, final_name, status, owner, updated) "
                        "VALUES (?, ?, ?, ?, ?, 'claimed', ?, ?)",
                        (name, c.ino, c.size, c.mtime_ns, shown(final), owner, now))
                    file_id = cur.lastrowid
                    assert file_id is not None  # an INSERT gives its row's id
                    fresh.reserve(file_id, keys)
                    records.append(FileRecord(file_id, c.name, final, 0))
                    # The same file again in this batch (no caller sends one) finds this row.
                    known[(name, c.ino)] = (file_id, shown(final), 0, "claimed", None, None)
                    continue
                fresh.write()  # what is reserved so far is in the table before any other look at it
                file_id, final_shown, attempts, status, pairs, replay_shown = row
                final = unshown(final_shown)
                committed: tuple[tuple[str, str], ...] = ()
                replay_of = unshown(replay_shown) if replay_shown else ""
                if status == "committing":
                    committed = tuple((t, unshown(f)) for t, f in json.loads(pairs or "[]"))
                elif status not in LIVE:
                    # Moved back by an operator: fresh attempts; its old name may be in use.
                    attempts = 0
                    if status == "failed":
                        names.left_failed(final)
                    if taken(final) or self._reserved_by_other(db, file_id, derived(final)):
                        final = self._reserve_free_name(db, file_id, c.name, taken, derived)
                    else:
                        self._reserve(db, file_id, derived(final))
                    fresh.reserved_elsewhere(derived(final))
                db.execute(
                    "UPDATE files SET status = ?, owner = ?, attempts = ?, final_name = ?, size = ?, mtime_ns = ?, "
                    "updated = ? WHERE id = ?",
                    ("committing" if committed else "claimed", owner, attempts, shown(final), c.size, c.mtime_ns,
                     now, file_id))
                records.append(FileRecord(file_id, c.name, final, attempts, committed, known=True,
                                          replay_of=replay_of, replay_begins=status == "replay"))
            fresh.write()
        return records

    def reserve_anew(self, files: list[tuple[int, str, str]], names: NameRules) -> dict[int, str]:
        """Files whose final name reserved the side outputs of another configuration (a
        reload or a restart since they were claimed): it reserves what it uses now. One
        whose new names are in use, on disk or by another file, gets a new final name:
        it has put nothing under the old one yet. Returns those: file id -> new name."""
        changed: dict[int, str] = {}
        with self._tx() as db:
            for file_id, name, final in files:
                keys = names.derived(final)
                if names.taken(final) or self._reserved_by_other(db, file_id, keys):
                    new = self._reserve_free_name(db, file_id, name, names.taken, names.derived)
                    if new != final:
                        db.execute("UPDATE files SET final_name = ? WHERE id = ?", (shown(new), file_id))
                        changed[file_id] = new
                else:
                    self._reserve(db, file_id, keys)
        return changed

    def _reserve_free_name(self, db: sqlite3.Connection, file_id: int, name: str, taken: Callable[[str], bool],
                           derived: Callable[[str], list[str]]) -> str:
        """The first free name from ``name`` on, reserved for ``file_id``."""
        final, keys = self._free_name(db, file_id, name, taken, derived)
        self._reserve(db, file_id, keys)
        return final

    def _free_name(self, db: sqlite3.Connection, file_id: int, name: str, taken: Callable[[str], bool],
                   derived: Callable[[str], list[str]]) -> tuple[str, list[str]]:
        """The first free name from ``name`` on: free on disk, and none of its derived
        names reserved by a live file other than ``file_id``; with those names."""
        keys: dict[str, list[str]] = {}

        def used(candidate: str) -> bool:
            keys[candidate] = derived(candidate)
            return taken(candidate) or self._reserved_by_other(db, file_id, keys[candidate])

        final = unique_name(name, used)
        return final, keys[final]

    @staticmethod
    def _reserved_by_other(db: sqlite3.Connection, file_id: int, keys: list[str]) -> bool:
        marks = ",".join("?" * len(keys))
        row = db.execute(f"SELECT 1 FROM reserved WHERE key IN ({marks}) AND file_id != ? LIMIT 1",
                         [shown(k) for k in keys] + [file_id]).fetchone()
        return row is not None

    @staticmethod
    def _reserve(db: sqlite3.Connection, file_id: int, keys: list[str]) -> None:
        db.execute("DELETE FROM reserved WHERE file_id = ?", (file_id,))
        db.executemany("INSERT OR REPLACE INTO reserved (key, file_id) VALUES (?, ?)",
                       [(shown(k), file_id) for k in keys])

    def attempt_failed(self, file_id: int, reason: str,
                       next_try_s: Callable[[int], float | None]) -> tuple[int, float | None]:
        """Count a failed attempt. ``next_try_s(attempts)`` says how long the file waits
        before its next one, or None if it has none left (``workers/failure.py``).
        Returns (attempts, that wait)."""
        now = time.time()
        with self._tx() as db:
            (attempts,) = db.execute("SELECT attempts FROM files WHERE id = ?", (file_id,)).fetchone()
            attempts += 1
            delay = next_try_s(attempts)
            db.execute(
                "UPDATE files SET attempts = ?, status = ?, reason = ?, not_before = ?, updated = ? WHERE id = ?",
                (attempts, "failed" if delay is None else "claimed", reason, now + (delay or 0.0), now, file_id))
        return attempts, delay

    def requeued(self, file_ids: Iterable[int], not_before: dict[int, float] | None = None) -> None:
        """Files put back in unprocessed/ (a stop): waiting, after a backoff if they have one.
        One being committed stays so: its next claim rolls the commit forward."""
        now = time.time()
        wait = not_before or {}
        with self._tx() as db:
            db.executemany("UPDATE files SET status = 'waiting', not_before = ?, updated = ? "
                           "WHERE id = ? AND status != 'committing'", [(wait.get(i, 0.0), now, i) for i in file_ids])

    def committing(self, items: Iterable[tuple[int, list[tuple[str, str]]]]) -> None:
        """Outputs staged and durable, about to be renamed into place: from here on the
        file is done, and an owner's death rolls it forward instead of redoing it."""
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE files SET status = 'committing', commit_pairs = ?, updated = ? WHERE id = ?",
                           [(json.dumps([[t, shown(f)] for t, f in pairs]), now, i) for i, pairs in items])

    def finished(self, done: Iterable[tuple[int, str]]) -> None:
        """Mark files processed, failed or vanished: (id, status); their names are on disk
        now (or gone), so their reservations go."""
        now = time.time()
        rows = list(done)
        with self._tx() as db:
            # A failed file is found again by the name it has in failed/ when an operator
            # moves it back (its final name); a replay that failed stays a replay, so that
            # retried it is still no duplicate of itself.
            db.executemany("UPDATE files SET status = ?, commit_pairs = NULL, updated = ?, "
                           "name = CASE WHEN ? = 'failed' THEN final_name ELSE name END, "
                           "replay_of = CASE WHEN ? = 'failed' THEN replay_of END WHERE id = ?",
                           [(s, now, s, s, i) for i, s in rows])
            db.executemany("DELETE FROM reserved WHERE file_id = ?", [(i,) for i, _ in rows])

    def recovered(self, names: Iterable[str]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE files SET status = 'waiting', not_before = 0, updated = ? "
                           "WHERE name = ? AND status = 'claimed'", [(now, shown(n)) for n in names])

    def replaying(self, name: str, ino: int) -> None:
        """``processed/name`` (inode ``ino``) is about to go back to unprocessed/ to be
        processed again: its record is marked, under the name it has now, so that its
        claims know it for a replay until it finishes (``FileRecord.replay_of``: never a
        duplicate of itself, "replayed" journalled once). A file whose record was pruned
        gets a new one, marked the same way."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT id, final_name FROM files WHERE name = ? AND ino = ? AND status = 'processed' "
                             "ORDER BY id DESC LIMIT 1", (shown(name), ino)).fetchone()
            if row is None:  # it got a collision name: found by that (no index: a rare case of a rare action)
                row = db.execute("SELECT id, final_name FROM files WHERE final_name = ? AND ino = ? "
                                 "AND status = 'processed' ORDER BY id DESC LIMIT 1", (shown(name), ino)).fetchone()
            if row is None:
                db.execute("INSERT INTO files (name, ino, size, mtime_ns, final_name, status, replay_of, updated) "
                           "VALUES (?, ?, 0, 0, ?, 'replay', ?, ?)", (shown(name), ino, shown(name), shown(name), now))
                return
            db.execute("UPDATE files SET name = ?, status = 'replay', replay_of = final_name, updated = ? WHERE id = ?",
                       (shown(name), now, row[0]))

    def unreplaying(self, name: str, ino: int) -> None:
        """The move back did not happen after all."""
        with self._tx() as db:
            db.execute("UPDATE files SET status = 'processed', replay_of = NULL WHERE name = ? AND ino = ? "
                       "AND status = 'replay'", (shown(name), ino))

    def file_row(self, file_id: int) -> tuple[str, str, list[str]] | None:
        """(name, status, staged files being committed) of one file's record, or None."""
        row = self.db.execute("SELECT name, status, commit_pairs FROM files WHERE id = ?", (file_id,)).fetchone()
        if row is None:
            return None
        return unshown(row[0]), row[1], [t for t, _ in json.loads(row[2] or "[]")]

    def live_rows(self) -> list[tuple[int, str, int, str, str]]:
        """Every live file: (id, name, inode, final name, owner), to find the vanished."""
        rows = self.db.execute(f"SELECT id, name, ino, final_name, owner FROM files WHERE status IN {_LIVE_SQL}")
        return [(i, unshown(n), ino, unshown(f), owner or "") for i, n, ino, f, owner in rows]

    def digest_owner(self, digest: str, file_id: int = 0) -> str:
        """The final name of the file that processed this content first, unless that
        is ``file_id`` itself (a commit a crash cut short, redone)."""
        row = self.db.execute("SELECT final_name FROM digests WHERE digest = ? AND file_id != ?",
                              (digest, file_id)).fetchone()
        return row[0] if row else ""

    def add_digests(self, rows: list[tuple[str, str, int]]) -> None:
        """(digest, final name, file id) of files just processed; the first one wins."""
        with self._tx() as db:
            now = time.time()
            db.executemany("INSERT OR IGNORE INTO digests (digest, final_name, file_id, added) VALUES (?, ?, ?, ?)",
                           [(d, shown(n), i, now) for d, n, i in rows])

    def prune(self, before: float, digests_before: float, held: Callable[[str, str], bool],
              limit: int = PRUNE_ROWS) -> tuple[int, bool]:
        """One small step of retention: forget up to ``limit`` records of files finished
        (processed, vanished) before ``before``, of failed files older than that which
        are no longer held (``held(name, final_name)``: in failed/, or still in
        underprocess/ on their way there; an operator removed them), and
        digests added before ``digests_before``. Each part is one short transaction.
        Returns how many rows went, and whether there may be more to do now.
        A file whose record is gone is a new file if it ever comes back. The newest
        record always stays, so that ids keep growing (SQLite gives a new row the
        largest id + 1): an id names one file, ever."""
        with self._tx() as db:
            finished = db.execute(
                "DELETE FROM files WHERE id IN (SELECT id FROM files WHERE status IN "
                "('processed', 'vanished') AND updated < ? LIMIT ?) AND id < (SELECT MAX(id) FROM files)",
                (before, limit)).rowcount
        removed = finished
        rows = self.db.execute(
            "SELECT id, name, final_name FROM files WHERE status = 'failed' AND updated < ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (before, self._failed_cursor, limit)).fetchall()
        self._failed_cursor = rows[-1][0] if len(rows) == limit else 0  # round-robin over the old failed rows
        gone = [(i,) for i, name, final in rows if not held(unshown(name), unshown(final))]
        if gone:
            with self._tx() as db:  # still failed and still old: an operator may have retried it meanwhile
                removed += db.executemany(
                    "DELETE FROM files WHERE id = ? AND status = 'failed' AND updated < ? "
                    "AND id < (SELECT MAX(id) FROM files)", [(i, before) for (i,) in gone]).rowcount
        with self._tx() as db:
            # A digest written by an older supervisor (no date: 0) is dated now, not pruned.
            db.execute("UPDATE digests SET added = ? WHERE added = 0", (time.time(),))
            digests = db.execute(
                "DELETE FROM digests WHERE rowid IN (SELECT rowid FROM digests WHERE added < ? LIMIT ?)",
                (digests_before, limit)).rowcount
        return removed + digests, limit in (finished, len(rows), digests)

    def add_totals(self, deltas: dict[str, int]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO totals (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                [(k, v) for k, v in deltas.items() if v])

    def totals(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT key, value FROM totals"))


class StateReader:
    """The state database for those who only read it: the dashboard's console (attempts
    of failed files, a search by name) and a worker's de-duplication look-up. The only
    SQL outside ``Store``, read-only; a query that fails (no database yet, a moment's
    lock) answers nothing rather than raising."""

    def __init__(self, path: Path, keep_open: bool = False, timeout_s: float = 5) -> None:
        self.path = path
        self.keep_open = keep_open  # a worker asks many times: one connection
        self.timeout_s = timeout_s
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if not self.path.is_file():
            return None
        try:
            # Not mode=ro: it trips over a WAL whose -shm does not exist yet.
            db = sqlite3.connect(self.path, timeout=self.timeout_s)
        except sqlite3.Error:
            return None
        if self.keep_open:
            self._db = db
        return db

    def _rows(self, sql: str, args: Iterable[Any]) -> list[tuple[Any, ...]]:
        db = self._connect()
        if db is None:
            return []
        try:
            return db.execute(sql, list(args)).fetchall()
        except sqlite3.Error:
            return []
        finally:
            if not self.keep_open:
                db.close()

    def failed_attempts(self, finals: list[str]) -> dict[str, int]:
        """Failed attempts of files in failed/, by their (exact) final names."""
        wanted = {shown(n): n for n in finals}
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self._rows(f"SELECT final_name, attempts FROM files WHERE status = 'failed' AND final_name IN ({marks})",
                          wanted)
        return {wanted[final]: attempts for final, attempts in rows}

    def search(self, text: str, limit: int) -> list[tuple[str, str, str, int, float]]:
        """(name, final name, status, attempts, updated) of the newest records whose name
        or final name (shown) contains ``text``."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return self._rows("SELECT name, final_name, status, attempts, updated FROM files "
                          "WHERE name LIKE ? ESCAPE '\\' OR final_name LIKE ? ESCAPE '\\' ORDER BY id DESC LIMIT ?",
                          (pattern, pattern, limit))

    def digest_owner(self, digest: str) -> str:
        """The final name of the file that processed this content (shown), or ""."""
        rows = self._rows("SELECT final_name FROM digests WHERE digest = ?", (digest,))
        return rows[0][0] if rows else ""


SQL_CHUNK = 400  # names or keys per "IN (...)" lookup


def _latest_rows(db: sqlite3.Connection, batch: list[Candidate]) -> dict[tuple[str, int], tuple[Any, ...]]:
    """The latest row of each (shown name, inode) of ``batch`` that has one, looked up
    a chunk of names at a time: (id, final_name, attempts, status, commit_pairs,
    replay_of)."""
    wanted = {(shown(c.name), c.ino) for c in batch}
    names = sorted({name for name, _ in wanted})
    rows: dict[tuple[str, int], tuple[Any, ...]] = {}
    for i in range(0, len(names), SQL_CHUNK):
        chunk = names[i:i + SQL_CHUNK]
        for name, ino, *row in db.execute(
                "SELECT name, ino, id, final_name, attempts, status, commit_pairs, replay_of FROM files "
                f"WHERE name IN ({','.join('?' * len(chunk))}) ORDER BY id", chunk):
            if (name, ino) in wanted:
                rows[(name, ino)] = tuple(row)  # ordered by id: the latest one stays
    return rows


class _FreshNames:
    """The final names of a batch's new files, chosen in one transaction. Most keep
    their own name: whether its derived names are reserved was looked up for all of
    them at once, and the reservations they make are written together (``write``,
    before anything else reads the table). A name in use takes ``Store._free_name``."""

    def __init__(self, db: sqlite3.Connection, names: list[str], derived: Callable[[str], list[str]]) -> None:
        self.db = db
        self.own = {name: derived(name) for name in names}  # each new file's own name's derived names
        keys = sorted({shown(k) for derived_keys in self.own.values() for k in derived_keys})
        self.reserved: set[str] = set()  # shown keys some live file holds, among the batch's own names'
        for i in range(0, len(keys), SQL_CHUNK):
            chunk = keys[i:i + SQL_CHUNK]
            self.reserved.update(k for (k,) in db.execute(
                f"SELECT key FROM reserved WHERE key IN ({','.join('?' * len(chunk))})", chunk))
        self.pending: list[tuple[str, int]] = []  # (shown key, file id), not yet written

    def own_name(self, name: str, taken: Callable[[str], bool]) -> tuple[str, list[str]] | None:
        """``name`` itself and its derived names, if it is free on disk and none of them
        is reserved; None if not (the caller then finds the first free name from it on)."""
        keys = self.own[name]
        if any(shown(k) in self.reserved for k in keys):
            return None
        try:
            used = taken(name)
        except NotADirectoryError:  # a directory of its path is a file: another name is found
            return None
        return None if used else (name, keys)

    def reserve(self, file_id: int, keys: list[str]) -> None:
        for key in keys:
            k = shown(key)
            self.reserved.add(k)
            self.pending.append((k, file_id))

    def reserved_elsewhere(self, keys: list[str]) -> None:
        """Keys a file seen before reserved in the table meanwhile."""
        self.reserved.update(shown(k) for k in keys)

    def write(self) -> None:
        if self.pending:
            self.db.executemany("INSERT OR REPLACE INTO reserved (key, file_id) VALUES (?, ?)", self.pending)
            self.pending = []


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: takes the write lock up front, so two
    supervisors choosing names never interleave."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: Any, *_: Any) -> None:
        try:
            if kind is None:
                self.db.execute("COMMIT")
                return
        except sqlite3.Error:
            self._rollback()
            raise
        self._rollback()

    def _rollback(self) -> None:
        """SQLite may have rolled back already (a full disk), or kept the transaction
        open after a failed COMMIT: either way none is left open for the next BEGIN."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")


class Journal:
    """``input.log``: one JSON object per line per transition, appended with one
    ``write`` per batch (O_APPEND, so several supervisors never interleave within a
    line), rotated by size under a lock: input.log.1 is the newest old one.

    What cannot be written now (a full disk) is kept, up to ``PENDING_MAX_BYTES``, and
    written first next time: ``write`` raises the OSError, and the caller says it. A
    journal whose end was damaged (a power cut can leave a run of NUL bytes where its
    last lines were, or half a line) gets a line end before the next entry, so that no
    later entry is glued to the damage; readers skip the damage (``journal_lines``).
    """

    PENDING_MAX_BYTES = 8 << 20

    def __init__(self, path: Path, max_bytes: int, keep: int, lock_path: Path) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.lock = FileLock(lock_path, timeout=10, thread_local=False, fallback_to_soft=False)
        self.fd = -1
        self.ino = -1
        self.pending = b""
        self.dropped = 0  # lines dropped because the disk stayed full too long
        self._open()
        self._end_damage()

    def _open(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.ino = os.fstat(self.fd).st_ino

    def _end_damage(self) -> None:
        """A journal that does not end with a line end was cut (a crash, a power cut):
        the next entry starts on a line of its own."""
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self.pending = b"\n"

    def write(self, events: list[dict[str, Any]]) -> None:
        if events:
            data = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in events)
            # Names are shown already; a stray surrogate elsewhere (a processor's message)
            # becomes a JSON escape, so the journal stays valid UTF-8.
            self.pending += data.encode("utf-8", "backslashreplace")
        if not self.pending:
            return
        self._follow_rotation()
        try:
            while self.pending:
                written = os.write(self.fd, self.pending)
                self.pending = self.pending[written:]
        except OSError:
            self._bound_pending()
            raise
        if os.fstat(self.fd).st_size >= self.max_bytes:
            self._rotate()

    def owes(self) -> bool:
        """Whether some lines wait to be written (the disk was full)."""
        return bool(self.pending)

    def _bound_pending(self) -> None:
        """Keep the newest lines that fit; the dropped ones are counted. What stays starts
        on a new line (the write that failed may have left half of one)."""
        if len(self.pending) <= self.PENDING_MAX_BYTES:
            return
        cut = self.pending.find(b"\n", len(self.pending) - self.PENDING_MAX_BYTES // 2)
        self.dropped += self.pending.count(b"\n", 0, cut + 1)
        self.pending = b"\n" + self.pending[cut + 1:]

    def _follow_rotation(self) -> None:
        """Another supervisor may have rotated the file under us: reopen by name."""
        try:
            if os.stat(self.path).st_ino != self.ino:
                self._open()
        except FileNotFoundError:
            self._open()

    def _rotate(self) -> None:
        with self.lock:
            try:
                if os.stat(self.path).st_size < self.max_bytes:
                    return  # someone rotated it already
            except FileNotFoundError:
                return
            for n in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self._open()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def journal_entry(event: str, name: str, **fields: Any) -> dict[str, Any]:
    """A journal entry: the file's name shown (workers/names.py), exact and printable."""
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return {"ts": ts, "event": event, "file": shown(name), **fields}


def tail_journal(path: Path, max_bytes: int = 1 << 20) -> list[dict[str, Any]]:
    """The entries in the last ``max_bytes`` of the current journal, oldest first."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first one is cut
    return list(journal_lines(lines))


def journal_lines(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """The entries of journal lines, skipping damage rather than entries: NUL bytes a
    power cut left before an entry (the file's size reached the disk, its data did not)
    are not part of it; a line that is no JSON object is left out."""
    for line in lines:
        text = line.decode("utf-8", "surrogateescape") if isinstance(line, bytes) else line
        text = text.lstrip("\0")
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry
