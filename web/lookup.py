"""What the console reads from the watch dir for itself (never through the supervisor):
the files in ``failed/`` with their reasons, a search by name, a file's timeline from
the journal, the head of an output. Nothing outside ``watch_dir`` is read; a symlink is
never followed (``O_NOFOLLOW``, ``lstat``; a nested name's directories are opened beneath
their folder through no symlink, ``workers/paths.py``); every answer is bounded.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from workers.actions import files_in
from workers.config import Config
from workers.names import reason_files, reason_name, shown, unshown
from workers.ops import history
from workers.paths import open_beneath, plain, stat_beneath, tree
from workers.store import StateReader, state_db_path

REASON_MAX_BYTES = 4096
PREVIEW_LINES = 200
PREVIEW_BYTES = 256 << 10
SEARCH_LIMIT = 50
TIMELINE_ENTRIES = 1000  # a name delivered many times: its newest entries


def ref(name: str) -> str:
    """A name for a URL path segment: its exact bytes, percent-encoded."""
    return quote_from_bytes(os.fsencode(name), safe="")


def read_head(folder: Path, name: str, max_bytes: int) -> bytes | None:
    """The first ``max_bytes`` of the regular file ``name`` in ``folder``, never through
    a symlink (``name`` is plain: ``workers/paths.py``); None if it is not one."""
    if plain(name):
        return None
    try:
        fd = open_beneath(folder, name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(max_bytes)


LISTING_SHARE = 10  # listing failed/ takes at most 1/10 of the time: a listing is reused for 10x its cost


class _Listing:
    """The last listing of failed/, newest failure first, shared by every request until
    it is ``LISTING_SHARE`` times as old as it took to make: a page polled by many tabs
    over a huge failed/ costs a bounded share of a core, a small one is always fresh.
    Actions never use it: they check the folder itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.folder: tuple[Path, bool] | None = None
        self.at = -1.0
        self.cost = 0.0
        self.dated: list[tuple[float, str]] = []
        self.digest = ""

    def get(self, folder: Path, recursive: bool) -> tuple[list[tuple[float, str]], str]:
        """The listing; while one request makes a new one, the others get the old one."""
        now = time.monotonic()
        key = (folder, recursive)
        fresh = key == self.folder and now - self.at < LISTING_SHARE * self.cost
        if fresh or (key == self.folder and not self.lock.acquire(blocking=False)):
            return self.dated, self.digest
        if key != self.folder:
            self.lock.acquire()
        try:
            dated, digest = _list_failed(folder, recursive)
            self.dated, self.digest = dated, digest
            self.folder, self.at, self.cost = key, now, time.monotonic() - now
            return dated, digest
        finally:
            self.lock.release()


_LISTING = _Listing()


def _list_failed(folder: Path, recursive: bool) -> tuple[list[tuple[float, str]], str]:
    """(when it failed, name) of every file in failed/ (with ``recursive``, in its
    directories too: ``a/b/x.log``), newest first, and their digest. A reason file is
    one of a file in its own directory."""
    dated = []
    for prefix, entries in tree(folder, recursive):
        reasons = reason_files(set(entries))
        for name, entry in entries.items():
            if name in reasons:
                continue
            try:
                when = entries.get(reason_name(name), entry).stat(follow_symlinks=False).st_mtime
            except OSError:
                when = 0.0  # gone meanwhile: listed last this time
            dated.append((when, prefix + name))
    dated.sort(key=lambda r: (-r[0], r[1]))
    return dated, names_digest([n for _, n in dated])


def failed_files(config: Config, offset: int, limit: int) -> dict[str, Any]:
    """One page of ``failed/``, newest failure first: name, reason, attempts, when; the
    total, and ``set``: a digest of every name in it, which "retry all" sends back so
    that a set that changed since the operator confirmed it is refused."""
    folder = config.watch.dir / "failed"
    dated, digest = _LISTING.get(folder, config.watch.recursive)
    page = dated[offset: offset + limit]
    attempts = _state(config).failed_attempts([n for _, n in page])
    items = []
    for when, name in page:
        head = read_head(folder, reason_name(name), REASON_MAX_BYTES) or b""
        items.append({"name": shown(name), "ref": ref(name), "failed_at": when,
                      "reason": head.decode("utf-8", "replace").strip(), "attempts": attempts.get(name)})
    return {"total": len(dated), "set": digest, "offset": offset, "limit": limit, "files": items}


def names_digest(names: list[str]) -> str:
    """A short digest of a set of names (exact bytes), as "retry all" confirms it."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(names):
        h.update(os.fsencode(name) + b"\0")
    return h.hexdigest()


def failed_names(config: Config) -> list[str]:
    """Every file in failed/ (exact names), as "retry all" sees them."""
    return files_in(config.watch.dir, "failed", config.watch.recursive)


def _state(config: Config) -> StateReader:
    return StateReader(state_db_path(config.watch.dir))


def search(config: Config, text: str) -> list[dict[str, Any]]:
    """Files whose name (as shown) contains ``text``: the newest records in the state
    database (an index of every file claimed within ``state_retention_days``), at most
    ``SEARCH_LIMIT``."""
    rows = _state(config).search(text, SEARCH_LIMIT) if text else []
    return [{"name": name, "ref": ref(unshown(name)), "final": final, "status": status, "attempts": attempts,
             "updated": updated} for name, final, status, attempts, updated in rows]


def timeline(config: Config, name: str) -> dict[str, Any]:
    """Every journal entry for the file ``name`` (exact: ``history``), and its outputs
    with their sizes now."""
    entries = history(config, name, exact=True)
    outputs: list[dict[str, Any]] = []
    seen = set()
    for e in entries:
        for out in e.get("output") or []:
            if out in seen:
                continue
            seen.add(out)
            outputs.append({"name": out, "ref": ref(unshown(out)), "bytes": _size(config, unshown(out))})
    last = entries[-1] if entries else {}
    left_out = max(0, len(entries) - TIMELINE_ENTRIES)
    return {"file": shown(name), "ref": ref(name), "final": last.get("final"),
            "final_ref": ref(unshown(last["final"])) if last.get("final") else None,
            "entries": entries[-TIMELINE_ENTRIES:], "left_out": left_out, "outputs": outputs[-TIMELINE_ENTRIES:]}


def _size(config: Config, output: str) -> int | None:
    """An output's size now (None: gone, or not to be looked at)."""
    try:
        return None if plain(output) else stat_beneath(config.watch.dir / "output", output).st_size
    except OSError:
        return None


def output_head(config: Config, name: str, output: str) -> str | None:
    """The first lines of one of the file's outputs (at most ``PREVIEW_LINES`` lines and
    ``PREVIEW_BYTES`` bytes), or None if it is not one of its outputs or is gone."""
    if plain(output):  # never outside output/, never a staged file
        return None
    wanted = shown(output)
    if not any(wanted in (e.get("output") or []) for e in history(config, name, exact=True)):
        return None
    head = read_head(config.watch.dir / "output", output, PREVIEW_BYTES)
    if head is None:
        return None
    lines = head.split(b"\n")[:PREVIEW_LINES]
    return b"\n".join(lines).decode("utf-8", "replace")
