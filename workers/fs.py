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

import contextlib
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


# -- paths beneath a folder -------------------------------------------------------------
#
# With ``[watch] recursive = true`` a file's name is its path relative to its queue
# folder (``acme/2026-12/x.csv``). A producer may swap a directory of ``unprocessed/``
# for a symlink at any moment, so a nested name is never resolved through the path:
# its parent directory is opened beneath the queue folder with ``openat2(2)`` and
# ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` (no component may be a symlink, nothing may
# resolve outside), and the file is renamed by ``renameat2`` relative to that
# descriptor. Where ``openat2`` is missing (Linux < 5.6) each component is opened in
# turn with ``O_NOFOLLOW``: as safe, one call per level. A flat name needs none of this.

SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "armv7l": 437, "ppc64le": 437, "s390x": 437, "riscv64": 437}
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x02, 0x04, 0x08
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_SYSCALL = getattr(_LIBC, "syscall", None)
_OPENAT2_NR = SYS_OPENAT2.get(os.uname().machine)
_openat2_works = _SYSCALL is not None and _OPENAT2_NR is not None


def open_dir_beneath(dir_fd: int, rel: str) -> int:
    """A descriptor of the directory ``rel`` beneath ``dir_fd``; no component of it may
    be a symlink (ELOOP or ENOTDIR), nor lead outside (EXDEV). ``rel`` "" is ``dir_fd``
    itself (a new descriptor)."""
    global _openat2_works
    path = os.fsencode(rel or ".")
    if _openat2_works:
        how = _OpenHow(DIR_FLAGS, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        fd = _SYSCALL(_OPENAT2_NR, dir_fd, path, ctypes.byref(how), ctypes.sizeof(how))  # type: ignore[misc]
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter refused the call
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        _openat2_works = False
    return _walk_beneath(dir_fd, path, make=False)


def make_dirs_beneath(dir_fd: int, rel: str, durable: bool = False) -> int:
    """The directory ``rel`` beneath ``dir_fd``, its missing components created (mode
    0o777 less the umask), as a descriptor; with ``durable`` each new entry is on disk
    (its parent fsynced) before it is used. A component that exists and is not a
    directory (a file, a symlink) is an error: nothing is ever replaced or followed."""
    return _walk_beneath(dir_fd, os.fsencode(rel), make=True, durable=durable)


def _walk_beneath(dir_fd: int, path: bytes, make: bool, durable: bool = False) -> int:
    """The directory ``path`` beneath ``dir_fd``, one component at a time, each opened
    with ``O_NOFOLLOW`` (a symlink is an error, never followed; ``..`` is EXDEV); with
    ``make``, a missing component is made first (``durable``: its parent fsynced)."""
    fd = os.open(".", DIR_FLAGS, dir_fd=dir_fd)
    try:
        for part in path.split(b"/"):
            if part in (b"", b"."):
                continue
            if part == b"..":
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), os.fsdecode(path))
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not make:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile by another process
                    os.mkdir(part, dir_fd=fd)
                    if durable:
                        os.fsync(fd)
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def move_beneath(src_fd: int, src: str, dst_fd: int, dst: str, make_dirs: bool = True,
                 durable: bool = False) -> None:
    """``move`` of ``src`` beneath ``src_fd`` to ``dst`` beneath ``dst_fd``, each parent
    opened without following a symlink (``open_dir_beneath``); ``dst``'s missing parent
    directories are created first when ``make_dirs`` (durable ones with ``durable``)."""
    src_dir, _, src_base = src.rpartition("/")
    dst_dir, _, dst_base = dst.rpartition("/")
    s = open_dir_beneath(src_fd, src_dir) if src_dir else src_fd
    try:
        try:
            d = open_dir_beneath(dst_fd, dst_dir) if dst_dir else dst_fd
        except FileNotFoundError:
            if not make_dirs or not _lexists_at(s, src_base):
                raise
            d = make_dirs_beneath(dst_fd, dst_dir, durable)
        try:
            move_at(s, src_base, d, dst_base)
        finally:
            if d != dst_fd:
                os.close(d)
    finally:
        if s != src_fd:
            os.close(s)


def move_at(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """``move`` between two directories given by descriptor (names without ``/``)."""
    src_b, dst_b = os.fsencode(src), os.fsencode(dst)
    if _RENAMEAT2 is not None and os.fstat(dst_fd).st_dev not in _NOREPLACE_REFUSED:
        if _RENAMEAT2(src_fd, src_b, dst_fd, dst_b, RENAME_NOREPLACE) == 0:  # type: ignore[operator]
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST and _same_at(src_fd, src_b, dst_fd, dst_b):
            os.unlink(src_b, dir_fd=src_fd)  # a link + unlink cut short: the move is finished
            return
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), src, None, dst)
        _NOREPLACE_REFUSED.add(os.fstat(dst_fd).st_dev)
    try:
        os.link(src_b, dst_b, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    except FileExistsError:
        if not _same_at(src_fd, src_b, dst_fd, dst_b):
            raise
    except PermissionError:  # a directory: check, then rename
        if _lexists_at(dst_fd, dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src_b, dst_b, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    os.unlink(src_b, dir_fd=src_fd)


def _same_at(a_fd: int, a: bytes, b_fd: int, b: bytes) -> bool:
    try:
        return os.path.samestat(os.stat(a, dir_fd=a_fd, follow_symlinks=False),
                                os.stat(b, dir_fd=b_fd, follow_symlinks=False))
    except OSError:
        return False


def _lexists_at(dir_fd: int, name: str | bytes) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def lstat_beneath(dir_fd: int, rel: str) -> os.stat_result:
    """``os.lstat`` of ``rel`` beneath ``dir_fd``, through no symlinked directory."""
    parent, _, base = rel.rpartition("/")
    if not parent:
        return os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
    fd = open_dir_beneath(dir_fd, parent)
    try:
        return os.stat(base, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def unlink_beneath(dir_fd: int, rel: str) -> None:
    """``os.unlink`` of ``rel`` beneath ``dir_fd``, through no symlinked directory."""
    parent, _, base = rel.rpartition("/")
    fd = open_dir_beneath(dir_fd, parent) if parent else dir_fd
    try:
        os.unlink(base, dir_fd=fd)
    finally:
        if fd != dir_fd:
            os.close(fd)
