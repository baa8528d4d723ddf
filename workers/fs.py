"""Filesystem primitives the queue relies on.

``move`` never replaces an existing file: a plain ``rename(2)`` onto a name that a
producer has just used again would silently destroy that new delivery. On Linux it is
``renameat2(RENAME_NOREPLACE)`` (ext4, xfs, btrfs, tmpfs and most local filesystems
since Linux 3.15-4.0); where the filesystem refuses that flag (EINVAL, as some network
filesystems do) it falls back to ``link`` + ``unlink``, which is just as exclusive but
leaves both names for an instant (a crash then leaves the file in both folders; the
second name is the newer one). A directory cannot be hard-linked: there the fallback
checks and renames, which is exclusive only against foldermill itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

AT_FDCWD = -100
RENAME_NOREPLACE = 1


def _load_renameat2() -> object | None:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None  # not glibc >= 2.28: the fallback below


_RENAMEAT2 = _load_renameat2()
_LIBC = ctypes.CDLL(None, use_errno=True)
_NOREPLACE_REFUSED: set[int] = set()  # devices whose filesystem refused the flag


def move(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (then FileExistsError). If
    ``dst`` is ``src`` already (a link + unlink cut short by a crash), the move is
    finished: the old name goes."""
    src_b, dst_b = os.fsencode(src), os.fsencode(dst)
    try:
        _move(src_b, dst_b)
    except FileExistsError:
        if not _same_file(src_b, dst_b):
            raise
        os.unlink(src_b)


def _same_file(a: bytes, b: bytes) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


def _move(src_b: bytes, dst_b: bytes) -> None:
    # The device is looked up only once some filesystem has refused the flag: on the
    # common path a move is the one system call.
    if _RENAMEAT2 is not None and not (_NOREPLACE_REFUSED and _device_of(dst_b) in _NOREPLACE_REFUSED):
        if _RENAMEAT2(AT_FDCWD, src_b, AT_FDCWD, dst_b, RENAME_NOREPLACE) == 0:  # type: ignore[operator]
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), os.fsdecode(src_b), None, os.fsdecode(dst_b))
        _NOREPLACE_REFUSED.add(_device_of(dst_b))
    _link_then_unlink(src_b, dst_b)


def _device_of(path: bytes) -> int:
    try:
        return os.stat(os.path.dirname(path) or b".").st_dev
    except OSError:
        return -1


def _link_then_unlink(src: bytes, dst: bytes) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except PermissionError:  # a directory (EPERM): check, then rename
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst)) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path | str) -> None:
    """Flush every dirty page of the filesystem holding ``path`` (one call for a whole
    batch: group commit)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs_call = getattr(_LIBC, "syncfs", None)
        if syncfs_call is None:
            os.sync()  # no syncfs: sync everything
        elif syncfs_call(fd) != 0:
            code = ctypes.get_errno()
            if code != errno.ENOSYS:  # a writeback error (EIO, ENOSPC): nothing is durable
                raise OSError(code, os.strerror(code), os.fsdecode(path))
            os.sync()
    finally:
        os.close(fd)
