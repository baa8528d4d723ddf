"""Faults of the machine, not of a file: a full disk (blocks or inodes), a quota, no
file descriptors left, no memory, a read-only filesystem, a busy database.

Such a fault says nothing about the file that met it, so it must never cost that file
an attempt: the daemon pauses intake, says so, and resumes by itself once the fault has
cleared (``workers/daemon/faults.py``). This module only recognises them, for any
process (the supervisor, a worker, a Celery node): no processes, no state.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass

DISK_FULL = "disk_full"
QUOTA = "quota"
DESCRIPTORS = "descriptors"
MEMORY = "memory"
READ_ONLY = "read_only"
DATABASE_BUSY = "database_busy"
KINDS = (DISK_FULL, QUOTA, DESCRIPTORS, MEMORY, READ_ONLY, DATABASE_BUSY)  # metric labels: a fixed set

ERRNO_KINDS = {errno.ENOSPC: DISK_FULL, errno.EDQUOT: QUOTA, errno.EMFILE: DESCRIPTORS, errno.ENFILE: DESCRIPTORS,
               errno.ENOMEM: MEMORY, errno.EROFS: READ_ONLY}
WHAT = {DISK_FULL: "the disk is full", QUOTA: "a disk quota is exceeded", DESCRIPTORS: "no file descriptors are left",
        MEMORY: "the machine is out of memory", READ_ONLY: "the filesystem is read-only",
        DATABASE_BUSY: "the state database is busy (locked by another process)"}

# SQLite's primary result codes (the low byte of sqlite_errorcode).
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = \
    5, 6, 7, 8, 10, 13, 14
SQLITE_KINDS = {SQLITE_BUSY: DATABASE_BUSY, SQLITE_LOCKED: DATABASE_BUSY, SQLITE_NOMEM: MEMORY,
                SQLITE_FULL: DISK_FULL}
LOW_SPACE_BYTES = 1 << 20  # below this, a database's "disk I/O error" is taken for a full disk


@dataclass(frozen=True)
class Fault:
    """What went wrong (one of ``KINDS``), where, and the system's own words."""

    kind: str
    path: str
    detail: str

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{WHAT.get(self.kind, self.kind)}{where}: {self.detail}"


def fault_of(exc: BaseException, path: str = "") -> Fault | None:
    """The machine fault behind ``exc``, or None if it is not one. ``path``: where it
    happened, when the exception does not say (a database's file)."""
    if isinstance(exc, OSError) and exc.errno in ERRNO_KINDS:
        where = os.fsdecode(exc.filename) if exc.filename is not None else path
        return Fault(ERRNO_KINDS[exc.errno], where, exc.strerror or str(exc))
    if isinstance(exc, sqlite3.OperationalError):
        return _database_fault(exc, path)
    return None


def fault_kind(exc: BaseException) -> str:
    """``fault_of(exc).kind``, or "" (for what crosses a process boundary as a string)."""
    fault = fault_of(exc)
    return fault.kind if fault is not None else ""


def _database_fault(exc: sqlite3.OperationalError, path: str) -> Fault | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # a message without a code: SQLite's own words then
        text = str(exc).lower()
        kind = DISK_FULL if "disk is full" in text else DATABASE_BUSY if ("locked" in text or "busy" in text) else ""
        return Fault(kind, path, str(exc)) if kind else None
    primary = code & 0xFF
    if primary in SQLITE_KINDS:
        return Fault(SQLITE_KINDS[primary], path, str(exc))
    if primary == SQLITE_CANTOPEN and not _descriptors_left():
        return Fault(DESCRIPTORS, path, str(exc))
    if primary in (SQLITE_IOERR, SQLITE_READONLY, SQLITE_CANTOPEN) and path:
        # SQLite names neither a remount read-only nor some writes that found no space:
        # the filesystem itself tells. Anything else is a real I/O error (exit 3).
        state = filesystem_state(os.path.dirname(path) or ".")
        if state:
            return Fault(state, path, str(exc))
    return None


def _descriptors_left() -> bool:
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def filesystem_state(folder: str, low_bytes: int = LOW_SPACE_BYTES, low_inodes: int = 0) -> str:
    """"" if ``folder``'s filesystem can take writes, else the fault kind it shows:
    read-only, or fewer than ``low_bytes`` free (or ``low_inodes`` free inodes)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return ""
    if st.f_flag & os.ST_RDONLY:
        return READ_ONLY
    if st.f_bavail * st.f_frsize < low_bytes:
        return DISK_FULL
    if st.f_files and st.f_favail < low_inodes:  # f_files 0: no inode limit (btrfs, some FUSE)
        return DISK_FULL
    return ""
