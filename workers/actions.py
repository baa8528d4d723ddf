"""The operator's actions on files: one rule each, for the CLI, the dashboard's page and
the API alike (the dashboard validates with ``check``, the supervisor then ``perform``s;
the CLI does both).

- **retry** ``failed/NAME`` -> ``unprocessed/NAME``, with fresh attempts (its reason goes);
- **discard** ``failed/NAME`` -> ``discarded/NAME`` with its reason beside it: never
  deleted; a name ``discarded/`` already holds gets a collision name (``app-1.log``);
- **replay** ``processed/NAME`` -> ``unprocessed/NAME``: processed again with the
  current pipeline; its new outputs get new names by the collision rule, the earlier
  outputs stay, and the journal records ``replayed`` with both names when it is claimed.

A name is a plain name in its folder (no ``/``, not hidden, not ``.``/``..``, not a
reason file), never followed if it is a symlink (moves are renames of the entry).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from workers.fs import move
from workers.names import REASON_SUFFIX, collision_name, reason_files, reason_name, shown
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


def plain(name: str) -> str:
    """"" if ``name`` can be a queued file's name, else why not."""
    if name in (".", "..", "") or "/" in name or "\x00" in name or name.startswith("."):
        return "not a plain file name"
    return ""


def check(root: Path, action: str, name: str) -> str:
    """"" if ``action`` can be done to ``name`` in the watch dir ``root`` now, else the
    problem (nothing is moved: the dashboard's process asks this before it forwards)."""
    problem = plain(name)
    if problem:
        return problem
    source = root / SOURCE[action]
    if not os.path.lexists(source / name):
        return f"no such file in {SOURCE[action]}/"
    if action != "replay" and is_reason_file(source, name):
        return "that is a reason file, not a failed file"
    if TARGET[action] == "unprocessed" and os.path.lexists(root / "unprocessed" / name):
        return "unprocessed/ already holds that name"
    if action == "discard" and os.path.lexists(root / DISCARDED) and not os.path.isdir(root / DISCARDED):
        return f"{DISCARDED}/ is not a directory"
    return ""


def perform(q: FolderQueue, action: str, name: str, store: Replays | None = None) -> Done:
    """Do it (the checks again first: the folder may have changed since). A replay marks
    the file's record in ``store`` first, so that its claim knows it for one."""
    problem = check(q.root, action, name)
    if problem:
        return Done(action, name, problem=problem)
    source = q.root / SOURCE[action]
    ino = -1
    try:
        if action == "discard":
            target = _discard(q, name)
        else:
            target = name
            if action == "replay" and store is not None:
                ino = os.lstat(source / name).st_ino
                store.replaying(name, ino)
            move(source / name, q.unprocessed / name)
    except FileExistsError:
        return _undone(store, action, name, ino, f"{TARGET[action]}/ already holds that name")
    except FileNotFoundError:
        return _undone(store, action, name, ino, f"no such file in {SOURCE[action]}/")
    except OSError as exc:  # another filesystem, a permission, a full disk: said, and the daemon goes on
        return _undone(store, action, name, ino, f"cannot move it to {TARGET[action]}/: {exc.strerror or exc}")
    if action == "retry":
        with contextlib.suppress(OSError):  # a stale reason left behind goes when the file is claimed
            (q.failed / reason_name(name)).unlink(missing_ok=True)
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


def _discard(q: FolderQueue, name: str) -> str:
    """failed/NAME -> discarded/<free name>, then its reason beside it."""
    folder = q.root / DISCARDED
    folder.mkdir(exist_ok=True)
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise OSError(errno.ENOTDIR, f"{DISCARDED}/ is not a directory (a symlink is not followed)")
    for n in range(10_000):
        target = name if n == 0 else collision_name(name, n)
        if os.path.lexists(folder / target) or os.path.lexists(folder / reason_name(target)):
            continue
        try:
            move(q.failed / name, folder / target)
        except FileExistsError:
            continue
        with contextlib.suppress(OSError):  # no reason file (put in failed/ by hand), or it went meanwhile
            move(q.failed / reason_name(name), folder / reason_name(target))
        return target
    raise FileExistsError(f"no free name in {DISCARDED}/ for {name}")


def files_in(root: Path, folder: str) -> list[str]:
    """Every file an action may take from ``folder`` (exact names, sorted): not hidden,
    and in failed/ not a reason file. What "retry --all" and "retry all" act on."""
    present = _listing(root / folder)
    reasons = reason_files(present) if folder == "failed" else set()
    return sorted(n for n in present if not n.startswith(".") and n not in reasons)


def is_reason_file(folder: Path, name: str) -> bool:
    """``name`` in ``failed/`` is the reason file of another file there (without listing
    the folder, unless the name was shortened to fit)."""
    if not name.endswith(REASON_SUFFIX):
        return False
    if os.path.lexists(folder / name[: -len(REASON_SUFFIX)]):
        return True
    return "~" in name and name in reason_files(_listing(folder))


def _listing(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []
