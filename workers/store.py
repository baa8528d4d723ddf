"""State that outlives a restart: SQLite (WAL) for attempts, names and totals, and the
human-readable journal ``input.log``.

A file is identified by (name, inode, size, mtime): renames between queue folders keep
all four, so a file keeps its attempts and its final name across retries and restarts,
while a new file that reuses a name is a new file. SQLite in WAL mode is safe for
several supervisors on one host; on a network filesystem its locking is not, and
several supervisors there must each have their own watch dir (README, "Operations").
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from workers.outputs import unique_name
from workers.queue import Candidate

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    final_name TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,           -- claimed | waiting | processed | failed
    owner TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    reason TEXT,
    updated REAL NOT NULL,
    UNIQUE (name, ino, size, mtime_ns)
);
CREATE INDEX IF NOT EXISTS files_status ON files (status);
CREATE INDEX IF NOT EXISTS files_final ON files (final_name);
CREATE TABLE IF NOT EXISTS totals (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS digests (digest TEXT PRIMARY KEY, final_name TEXT NOT NULL, file_id INTEGER NOT NULL);
"""

LIVE = ("claimed", "waiting")


@dataclass(frozen=True)
class FileRecord:
    id: int
    name: str
    final_name: str
    attempts: int  # failed attempts so far


class Store:
    """One connection per supervisor process; every method is one short transaction."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    def waiting_until(self, now: float) -> dict[tuple[str, int], float]:
        """Files backing off before their next attempt: (name, inode) -> not_before."""
        rows = self.db.execute(
            "SELECT name, ino, not_before FROM files WHERE status = 'waiting' AND not_before > ?", (now,))
        return {(name, ino): nb for name, ino, nb in rows}

    def claim(self, claims: Iterable[Candidate], owner: str, taken: Callable[[str], bool]) -> list[FileRecord]:
        """Record files just claimed; choose each new file's final name once, for good."""
        now = time.time()
        records = []
        with self._tx() as db:
            for c in claims:
                row = db.execute(
                    "SELECT id, final_name, attempts, status FROM files "
                    "WHERE name = ? AND ino = ? AND size = ? AND mtime_ns = ?",
                    (c.name, c.ino, c.size, c.mtime_ns)).fetchone()
                if row is None:
                    final = self._free_name(db, c.name, taken)
                    cur = db.execute(
                        "INSERT INTO files (name, ino, size, mtime_ns, final_name, status, owner, updated) "
                        "VALUES (?, ?, ?, ?, ?, 'claimed', ?, ?)",
                        (c.name, c.ino, c.size, c.mtime_ns, final, owner, now))
                    records.append(FileRecord(cur.lastrowid, c.name, final, 0))
                    continue
                file_id, final, attempts, status = row
                if status in ("processed", "failed"):
                    # Moved back by an operator: fresh attempts; its old name may be in use.
                    attempts = 0
                    if taken(final):
                        final = self._free_name(db, c.name, taken)
                db.execute(
                    "UPDATE files SET status = 'claimed', owner = ?, attempts = ?, final_name = ?, updated = ? "
                    "WHERE id = ?", (owner, attempts, final, now, file_id))
                records.append(FileRecord(file_id, c.name, final, attempts))
        return records

    @staticmethod
    def _free_name(db: sqlite3.Connection, name: str, taken: Callable[[str], bool]) -> str:
        def used(candidate: str) -> bool:
            if taken(candidate):
                return True
            row = db.execute("SELECT 1 FROM files WHERE final_name = ? AND status IN ('claimed', 'waiting')",
                             (candidate,)).fetchone()
            return row is not None

        return unique_name(name, used)

    def attempt_failed(self, file_id: int, reason: str, max_attempts: int, backoff_s: float,
                       permanent: bool = False) -> tuple[int, bool]:
        """Count a failed attempt. Returns (attempts, whether the file is now failed)."""
        now = time.time()
        with self._tx() as db:
            (attempts,) = db.execute("SELECT attempts FROM files WHERE id = ?", (file_id,)).fetchone()
            attempts += 1
            final = permanent or attempts >= max_attempts
            delay = backoff_s * (2 ** (attempts - 1))
            db.execute(
                "UPDATE files SET attempts = ?, status = ?, reason = ?, not_before = ?, updated = ? WHERE id = ?",
                (attempts, "failed" if final else "waiting", reason, now + delay, now, file_id))
        return attempts, final

    def requeued(self, file_ids: Iterable[int]) -> None:
        """Files put back without a failed attempt (a stop, a batch-mate's crash)."""
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE files SET status = 'waiting', not_before = 0, updated = ? WHERE id = ?",
                           [(now, i) for i in file_ids])

    def finished(self, done: Iterable[tuple[int, str]]) -> None:
        """Mark files processed or failed: (id, status)."""
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE files SET status = ?, updated = ? WHERE id = ?", [(s, now, i) for i, s in done])

    def recovered(self, names: Iterable[str]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE files SET status = 'waiting', not_before = 0, updated = ? "
                           "WHERE name = ? AND status = 'claimed'", [(now, n) for n in names])

    def digest_owner(self, digest: str) -> str:
        row = self.db.execute("SELECT final_name FROM digests WHERE digest = ?", (digest,)).fetchone()
        return row[0] if row else ""

    def add_digests(self, rows: list[tuple[str, str, int]]) -> None:
        """(digest, final name, file id) of files just processed; the first one wins."""
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO digests (digest, final_name, file_id) VALUES (?, ?, ?)", rows)

    def add_totals(self, deltas: dict[str, int]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO totals (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                [(k, v) for k, v in deltas.items() if v])

    def totals(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT key, value FROM totals"))


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: takes the write lock up front, so two
    supervisors choosing names never interleave."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


class Journal:
    """``input.log``: one JSON object per line per transition, appended with one
    ``write`` per batch (O_APPEND, so several supervisors never interleave within a
    line), rotated by size under a lock: input.log.1 is the newest old one."""

    def __init__(self, path: Path, max_bytes: int, keep: int, lock_path: Path) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.lock = FileLock(lock_path, timeout=10, thread_local=False, fallback_to_soft=False)
        self.fd = -1
        self.ino = -1
        self._open()

    def _open(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.ino = os.fstat(self.fd).st_ino

    def write(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        data = "".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in events)
        self._follow_rotation()
        os.write(self.fd, data.encode("utf-8", "surrogateescape"))
        if os.fstat(self.fd).st_size >= self.max_bytes:
            self._rotate()

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
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line.decode("utf-8", "surrogateescape")))
        except ValueError:
            continue
    return entries
