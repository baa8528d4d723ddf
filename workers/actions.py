"""The operator's actions on files: one rule each, for the CLI, the dashboard's page and
the API alike (the dashboard validates with ``check``, the supervisor then ``perform``s;
the CLI does both).

- **retry** ``failed/NAME`` -> ``unprocessed/NAME``, with fresh attempts (its reason goes);
- **discard** ``failed/NAME`` -> ``discarded/NAME`` with its reason beside it: never
  deleted; a name ``discarded/`` already holds gets a collision name (``app-1.log``);
- **replay** ``processed/NAME`` -> ``unprocessed/NAME``: processed again with the
  current pipeline; its new outputs get new names by the collision rule, the earlier
  outputs stay, and the journal records ``replayed`` with both names when it is claimed.

A name is a plain name in its folder or, with ``[watch] recursive = true``, a path
relative to it: ``failed/a/b/x.log`` -> ``unprocessed/a/b/x.log``, the directories made
as needed (a discard's collision name is of the last component: ``a/b/x-1.log``). Never
absolute, no ``..``, ``.``, empty or hidden component (``workers/paths.py``), not a
reason file. Nothing is followed if it is a symlink: moves are renames of the entry,
and a nested name's directories are opened beneath their folder through no symlink (a
symlinked directory is refused, and said to be one).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from workers.fs import move, move_beneath, unlink_beneath
from workers.names import REASON_SUFFIX, collision_name, reason_files, reason_name, shown
from workers.paths import look, opened, plain, stat_beneath, tree
from workers.queue import FolderQueue

ACTIONS = ("retry", "discard", "replay")
SOURCE = {"retry": "failed", "discard": "failed", "replay": "processed"}
TARGET = {"retry": "unprocessed", "discard": "discarded", "replay": "unprocessed"}
DISCARDED = "discarded"


class Replays(Protocol):
    """What a replay needs of the state database (``workers/store.py`` ``Store``)."""

    def replaying(self, name: str, ino: int) -> None: ...

    def unreplaying(self, name: str, ino: int) -> None: ...


@dataclass(frozen=True)
class Done:
    """What one action did: the name it moved and the name it got, or the problem."""

    action: str
    name: str
    target: str = ""
    problem: str = ""


def check(root: Path, action: str, name: str, recursive: bool = False) -> str:
    """"" if ``action`` can be done to ``name`` in the watch dir ``root`` now, else the
    problem (nothing is moved: the dashboard's process asks this before it forwards).
    ``recursive`` is ``[watch] recursive``: without it a name is a plain name."""
    problem = plain(name)
    if problem:
        return problem
    if "/" in name and not recursive:
        return "a path, but [watch] recursive is false: names are plain file names"
    source, target = root / SOURCE[action], root / TARGET[action]
    held, problem = look(source, name)
    if problem or not held:
        return problem or f"no such file in {SOURCE[action]}/"
    if action != "replay" and is_reason_file(source, name):
        return "that is a reason file, not a failed file"
    if action == "discard" and os.path.lexists(target) and not os.path.isdir(target):
        return f"{DISCARDED}/ is not a directory"
    taken, problem = look(target, name)
    if problem:
        return problem
    if taken and TARGET[action] == "unprocessed":
        return "unprocessed/ already holds that name"
    return ""


def perform(q: FolderQueue, action: str, name: str, store: Replays | None = None) -> Done:
    """Do it (the checks again first: the folder may have changed since). A replay marks
    the file's record in ``store`` first, so that its claim knows it for one."""
    problem = check(q.root, action, name, q.recursive)
    if problem:
        return Done(action, name, problem=problem)
    ino = -1
    try:
        if action == "discard":
            target = _discard(q.root, name)
        else:
            target = name
            if action == "replay" and store is not None:
                ino = stat_beneath(q.processed, name).st_ino
                store.replaying(name, ino)
            _move(q.root, SOURCE[action], name, "unprocessed", name)
    except FileExistsError:
        return _undone(store, action, name, ino, f"{TARGET[action]}/ already holds that name")
    except FileNotFoundError:
        return _undone(store, action, name, ino, f"no such file in {SOURCE[action]}/")
    except OSError as exc:  # another filesystem, a permission, a full disk: said, and the daemon goes on
        return _undone(store, action, name, ino, f"cannot move it to {TARGET[action]}/: {exc.strerror or exc}")
    if action == "retry":
        with contextlib.suppress(OSError):  # a stale reason left behind goes when the file is claimed
            _unlink(q.failed, reason_name(name))
    return Done(action, name, target)


def journal_fields(done: Done) -> tuple[str, dict[str, str]]:
    """The journal's event for an action done, and its fields (names shown)."""
    if done.action == "discard":
        return "discarded", {"to": f"{DISCARDED}/{shown(done.target)}"}
    return f"{done.action}-requested", {}


def _undone(store: Replays | None, action: str, name: str, ino: int, problem: str) -> Done:
    if store is not None and ino >= 0:
        store.unreplaying(name, ino)
    return Done(action, name, problem=problem)


def _discard(root: Path, name: str) -> str:
    """failed/NAME -> discarded/<free name>, then its reason beside it."""
    folder = root / DISCARDED
    folder.mkdir(exist_ok=True)
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise OSError(errno.ENOTDIR, f"{DISCARDED}/ is not a directory (a symlink is not followed)")
    for n in range(10_000):
        target = name if n == 0 else collision_name(name, n)
        if look(folder, target)[0] or look(folder, reason_name(target))[0]:
            continue
        try:
            _move(root, "failed", name, DISCARDED, target)
        except FileExistsError:
            continue
        with contextlib.suppress(OSError):  # no reason file (put in failed/ by hand), or it went meanwhile
            _move(root, "failed", reason_name(name), DISCARDED, reason_name(target))
        return target
    raise FileExistsError(f"no free name in {DISCARDED}/ for {name}")


def _move(root: Path, src: str, name: str, dst: str, target: str) -> None:
    """``src/name`` -> ``dst/target`` (folders of the watch dir ``root``), replacing
    nothing; a nested name through directories opened beneath their folders, never
    through a symlink, its directories made in ``dst`` as needed."""
    if "/" not in name and "/" not in target:
        move(root / src / name, root / dst / target)
        return
    with opened(root / src) as src_fd, opened(root / dst) as dst_fd:
        move_beneath(src_fd, name, dst_fd, target)


def _unlink(folder: Path, name: str) -> None:
    if "/" not in name:
        (folder / name).unlink(missing_ok=True)
        return
    with opened(folder) as fd:
        unlink_beneath(fd, name)


def files_in(root: Path, folder: str, recursive: bool = False) -> list[str]:
    """Every file an action may take from ``folder`` (exact names, sorted): not hidden,
    and in failed/ not a reason file (of a file in its own directory); with
    ``recursive`` the files of its directories too, by their paths (``a/b/x.log``; no
    hidden or symlinked directory is entered). What "retry --all" and "retry all" act on."""
    names = []
    for prefix, entries in tree(root / folder, recursive):
        reasons = reason_files(set(entries)) if folder == "failed" else set()
        names += [prefix + n for n in entries if n not in reasons]
    return sorted(names)


def is_reason_file(folder: Path, name: str) -> bool:
    """``name`` in ``failed/`` is the reason file of another file there, in its own
    directory (without listing the directory, unless the name was shortened to fit)."""
    if not name.endswith(REASON_SUFFIX):
        return False
    if look(folder, name[: -len(REASON_SUFFIX)])[0]:
        return True
    head, _, base = name.rpartition("/")
    return "~" in base and base in reason_files(_listing(folder, head))


def _listing(folder: Path, rel_dir: str) -> list[str]:
    try:
        with opened(folder, rel_dir) as fd:
            return os.listdir(fd)
    except OSError:
        return []
