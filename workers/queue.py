"""The folder queue: which files are ready, claiming them with filelock, moving them on.

No processes and no multiprocessing here: the supervisor calls these functions from its
loop. The protocol (docs/design/guarantees.md, "How claiming works"):

- A file's lock is one of ``LOCK_COUNT`` files in ``watch_dir/.locks/``, chosen by a
  stable hash of its name (filelock never deletes Unix lock files, so one lock per
  name would grow without bound). Locks are ``flock`` locks: the kernel drops them
  when their holder dies, which is the "is the owner alive?" signal recovery needs.
- Claim: take the lock without blocking, check the file is still in ``unprocessed/``,
  ``rename`` it into ``underprocess/`` (of two claimers only one rename succeeds), and
  hold the lock until the file has left ``underprocess/``.
- Recovery: a file in ``underprocess/`` that is not ours and whose lock we can take
  has a dead owner (a live owner would hold the lock), so it goes back; if a new
  delivery of the same name is waiting in ``unprocessed/`` meanwhile, it is *adopted*
  instead: claimed where it is, so neither delivery replaces the other.
- No move replaces an existing file (``workers.fs.move``).

With ``[watch] recursive = true`` every regular file under ``unprocessed/`` (to
``max_depth`` directories down; hidden and symlinked directories are never entered) is
work, named by its path relative to its folder: ``a/b/x.csv`` moves to
``underprocess/a/b/x.csv``, then ``processed/a/b/x.csv``; directories are made as a
move needs them, and a nested name is moved through descriptors opened beneath the
folder, never through a symlink (``workers.fs.move_beneath``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import resource
import stat
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from workers.errors import FoldermillError, SystemFailure
from workers.fs import (
    lstat_beneath,
    make_dirs_beneath,
    move,
    move_beneath,
    open_dir_beneath,
    unlink_beneath,
)
from workers.globs import matcher
from workers.names import (
    NAME_MAX,
    base_name,
    collision_name,
    name_bytes,
    output_name,
    reason_files,
    reason_name,
    shown,
)

LOCK_COUNT = 1024
KEEP_FDS_LIMIT = 8 * LOCK_COUNT  # open files allowed from which lock descriptors stay open
STATE_DIR = ".foldermill"  # in the watch dir: the state database, the supervisors' announcements
REASON_TEMP = ".fm-reason."  # a reason file being written: .fm-reason.<pid>.<ns>.tmp in failed/
FOLDERS = ("unprocessed", "underprocess", "processed", "failed", "output")
PLACEHOLDER = ".gitkeep"
log = logging.getLogger("foldermill")


class PutBack(Enum):
    """What became of a claimed file given back (``FolderQueue.put_back``)."""

    MOVED = "moved"  # back in unprocessed/
    TAKEN = "taken"  # a new delivery of its name waits there: it stays in underprocess/ (recovery adopts it)
    GONE = "gone"  # it was not in underprocess/ any more
    STUCK = "stuck"  # it could not be moved: it stays in underprocess/, for recovery to take


class QueueSetupError(FoldermillError):
    """The watch dir cannot be used: not writable, or folders on different filesystems."""


@dataclass(frozen=True)
class Candidate:
    """A file seen in ``unprocessed/`` (lstat data: symlinks are never followed)."""

    name: str
    size: int
    mtime_ns: int
    ino: int
    mode: int

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)


class FolderQueue:
    def __init__(self, root: Path, include: tuple[str, ...], exclude: tuple[str, ...], ready_marker: str,
                 recursive: bool = False, max_depth: int = 16, dir_marker: str = "") -> None:
        self.root = root
        self.unprocessed = root / "unprocessed"
        self.underprocess = root / "underprocess"
        self.processed = root / "processed"
        self.failed = root / "failed"
        self.output = root / "output"
        self.locks_dir = root / ".locks"
        self.state_dir = root / STATE_DIR
        self.include = include
        self.exclude = exclude
        self.ready_marker = ready_marker
        # Plain strings for the per-file paths: pathlib's joins cost more than the
        # renames themselves at thousands of files a second.
        self._unp = str(self.unprocessed) + "/"
        self._under = str(self.underprocess) + "/"
        self._proc = str(self.processed) + "/"
        self._fail = str(self.failed) + "/"
        self._out = str(self.output) + "/"
        self.locks = LockTable(self.locks_dir)
        self._wanted = matcher(include)
        self._unwanted = matcher(exclude)
        self.recursive = recursive
        self.max_depth = max_depth if recursive else 0
        # PATH_MAX (4096, with its NUL) less the longest folder prefix and a file's name
        self._dir_room = 4095 - name_bytes(f"{root}/underprocess/") - 1 - NAME_MAX
        self.dir_marker = dir_marker if recursive else ""
        self.not_entered: set[str] = set()  # directories the walk leaves out (said once)
        self._fds: dict[str, int] = {}  # folder -> descriptor, for nested names (``_fd``)
        self.emptied: dict[str, float] = {}  # "folder/dir" a move left maybe empty -> when (monotonic)
        self.moved: dict[str, int] = dict.fromkeys(FOLDERS, 0)  # our moves since the last count, per folder
        self._held: dict[str, int] = {}  # name in underprocess/ -> lock index we hold for it
        self.stranded = False  # a claim met a dead owner's file: recover soon

    # -- set-up ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Create missing folders; refuse a watch dir we cannot write or that spans
        filesystems (rename would not be atomic)."""
        try:
            for folder in (*(self.root / f for f in FOLDERS), self.locks_dir, self.state_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueSetupError(f"cannot create the queue folders in {self.root}: {exc.strerror}") from None
        devices = {}
        for name in FOLDERS:
            folder = self.root / name
            if not os.access(folder, os.W_OK | os.X_OK):
                raise QueueSetupError(f"{folder} is not writable by this user")
            devices[name] = folder.stat().st_dev
        try:
            self.locks.release(0) if self.locks.try_acquire(0) else None
            self.locks.close_kept()  # before the manager is forked: it must not share a lock's description
        except OSError as exc:
            raise QueueSetupError(f"{self.locks_dir} does not support flock() locks ({exc.strerror}): claims "
                                  "and crash recovery need them (a network filesystem without lock support?)") from None
        if len(set(devices.values())) > 1:
            raise QueueSetupError(
                f"the queue folders of {self.root} are on different filesystems ({devices}); "
                "rename between them would not be atomic: keep them on one filesystem")

    # -- what is waiting ---------------------------------------------------------------

    def is_candidate_name(self, name: str) -> bool:
        """Matches include, not exclude, and is not a ready marker or placeholder."""
        base = base_name(name)
        if base.startswith(".") or self._is_marker(base) or (base == self.dir_marker and "/" in name):
            return False  # hidden names never count as work, whatever include says
        return self._wanted(name) and not self._unwanted(name)

    def enters(self, rel_dir: str) -> bool:
        """Whether the walk goes into this directory of unprocessed/ (``a/b``): with
        recursive, not hidden, not deeper than ``max_depth``, and short enough that any
        file in it has a path within ``PATH_MAX`` in every queue folder (a deeper one
        would make every call on its files fail). (Symlinks: never, the caller's lstat
        decides.)"""
        return (self.recursive and rel_dir.count("/") < self.max_depth
                and not base_name(rel_dir).startswith(".") and name_bytes(rel_dir) <= self._dir_room)

    def _left_out(self, rel_dir: str, why: str = "") -> None:
        """A directory the walk does not enter (too deep, too long a path, not readable):
        said once."""
        if rel_dir in self.not_entered or len(self.not_entered) >= 1000:
            return
        self.not_entered.add(rel_dir)
        why = why or (f"deeper than max_depth = {self.max_depth}" if rel_dir.count("/") >= self.max_depth
                      else "its files' paths would be longer than the system allows (PATH_MAX)")
        log.warning("unprocessed/%s is not entered: %s; its files stay where they are", shown(rel_dir), why)

    def _fd(self, folder: str) -> int:
        """A descriptor of a queue folder, kept: nested names are resolved beneath it."""
        fd = self._fds.get(folder)
        if fd is None:
            fd = self._fds[folder] = os.open(self.root / folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return fd

    def _move(self, src: str, dst: str, name: str, target: str) -> None:
        """``src/name`` -> ``dst/target`` (folders by name), replacing nothing; a nested
        name through descriptors, its directories made in ``dst`` as needed."""
        if "/" not in name and "/" not in target:
            move(f"{self.root}/{src}/{name}", f"{self.root}/{dst}/{target}")
            return
        move_beneath(self._fd(src), name, self._fd(dst), target)
        self.left(src, name)

    def left(self, folder: str, name: str) -> None:
        """``name`` left ``folder``: its directory may be empty now (``remove_empty``)."""
        if "/" in name:
            self.emptied[f"{folder}/{name.rpartition('/')[0]}"] = time.monotonic()

    def remove_empty(self, now: float, after_s: float) -> int:
        """Directories a move left maybe empty (``emptied``), removed once nothing was
        added to or taken from them for ``after_s`` (their mtime says; a producer still
        filling one keeps it new), and so up the tree; never a queue folder itself. A
        directory of unprocessed/ that holds only its ``dir_marker`` goes with it.
        Returns how many went."""
        removed = 0
        for key, when in list(self.emptied.items()):
            if now - when < after_s:
                continue
            del self.emptied[key]
            folder, _, rel = key.partition("/")
            below = False  # a directory below was just removed: that change of its mtime is ours
            while rel:
                if not self._remove_if_idle(folder, rel, after_s, now, below):
                    break
                removed += 1
                below = True
                rel = rel.rpartition("/")[0]
        return removed

    def _remove_if_idle(self, folder: str, rel: str, after_s: float, now: float, below: bool) -> bool:
        """``folder/rel`` removed if it is an empty directory nothing touched for
        ``after_s`` (``below``: the last change was our removal of a directory in it).
        Through its parent opened beneath the folder: a symlink is never followed."""
        parent, _, base = rel.rpartition("/")
        try:
            fd = open_dir_beneath(self._fd(folder), parent)
        except OSError:
            return False  # gone, or a symlink now
        try:
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                return False
            idle = time.time() - st.st_mtime
            if idle < after_s and not below:  # touched since: looked at again when it may be idle
                self.emptied[f"{folder}/{rel}"] = now - idle
                return False
            if folder == "unprocessed" and self.dir_marker:
                inside = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                try:
                    if os.listdir(inside) == [self.dir_marker]:  # delivered, and all of it taken
                        os.unlink(self.dir_marker, dir_fd=inside)
                finally:
                    os.close(inside)
            os.rmdir(base, dir_fd=fd)
            return True
        except OSError:
            return False  # not empty, or gone: left as it is
        finally:
            os.close(fd)

    def make_parent(self, folder: str, name: str, durable: bool = False) -> None:
        """The directories of ``name`` in ``folder``, made if missing (durable: on disk)."""
        if "/" in name:
            os.close(make_dirs_beneath(self._fd(folder), name.rpartition("/")[0], durable))

    def _is_marker(self, name: str) -> bool:
        if not self.ready_marker:
            return False
        prefix, _, suffix = self.ready_marker.partition("{name}")
        return name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix)

    def marked_by(self, name: str) -> str | None:
        """The file that a ready marker of this name marks (None: not a marker)."""
        head, slash, base = name.rpartition("/")
        if not self._is_marker(base):
            return None
        prefix, _, suffix = self.ready_marker.partition("{name}")
        return head + slash + base[len(prefix):len(base) - len(suffix)]

    def scan(self) -> list[Candidate]:
        """Every candidate in ``unprocessed/``, oldest mtime first (the CLI's view; the
        daemon streams ``waiting()`` instead, to keep its memory bounded)."""
        found = [Candidate(name, size, mtime_ns, ino, mode) for mtime_ns, name, size, ino, mode in self.waiting()]
        found.sort(key=lambda c: (c.mtime_ns, c.name))
        return found

    def waiting(self, under: str = "", entering: Callable[[str], None] | None = None
                ) -> Iterator[tuple[int, str, int, int, int]]:
        """(mtime_ns, name, size, inode, mode) of each candidate in ``unprocessed/`` (or
        in its directory ``under``, and below), in directory order, one at a time (lstat:
        symlinks are never followed). With recursive, directories are walked (a
        directory's files wait for its ``dir_marker``, if one is set), not returned;
        ``entering(rel)`` is called just before each is listed (its file events)."""
        if not self.recursive:
            yield from self._entries(self._unp, "", False)
            return
        # Each directory is opened beneath unprocessed/ through no symlink (a producer may
        # swap one in at any moment): a listing never strays outside the watch dir.
        stack = [(under, bool(under) and self.marked(under))]
        while stack:
            rel, marked = stack.pop()  # marked: it or a directory above holds the marker
            if entering is not None and rel:
                entering(rel)
            try:
                fd = open_dir_beneath(self._fd("unprocessed"), rel)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone, or swapped for a file, since its parent was listed
            except PermissionError:
                self._left_out(rel, "this user may not read it")
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.EXDEV):
                    raise
                continue  # swapped for a symlink since its parent was listed: never entered
            try:
                prefix = rel + "/" if rel else ""
                marked = marked or not self.dir_marker or not rel or _lexists_at(fd, self.dir_marker)
                items = list(self._entries(fd, prefix, True))  # one directory's entries at a time
            finally:
                os.close(fd)
            for item in items:
                if stat.S_ISDIR(item[4]):
                    if self.enters(item[1]):
                        stack.append((item[1], marked and bool(rel)))
                    else:
                        self._left_out(item[1])
                elif marked:
                    yield item

    def _entries(self, path: str | int, prefix: str, dirs: bool) -> Iterator[tuple[int, str, int, int, int]]:
        try:
            entries = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        with entries:
            for entry in entries:
                name = prefix + entry.name
                if dirs and entry.is_dir(follow_symlinks=False):
                    if not entry.name.startswith("."):
                        yield 0, name, 0, entry.inode(), stat.S_IFDIR
                    continue
                if not self.is_candidate_name(name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield st.st_mtime_ns, name, st.st_size, st.st_ino, st.st_mode

    def marked(self, rel_dir: str) -> bool:
        """With ``dir_marker``: whether the directory ``rel_dir`` of unprocessed/, or one
        above it, holds the marker (its files are delivered). True without a marker."""
        if not self.dir_marker or not rel_dir:
            return True
        while rel_dir:
            if self._marked_dir(rel_dir):
                return True
            rel_dir = rel_dir.rpartition("/")[0]
        return False

    def _marked_dir(self, rel_dir: str) -> bool:
        return os.path.lexists(f"{self._unp}{rel_dir}/{self.dir_marker}")

    def look(self, name: str) -> Candidate | None:
        """``name`` in ``unprocessed/`` as it is now (lstat), or None if it is not there
        (or cannot be reached: a directory on its way swapped for a symlink loop, made
        unreadable; its claim would refuse it anyway)."""
        try:
            st = os.lstat(self._unp + name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
                return None
            raise
        return Candidate(name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)

    def holds_failed(self, name: str, final_name: str) -> bool:
        """Whether a failed file is still here: in ``failed/`` under its final name, or in
        ``underprocess/`` still on its way there."""
        return os.path.lexists(self._fail + final_name) or os.path.lexists(self._under + name)

    def has_marker(self, name: str) -> bool:
        return os.path.lexists(self._unp + self.marker_name(name))

    def marker_name(self, name: str) -> str:
        """The ready marker of ``name``, in its directory (``a/{name}.ready``)."""
        if not self.ready_marker:
            return ""
        head, _, base = name.rpartition("/")
        marker = self.ready_marker.replace("{name}", base)
        return f"{head}/{marker}" if head else marker

    # -- claiming ----------------------------------------------------------------------

    def lock_index(self, name: str) -> int:
        return zlib.crc32(name.encode("utf-8", "surrogateescape")) % LOCK_COUNT

    def _try_lock(self, index: int) -> bool:
        return self.locks.try_acquire(index)

    def _unlock(self, index: int) -> None:
        self.locks.release(index)

    def claim(self, name: str) -> bool:
        """Move ``name`` from unprocessed/ to underprocess/ under its lock; False if
        another claimer has it (or it is gone)."""
        index = self.lock_index(name)
        if not self._try_lock(index):
            return False
        try:
            self._move("unprocessed", "underprocess", name, name)
        except (FileNotFoundError, NotADirectoryError):
            self._unlock(index)
            return False
        except FileExistsError:  # a dead owner's file of that name: recovery adopts it first
            self._unlock(index)
            self.stranded = True
            return False
        except OSError:
            self._unlock(index)
            raise
        self._held[name] = index
        self.moved["underprocess"] += 1
        marker = self.marker_name(name)
        if marker:
            with contextlib.suppress(OSError):
                unlink_beneath(self._fd("unprocessed"), marker)
        return True

    # -- our moves, for the census ----------------------------------------------------------------

    def moves(self) -> dict[str, int]:
        """Our moves per folder since the folders were last counted (``counted``)."""
        return dict(self.moved)

    def counted(self, folders: tuple[str, ...]) -> None:
        """``folders`` were just counted: their moves start again from zero."""
        for folder in folders:
            self.moved[folder] = 0

    def moved_by_hand(self, source: str) -> None:
        """An operator's action took a file out of ``source`` (the census follows it)."""
        self.moved[source] -= 1

    # -- locks of files that are not ours -----------------------------------------------------------

    @contextlib.contextmanager
    def lock_if_free(self, name: str) -> Iterator[bool]:
        """Hold ``name``'s lock for the block if nobody holds it (yields True; a dead
        owner's file, then), else yield False at once (a live owner's)."""
        index = self.lock_index(name)
        free = self.locks.try_acquire(index)
        try:
            yield free
        finally:
            if free:
                self.locks.release(index)

    def holds(self, name: str) -> bool:
        return name in self._held

    def release(self, name: str) -> None:
        index = self._held.pop(name, None)
        if index is not None:
            self._unlock(index)

    # -- moving on -----------------------------------------------------------------------

    def finish(self, name: str, final_name: str, folder: str, reason: str = "", durable: bool = False) -> str:
        """Move a claimed file to processed/ or failed/ under ``final_name`` (with its
        reason beside it in failed/, on disk first when ``durable``), then release its
        lock. Returns the name it got: ``final_name``, or a collision name if something
        took that name meanwhile (nothing is ever replaced). FileNotFoundError: it left
        underprocess/ (by hand). Any other error leaves it claimed (lock held) where it
        is, a reason that cannot be written (a full disk) too."""
        target_dir = self._proc if folder == "processed" else self._fail
        if "/" in final_name and reason:
            self.make_parent("failed", final_name)
        # The reason first: a file in failed/ always has its reason beside it. Its name is
        # reserved for this file: one there already is this file's, from a try whose move
        # failed (a full disk), and is replaced.
        wrote = bool(reason) and write_reason(Path(self._fail + reason_name(final_name)), reason, durable,
                                              replace=True)
        for n in range(1000):
            target = final_name if n == 0 else collision_name(final_name, n)
            try:
                self._move("underprocess", folder, name, target)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if os.path.lexists(self._under + name):  # it is the target folder that is gone
                    raise SystemFailure(f"{target_dir} is gone (was the watch dir changed by hand?)") from None
                self.release(name)
                raise
            self.release(name)
            self.moved["underprocess"] -= 1
            self.moved[folder] += 1
            if reason and n:
                if wrote:
                    os.unlink(self._fail + reason_name(final_name))
                with contextlib.suppress(OSError):  # moved already: the reason is in the journal and the state
                    write_reason(Path(self._fail + reason_name(target)), reason, durable)
            return target
        raise FileExistsError(errno.EEXIST, "no free name", target_dir + final_name)

    def put_back(self, name: str) -> PutBack:
        """Return a claimed file to unprocessed/ (a stop) and release its lock."""
        try:
            self._move("underprocess", "unprocessed", name, name)
            outcome = PutBack.MOVED
            self.moved["underprocess"] -= 1
        except FileExistsError:
            outcome = PutBack.TAKEN
        except FileNotFoundError:
            outcome = PutBack.GONE
        except OSError:
            outcome = PutBack.STUCK
        self.release(name)
        return outcome

    def recover(self, mine: set[str]) -> tuple[list[str], list[str]]:
        """Files in underprocess/ whose owner is dead: back to unprocessed/, or, when a
        new delivery of the same name waits there, adopted (claimed in place: its lock
        stays held). Returns (moved back, adopted)."""
        self.stranded = False
        recovered: list[str] = []
        adopted: list[str] = []
        names = self.claimed_names()
        for name in names:
            if name in mine or name == PLACEHOLDER or name in self._held:
                continue
            index = self.lock_index(name)
            if not self._try_lock(index):
                continue  # a live owner holds it
            keep = False
            try:
                self._move("underprocess", "unprocessed", name, name)
                recovered.append(name)
                self.moved["underprocess"] -= 1
            except FileExistsError:
                self._held[name] = index
                adopted.append(name)
                keep = True
            except OSError:
                pass  # gone (its owner finished it meanwhile), or not movable now: the next pass
            finally:
                if not keep:
                    self._unlock(index)
        return recovered, adopted

    def claimed_names(self) -> list[str]:
        """Every name in underprocess/: with recursive, the files of its directories
        (made by claims; a symlink is a name, never entered)."""
        try:
            names = os.listdir(self.underprocess)
        except FileNotFoundError:
            return []
        if not self.recursive:
            return names
        found, stack = [], names
        while stack:
            name = stack.pop()
            try:
                st = os.lstat(self._under + name)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                found.append(name)
                continue
            with contextlib.suppress(OSError):
                stack.extend(f"{name}/{n}" for n in os.listdir(self._under + name))
        return found

    def stat_adopted(self, names: list[str]) -> list[Candidate]:
        """Adopted files as Candidates; one that vanished meanwhile is let go."""
        found = []
        for name in names:
            try:
                found.append(self.stat_claimed(name))
            except FileNotFoundError:
                self.release(name)
        return found

    def sweep_debris(self, staged_kept: Callable[[str], Collection[str] | None]) -> int:
        """What a crash or a power cut left behind that nothing will use: staged outputs
        (``output/.fm-<token>.*.tmp``) whose token ``staged_kept`` does not claim (it
        names the ones to keep, None for all), and the temporary files of processes that
        are gone (reason files being written, probes, pass fences; with recursive, a
        reason is written beside its file, in a directory of failed/). At start-up,
        before any claim. Returns how many went."""
        staged: dict[str, list[str]] = {}
        removed = 0
        for folder in (self.output, self.failed, self.unprocessed, self.underprocess, self.state_dir):
            for name in _hidden_names(folder, DEBRIS_PREFIXES):
                if folder == self.output and name.endswith(".tmp") and not name.startswith(PROBE_PREFIX):
                    staged.setdefault(name[len(".fm-"):].split(".", 1)[0], []).append(name)
                elif not pid_alive(_debris_pid(name)):
                    removed += _unlink(folder / name)
        if self.recursive:
            for path in _nested_names(self.failed, REASON_TEMP):
                if not pid_alive(_debris_pid(path.name)):
                    removed += _unlink(path)
        for token, names in staged.items():
            kept = staged_kept(token)
            if kept is not None:
                removed += sum(_unlink(self.output / n) for n in names if n not in kept)
        return removed

    def check_folders(self) -> None:
        """The folders must still be there (a watch dir removed or unmounted)."""
        for folder in (self.unprocessed, self.underprocess, self.processed, self.failed, self.output):
            if not folder.is_dir():
                raise SystemFailure(f"{folder} is gone (was the watch dir removed or unmounted?)")
        for name, fd in list(self._fds.items()):  # a folder made anew: its new descriptor
            if not os.path.samestat(os.fstat(fd), os.stat(self.root / name)):
                os.close(self._fds.pop(name))

    def close_kept(self) -> None:
        """Close the claim locks' descriptors kept between claims (no descriptors left)."""
        self.locks.close_kept()

    def stat_claimed(self, name: str) -> Candidate:
        """A claimed file as a Candidate (lstat: a symlink stays a symlink)."""
        st = os.lstat(self._under + name) if "/" not in name else lstat_beneath(self._fd("underprocess"), name)
        return Candidate(name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)

    def reject(self, candidate: Candidate, final_name: str, reason: str) -> bool:
        """Move something that is not a regular file (a symlink, a directory, a FIFO)
        straight to failed/ without opening it. Claims it first like any file."""
        if not self.claim(candidate.name):
            return False
        self.finish(candidate.name, final_name, "failed", reason)
        return True

    def taken(self, name: str, suffixes: Sequence[str]) -> bool:
        """Whether ``name``, or a name derived from it (its outputs, its reason file),
        is already used in processed/, failed/ or output/."""
        lexists = _used
        if lexists(self._proc + name) or lexists(self._fail + name) or lexists(self._fail + reason_name(name)):
            return True
        # ``name`` itself in output/ too: the main output drops a compression suffix.
        return any(lexists(self._out + n) for n in dict.fromkeys((name, *(output_name(name, s)
                                                                           for s in ("", *suffixes)))))

    def forget_reason(self, final_name: str) -> None:
        """The reason file of a failed file that was moved back by hand (not a failed
        file of its own: that would have its own reason beside it)."""
        reason = reason_name(final_name)
        if not os.path.lexists(self._fail + final_name) and not os.path.lexists(self._fail + reason_name(reason)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._fail + reason)

    def counts(self, folders: tuple[str, ...] = ("unprocessed", "underprocess", "processed", "failed")
               ) -> dict[str, int]:
        """Files per folder, listed now, not counting placeholders, reasons, markers or
        temp files (a listing of each folder: the daemon keeps its own count, see
        ``workers/daemon/census.py``)."""
        result = {}
        for folder in folders:
            if self.recursive:
                result[folder] = self._count_tree(folder)
                continue
            if folder in ("underprocess", "processed"):  # streamed: a million names are never held
                result[folder] = _count_entries(self.root / folder)
                continue
            try:
                names = os.listdir(self.root / folder)
            except FileNotFoundError:
                names = []
            if folder == "failed":
                reasons = reason_files(names)
                names = [n for n in names if n not in reasons]
            elif folder == "unprocessed":
                names = [n for n in names if self.is_candidate_name(n)]
            result[folder] = sum(1 for n in names if n != PLACEHOLDER)
        return result

    def _count_tree(self, folder: str) -> int:
        """Files in ``folder`` and its directories, as ``counts`` counts them, one
        directory listed at a time."""
        if folder == "unprocessed":
            return sum(1 for _ in self.waiting())
        total, stack = 0, [str(self.root / folder)]
        while stack:
            path = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            except OSError:
                continue
            names = [n for n, is_dir in entries if not is_dir and n != PLACEHOLDER]
            stack.extend(f"{path}/{n}" for n, is_dir in entries if is_dir and not n.startswith("."))
            if folder == "failed":
                reasons = reason_files(names)
                names = [n for n in names if n not in reasons and not n.startswith(".")]
            total += len(names)
        return total


class LockTable:
    """The claim locks: ``LOCK_COUNT`` files locked with ``flock``, reentrant per index.

    The same files and the same kernel locks as filelock's Unix ``FileLock`` on these
    paths, so a ``FileLock`` held on one excludes a claim and the other way round
    (``tests/test_queue.py`` shows it). It is leaner on the hot path: FileLock 4.2
    resolves the path, makes sure the folder exists and tries ``O_CREAT|O_EXCL`` before
    each acquire (~100 us here, up to ms on slow storage); this flocks a descriptor kept
    open from the slot's last claim (an ``fstat`` makes sure its file was not removed
    meanwhile), or opens the file, creating it only the first time. Descriptors are
    kept only where the limit on open files leaves ample room (at least
    ``KEEP_FDS_LIMIT``; the shipped systemd unit sets 65536): otherwise each is closed
    on release, and the number of open files stays as small as the claims held.
    """

    def __init__(self, folder: Path) -> None:
        self.prefix = str(folder) + "/"
        self.held: dict[int, tuple[int, int]] = {}  # index -> (descriptor, depth)
        self.kept: dict[int, int] = {}  # index -> descriptor, open and unlocked: the slot's next claim opens nothing
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.keeps = soft == resource.RLIM_INFINITY or soft >= KEEP_FDS_LIMIT

    def try_acquire(self, index: int) -> bool:
        held = self.held.get(index)
        if held is not None:  # ours already (another file with the same hash)
            self.held[index] = (held[0], held[1] + 1)
            return True
        fd = self.kept.pop(index, None)
        if fd is not None and os.fstat(fd).st_nlink == 0:  # its file was removed (by hand): the new one is the lock
            os.close(fd)
            fd = None
        if fd is None:
            path = f"{self.prefix}{index:04d}.lock"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._put_away(index, fd)
            return False
        except OSError:
            os.close(fd)
            raise
        self.held[index] = (fd, 1)
        return True

    def release(self, index: int) -> None:
        fd, depth = self.held[index]
        if depth > 1:
            self.held[index] = (fd, depth - 1)
            return
        del self.held[index]
        fcntl.flock(fd, fcntl.LOCK_UN)
        self._put_away(index, fd)

    def close_kept(self) -> None:
        """Close the descriptors kept between claims (before a fork; on no descriptors left)."""
        kept, self.kept = self.kept, {}
        for fd in kept.values():
            os.close(fd)

    def _put_away(self, index: int, fd: int) -> None:
        if self.keeps:
            self.kept[index] = fd
        else:
            os.close(fd)


def open_claimed(path: Path) -> int:
    """Open a claimed file for reading without following a symlink or blocking on a
    FIFO; refuse anything but a regular file. Returns a descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PermissionError(errno.ELOOP, "is a symlink (never followed)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "is not a regular file")
    os.set_blocking(fd, True)
    return fd


PROBE_PREFIX = ".fm-probe-"  # workers/daemon/faults.py: .fm-probe-<pid>
FENCE_PREFIX = ".fm-pass-"  # workers/daemon/events.py: .fm-pass-<pid>-<hex>-<seq>
DEBRIS_PREFIXES = (".fm-",)


def _hidden_names(folder: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Names in ``folder`` with one of ``prefixes``, read one entry at a time (output/
    may hold millions of names: only the few hidden ones are kept)."""
    try:
        with os.scandir(folder) as entries:
            return [e.name for e in entries if e.name.startswith(prefixes)]
    except FileNotFoundError:
        return []


def _nested_names(folder: Path, prefix: str) -> list[Path]:
    """Files named ``prefix...`` in the directories below ``folder`` (not in ``folder``
    itself), one directory read at a time; hidden and symlinked directories are never
    entered."""
    found: list[Path] = []
    stack = [str(folder)]
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if not entry.name.startswith("."):
                            stack.append(entry.path)
                    elif entry.name.startswith(prefix) and path != str(folder):
                        found.append(Path(entry.path))
        except OSError:
            continue
    return found


def _debris_pid(name: str) -> int:
    """The pid a temporary file's name carries (0: none, it is not ours to judge)."""
    for prefix in (PROBE_PREFIX, FENCE_PREFIX, REASON_TEMP):
        if name.startswith(prefix):
            digits = re.match(r"\d+", name[len(prefix):])
            return int(digits.group()) if digits else 0
    return 0


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a name we made: left alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return True


def _unlink(path: Path) -> int:
    try:
        os.unlink(path)
        return 1
    except FileNotFoundError:
        return 0


def _lexists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


def _count_entries(folder: Path) -> int:
    """Entries of ``folder`` but its placeholder, counted one at a time."""
    try:
        with os.scandir(folder) as entries:
            return sum(1 for e in entries if e.name != PLACEHOLDER)
    except FileNotFoundError:
        return 0


def _used(path: str) -> bool:
    """Whether a name is in use; a name the filesystem refuses (too long) is never free;
    one whose directory is a file or a symlink (NotADirectoryError) cannot be used at
    all: the caller chooses another directory (``workers.outputs.unique_name``)."""
    try:
        os.lstat(path)
        return True
    except (FileNotFoundError):
        return False
    except NotADirectoryError:
        raise
    except OSError:
        return True


def write_reason(path: Path, reason: str, durable: bool = False, replace: bool = False) -> bool:
    """Write ``path`` whole (a temporary file, synced when ``durable``, then a move that
    replaces nothing, or, with ``replace``, that replaces an earlier reason of the same
    file). An OSError leaves nothing behind, and is raised."""
    tmp = path.with_name(f"{REASON_TEMP}{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(reason.rstrip("\n") + "\n")
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            move(tmp, path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise

