"""Names as the operator's interfaces take them (the CLI, the API): a file's path
relative to its queue folder (``acme/2026-12/x.csv``; with ``[watch] recursive =
false`` a plain name), checked before anything is looked up, then looked up and walked
beneath the folder without ever following a symlink.

- ``plain``: why a name cannot be a queued file's name, if it cannot: an absolute path,
  a ``..``, ``.`` or empty component, a hidden component, a component over
  ``NAME_MAX`` bytes, a NUL byte.
- ``look``, ``stat_beneath``, ``open_beneath``: the entry itself (a symlink stays a
  symlink), through directories opened beneath the folder (``workers.fs``:
  ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``); a symlinked directory on
  the way is named in the problem (``symlinked``).
- ``tree``: a folder's files, directory by directory, for the listings (``retry
  --all``, the failed panel).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from workers.fs import lstat_beneath, open_dir_beneath
from workers.names import NAME_MAX, name_bytes, shown

DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def plain(name: str) -> str:
    """"" if ``name`` can be a queued file's name (a plain name or a relative path of
    plain names: ``a/b/x.log``), else why not."""
    if "\x00" in name:
        return "a NUL byte in the name"
    if name.startswith("/"):
        return "an absolute path: names are relative to the folder (a/b/x.log)"
    for part in name.split("/"):
        if part == "..":
            return "a '..' component reaches outside the watch dir"
        if part in ("", "."):
            return "an empty or '.' component: a name is a plain file name or a relative path (a/b/x.log)"
        if part.startswith("."):
            return f"a hidden component ({shown(part)}): hidden names are never queued files"
        if name_bytes(part) > NAME_MAX:
            return f"a component of more than {NAME_MAX} bytes"
    return ""


@contextlib.contextmanager
def opened(folder: Path, rel_dir: str = "") -> Iterator[int]:
    """A descriptor of ``folder`` (the queue folder itself may be the operator's
    symlink), or of its directory ``rel_dir`` opened beneath it through no symlink."""
    top = os.open(folder, DIR_OPEN)
    try:
        fd = open_dir_beneath(top, rel_dir) if rel_dir else top
    except BaseException:
        os.close(top)
        raise
    try:
        yield fd
    finally:
        if fd != top:
            os.close(fd)
        os.close(top)


def stat_beneath(folder: Path, name: str) -> os.stat_result:
    """``os.lstat`` of ``folder/name``, through no symlinked directory (OSError if one is
    on the way: ELOOP, ENOTDIR or EXDEV)."""
    if "/" not in name:
        return os.lstat(folder / name)
    with opened(folder) as fd:
        return lstat_beneath(fd, name)


def open_beneath(folder: Path, name: str, flags: int) -> int:
    """``os.open`` of ``folder/name`` with ``flags | O_NOFOLLOW``: no component of
    ``name``, the file included, is followed if it is a symlink."""
    head, _, base = name.rpartition("/")
    with opened(folder, head) as fd:
        return os.open(base, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)


def look(folder: Path, name: str) -> tuple[bool, str]:
    """Whether ``folder`` holds ``name`` (the entry itself, a symlink too), and the
    problem that kept it from being looked up, if one did (a symlinked directory)."""
    try:
        stat_beneath(folder, name)
        return True, ""
    except OSError as exc:
        link = symlinked(folder, name)
        if link:
            return False, f"{folder.name}/{shown(link)} is a symlink: a symlink is never followed"
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            return False, ""
        return False, f"cannot look up {folder.name}/{shown(name)}: {exc.strerror or exc}"


def symlinked(folder: Path, name: str) -> str:
    """The first directory of ``name`` in ``folder`` that is a symlink (``a/b``), or ""
    (each directory before it was a real one when it was looked at)."""
    parts = name.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        rel = "/".join(parts[:depth])
        try:
            mode = os.lstat(folder / rel).st_mode
        except OSError:
            return ""
        if stat.S_ISLNK(mode):
            return rel
        if not stat.S_ISDIR(mode):
            return ""
    return ""


def tree(folder: Path, recursive: bool) -> Iterator[tuple[str, dict[str, os.DirEntry[str]]]]:
    """Each directory of ``folder``: its path with a trailing "/" ("" for ``folder``
    itself) and its entries by name, hidden ones left out. With ``recursive`` its
    directories are walked (each opened beneath ``folder``: never a hidden or a
    symlinked one), not listed; without, everything in ``folder`` is an entry (a
    directory put in failed/ as a whole too). An entry can be ``stat``ed until the next
    directory comes."""
    try:
        top = os.open(folder, DIR_OPEN)
    except OSError:
        return
    try:
        stack = [""]
        while stack:
            rel = stack.pop()
            try:
                fd = open_dir_beneath(top, rel)
            except OSError:
                continue  # gone meanwhile, or swapped for a symlink: not entered
            try:
                with os.scandir(fd) as it:
                    entries = {e.name: e for e in it if not e.name.startswith(".")}
                prefix = f"{rel}/" if rel else ""
                if recursive:
                    dirs = [n for n, e in entries.items() if e.is_dir(follow_symlinks=False)]
                    stack.extend(prefix + n for n in dirs)
                    for n in dirs:
                        del entries[n]
                yield prefix, entries
            finally:
                os.close(fd)
    finally:
        os.close(top)
