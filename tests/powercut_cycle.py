"""Power-cut cycles against the real daemon (DESIGN.md, invariants 1, 2 and 8).

One cycle: a fresh ext4 on a loop device (``tests/powercut.py``) holds the watch dir;
the real ``supervisor.py`` (2 workers, ``durable = true``, the ``behave`` processor of
``tests/daemon.py``: upper-case, or raise on a ``FAILIF`` line) runs on it; a producer
*process* (so that it can be frozen with the daemon) drops files the safe way and
acknowledges each delivery in a file outside the cut filesystem only once it is
durable (written beside under a hidden name, fsynced, renamed into ``unprocessed/``,
``unprocessed/`` fsynced; on a tree, see below). The test polls the folders in a
tight loop and cuts the power the moment the phase it aims at is seen; the copy of
the disk is mounted in place, a fresh supervisor runs on it until every file is
finished, is stopped with SIGTERM, and the invariants are checked, every violation
collected with its evidence.

Phases aimed at (``PHASES``):
- ``claim``: a file just claimed (in ``underprocess/``, no output yet): its state row
  is new.
- ``worker_sync``: a large input's (>= 4 MiB) staged output ``output/.fm-*.tmp``
  growing (``growing``) or complete (``complete``): the worker fsyncs those itself.
- ``group_commit``: ``output/<name>`` exists while the input is still in
  ``underprocess/``: outputs renamed into place, the input not moved yet. Variant
  ``large``: a large file's, with a producer that pauses after each large file, so
  that its claim, its worker's fsync and its commit have no other file's ``syncfs``
  between them (the path where the daemon itself syncs least).
- ``moves``: a file has reached ``processed/`` or ``failed/``. Variant ``reason``: a
  failing file's reason being written (``failed/[dir/].fm-reason.*.tmp``), before the
  file moves beside it.

Trees (``Aim.tree``): the daemon runs with ``[watch] recursive = true`` and
``empty_dirs_after`` short, and the producer delivers every burst into a directory it
makes anew, one or two levels deep (``b0007/`` or ``b0007/s1/``), so directories are
made (in ``unprocessed/`` by the producer; in ``underprocess/``, ``processed/``,
``failed/`` and ``output/`` by the daemon's moves and commits) and removed (the ones
the queue emptied) all the time around the cut. A file's name is then its path relative
to its queue folder, and every listing and check walks the folders (never through a
symlink, never into a hidden directory). The producer acknowledges a file only once
the directory it went into, each directory it made and their parents are fsynced.

What a cycle checks: after recovery, every invariant (``check_invariants``, on relative
paths on a tree); and at the cut itself, on the frozen processes' view against the
copy (``check_at_cut``), that every directory of ``output/`` holding an output was on
the disk (with ``durable = true`` a new directory is durable before any output is
renamed into it) and that every file in ``processed/`` had its output on the disk (the
directories renamed into are synced before the input moves). After recovery alone a
left-out directory fsync would never show: ext4 commits metadata in order, so the next
sync of anything brings the directory along (``tests/powercut.py``, "Limits"). Shown
by breaking the daemon on purpose: without the sync of the directories renamed into
(``_rename_marked``), ``output-not-durable`` in 3 of 4 cycles aimed at ``moves`` (flat
and tree); with the new directories' own fsyncs (``make_dirs_beneath``) left out too,
``dir-not-durable`` in 3 of 4 aimed at ``group_commit`` on a tree. The new
directories' fsyncs alone left out showed in none of 8 (the sync of the directory
renamed into follows within microseconds and commits them with it).

Whether the cut *landed* in the phase is judged on the frozen processes' view (after
the copy is taken): for ``moves``, a file in ``processed/``/``failed/`` whose state row
is still live (claimed, waiting, committing), i.e. between the moves and the
transaction that records them, or a move done in memory that the disk does not hold
yet (the file is still in ``underprocess/`` on the copy: the move was not synced).
Every report also says what the processes had done that the disk did not hold.

Run as a module, it is the producer: ``python -m tests.powercut_cycle produce WATCH
ACKS SEED FAILING QUIET TREE``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon import BEHAVE, ROOT, Daemon, alive, pace, wait_for
from tests.powercut import Cut, LoopFs, process_tree, syncfs

__all__ = ["PHASES", "Aim", "CycleReport", "Violation", "check_invariants", "classify", "content_for",
           "run_cycle", "table", "table_row"]

PHASES = ("claim", "worker_sync", "group_commit", "moves")
LIVE = ("claimed", "waiting", "committing")
SELF_SYNC_BYTES = 4 << 20  # workers/worker.py: inputs this big get their outputs fsynced by the worker
LINE = "{name} {i:07d} the quick brown fox jumps over the lazy dog\n"
LARGE_MIN_BYTES = SELF_SYNC_BYTES + (512 << 10)
STAGED_BIG_BYTES = 1 << 20  # a staged file this big is a large input's (small outputs are < 1 KiB)
DIRS = r"(?P<dirs>(?:[^./][^/]*/)*)"  # a tree's directories (``b0007/s1/``), none for a flat name
NAME = re.compile(rf"^{DIRS}(?P<kind>small|large|fail)-(?P<index>\d{{5}})\.log$")
SECOND_NAME = re.compile(rf"^{DIRS}(?P<stem>(?:small|large|fail)-\d{{5}})-(?P<n>\d+)\.log(?P<suffix>[^/]*)$")
MAX_FILES, MAX_LARGE = 2000, 8  # the producer's limits: the disk never fills (8 x 2 x 4.5 MiB)
DELIVERY_TRIES = 20  # a tree producer makes a directory the daemon keeps removing again at most this often
QUIET_S = (0.5, 1.0)  # the quiet producer's pauses before a large file and after it (it takes ~0.3 s)
WARMUP = 12  # an aimed phase is armed after 0..WARMUP files are finished
AIM_TIMEOUT_S = 8.0  # the phase not seen by then: the cut happens anyway (not landed)
RANDOM_CUT_S = (0.2, 3.0)  # the random mode's cut times, after the producer starts
FINISH_TIMEOUT_S = 45.0  # the restarted daemon finishes every file within this
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

CONFIG = """\
[watch]
dir = "{watch}"
poll_interval = 0.2
settle = 0.3
{tree}
[web]
port = 0

[workers]
count = 2
max_attempts = 2
retry_backoff = 0.1
shutdown_grace = 10
durable = true

[pipeline.nodes.start]
processor = "behave:Behave"
flags = "{flags}"
"""
# A tree: directories the queue emptied go after 0.2 s (the daemon looks once a second),
# so they are also being removed around the cut.
TREE_CONFIG = """\
recursive = true
empty_dirs_after = 0.2
"""


# -- what the producer writes -----------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def content_for(name: str) -> bytes:
    """The content of a file the producer drops under ``name``; a pure function of the
    name, so the checks recompute it. ``large-*``: >= 4.5 MiB; ``fail-*``: a few lines
    with ``FAILIF always`` (the ``behave`` processor raises while the flag is set)."""
    match = NAME.match(name)
    if match is None:
        raise ValueError(f"not a name the producer makes: {name!r}")
    kind = match["kind"]
    if kind == "large":
        count = -(-LARGE_MIN_BYTES // len(LINE.format(name=name, i=0)))
        return "".join(LINE.format(name=name, i=i) for i in range(count)).encode()
    lines = [LINE.format(name=name, i=i) for i in range(random.Random(name).randint(3, 8))]
    if kind == "fail":
        lines.insert(1, "FAILIF always\n")
    return "".join(lines).encode()


def kinds(failing: bool) -> list[str]:
    """The producer's schedule: the 2nd file and every 9th after it large (at most
    MAX_LARGE), with ``failing`` every 5th a file that fails, the rest small."""
    out = []
    large = 0
    for i in range(MAX_FILES):
        if i % 9 == 1 and large < MAX_LARGE:
            out.append("large")
            large += 1
        elif failing and i % 5 == 3:
            out.append("fail")
        else:
            out.append("small")
    return out


def produce(watch: Path, acks: Path, seed: int, failing: bool, quiet: bool, tree: bool = False) -> None:
    """Drop files into ``watch/unprocessed`` forever (until killed or MAX_FILES), in
    bursts; append ``name<TAB>monotonic`` to ``acks`` once a delivery is durable.
    ``quiet``: a pause before a large file (every earlier file is finished) and after
    it (QUIET_S), so that it is claimed, processed and committed with no other file's
    group commit (``syncfs``) between. ``tree``: each burst goes into a directory made
    anew (``Bursts``), a quiet producer's large file into one of its own."""
    rng = random.Random(seed)
    unprocessed = watch / "unprocessed"
    ack_fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    dir_fd = os.open(unprocessed, os.O_RDONLY | os.O_DIRECTORY)
    bursts = Bursts(rng)
    if tree:
        bursts.new()
    burst = 0
    for i, kind in enumerate(kinds(failing)):
        name = f"{kind}-{i:05d}.log"
        if quiet and kind == "large":
            pace(QUIET_S[0])
        if tree:
            if quiet and kind == "large":
                bursts.new()
            name = bursts.place(name)
            deliver_into(unprocessed, name)
        else:
            deliver_flat(watch, dir_fd, name)
        os.write(ack_fd, f"{name}\t{time.monotonic():.6f}\n".encode())
        burst -= 1
        if quiet and kind == "large":
            pace(QUIET_S[1])
            burst = 0
        if burst <= 0:  # a burst of 1-6 files, then a pause: batches of several files
            burst = rng.randint(1, 6)
            pace(rng.uniform(0.01, 0.06))
            if tree:
                bursts.new()


def _write_synced(path: Path | str, data: bytes, dir_fd: int | None = None) -> None:
    """A new file (``path``, relative to ``dir_fd`` if given), written whole and fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def deliver_flat(watch: Path, unprocessed_fd: int, name: str) -> None:
    """``name`` written beside (``watch/.producing-<name>``), fsynced, renamed into
    ``unprocessed/``, ``unprocessed/`` fsynced: durable."""
    tmp = watch / f".producing-{name}"
    _write_synced(tmp, content_for(name))
    os.rename(tmp, watch / "unprocessed" / name)
    os.fsync(unprocessed_fd)


@dataclass
class Bursts:
    """Where a tree's files go: each burst into a directory made anew, one or two levels
    deep: ``b0007/``, or ``b0007/s0/`` and ``b0007/s1/`` (a file into either: the second
    is made in a directory that exists, maybe one the daemon has emptied already)."""

    rng: random.Random
    number: int = -1
    deep: bool = False

    def new(self) -> None:
        self.number += 1
        self.deep = self.rng.random() < 0.5

    def place(self, base: str) -> str:
        top = f"b{self.number:04d}"
        return f"{top}/s{self.rng.randint(0, 1)}/{base}" if self.deep else f"{top}/{base}"


def deliver_into(unprocessed: Path, name: str) -> None:
    """``name`` (``b0007/s1/x.log``) delivered durably into a tree: its missing
    directories made, the file written beside under a hidden name and fsynced, renamed
    in; then the directory it went into, each directory made on the way and the parent
    of each are fsynced (every entry on its way is on disk). A directory the daemon
    removes (it had emptied it) while this is under way is made again: once the hidden
    file is in it, nothing can remove it."""
    rel_dir, _, base = name.rpartition("/")
    made: set[Path] = set()
    for _ in range(DELIVERY_TRIES):
        into = -1
        try:
            made.update(_make_dirs(unprocessed, rel_dir))
            into = os.open(unprocessed / rel_dir, os.O_RDONLY | os.O_DIRECTORY)
            _write_synced(f".producing-{base}", content_for(name), dir_fd=into)
        except FileNotFoundError:  # removed under our feet (a creation in a removed directory fails too)
            if into >= 0:
                os.close(into)
            continue
        break
    else:
        raise RuntimeError(f"{unprocessed / rel_dir} was removed {DELIVERY_TRIES} times while a file was put in it")
    try:
        os.rename(f".producing-{base}", base, src_dir_fd=into, dst_dir_fd=into)
        os.fsync(into)
    finally:
        os.close(into)
    synced = {unprocessed / rel_dir}
    for path in sorted(made | {d.parent for d in made}, key=lambda p: len(p.parts), reverse=True):
        if path not in synced:
            fsync_dir(path)
            synced.add(path)


def _make_dirs(top: Path, rel_dir: str) -> list[Path]:
    """The missing directories of ``rel_dir`` under ``top``, made; those made."""
    made = []
    path = top
    for part in rel_dir.split("/"):
        path = path / part
        try:
            path.mkdir()
        except FileExistsError:
            continue
        made.append(path)
    return made


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_acks(acks: Path) -> dict[str, float]:
    """Durably delivered names -> when (monotonic) the producer knew it."""
    if not acks.exists():
        return {}
    out = {}
    for line in acks.read_text().splitlines():
        name, _, when = line.partition("\t")
        if when:  # a line is written whole by one write(2); a cut never splits it
            out[name] = float(when)
    return out


# -- where the cut landed ---------------------------------------------------------------------

def walk(top: Path, hidden: bool = True) -> tuple[list[str], list[str]]:
    """(names, directories) below ``top``, by their paths relative to it, each sorted. A
    name is anything but a directory (a symlink is a name: never followed); hidden
    directories are never entered, as the daemon never enters them; hidden names are
    kept only with ``hidden``. A directory removed while it is walked is skipped."""
    names: list[str] = []
    dirs: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(top / rel if rel else top) as entries:
                found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name, is_dir in found:
            path = f"{rel}/{name}" if rel else name
            if is_dir and not name.startswith("."):
                dirs.append(path)
                stack.append(path)
            elif not is_dir and (hidden or not name.startswith(".")):
                names.append(path)
    return sorted(names), sorted(dirs)


def _names(path: Path) -> list[str]:
    """Every name below ``path``, hidden ones too (``walk``)."""
    return walk(path)[0]


def folder(watch: Path, name: str) -> list[str]:
    """The files of a queue folder by their paths relative to it (``b0007/x.log``; a
    flat folder's names), as ``tests.daemon.folder`` lists a flat one: no hidden
    names, no reason files in failed/ (in any directory)."""
    names = walk(watch / name, hidden=False)[0]
    if name == "failed":
        names = [n for n in names if not n.endswith(".reason")]
    return names


def base(name: str) -> str:
    """The last component of a relative path."""
    return name.rpartition("/")[2]


def _staged(watch: Path) -> list[tuple[str, int]]:
    found = []
    try:
        with os.scandir(watch / "output") as entries:
            for entry in entries:
                if entry.name.startswith(".fm-") and entry.name.endswith(".tmp"):
                    try:
                        found.append((entry.name, entry.stat().st_size))
                    except FileNotFoundError:
                        continue  # renamed into place meanwhile
    except FileNotFoundError:
        pass
    return found


# The conditions polled before a cut look up the few files in underprocess/ in output/,
# rather than list output/ (which grows, and on a tree is a walk of many directories):
# a tight poll must not miss a phase of a few milliseconds.

def seen_claim(watch: Path) -> str:
    for name in folder(watch, "underprocess"):
        if not os.path.lexists(watch / "output" / name):
            return f"underprocess/{name} claimed, no output yet"
    return ""


def seen_staged(watch: Path, min_bytes: int) -> str:
    for name, size in _staged(watch):
        if size >= min_bytes:
            return f"output/{name} staged, {size} bytes"
    return ""


def seen_group_commit(watch: Path, prefix: str = "") -> str:
    for name in folder(watch, "underprocess"):
        if base(name).startswith(prefix) and os.path.lexists(watch / "output" / name):
            return f"output/{name} committed while underprocess/{name} is not moved yet"
    return ""


def seen_reason_written(watch: Path) -> str:
    """A reason file being written (``.fm-reason.*.tmp``) anywhere in failed/."""
    for name in _names(watch / "failed"):
        if base(name).startswith(".fm-reason."):
            return f"failed/{name} being written"
    return ""


def seen_moved_after(watch: Path, before: set[str]) -> str:
    """A file in processed/ or failed/ that was not among ``before``."""
    for where in ("processed", "failed"):
        for name in folder(watch, where):
            if name not in before:
                return f"{where}/{name} moved"
    return ""


def live_rows(db_path: Path, timeout_s: float = 0.5, mode: str = "ro") -> list[tuple[int, str, int, str, str, int]]:
    """(id, name, inode, status, final name, attempts) of every live row (claimed,
    waiting, committing). ``mode="ro"`` while the daemon is frozen; once it has
    stopped, "rw" (a read-only connection cannot open a WAL database whose -shm is gone)."""
    if not db_path.exists():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode={mode}", uri=True, timeout=timeout_s)
    try:
        return db.execute("SELECT id, name, ino, status, final_name, attempts FROM files "
                          f"WHERE status IN {LIVE!r} ORDER BY id").fetchall()
    finally:
        db.close()


QUEUE = ("unprocessed", "underprocess", "processed", "failed", "output")


def folders(watch: Path) -> dict[str, set[str]]:
    """The visible names of each queue folder (relative paths)."""
    return {f: set(folder(watch, f)) for f in QUEUE}


def directories(watch: Path) -> dict[str, set[str]]:
    """The directories of each queue folder (relative paths; none in a flat cycle)."""
    return {f: set(walk(watch / f)[1]) for f in QUEUE}


def unsynced(memory: dict[str, set[str]], disk: dict[str, set[str]], memory_dirs: dict[str, set[str]],
             disk_dirs: dict[str, set[str]]) -> dict[str, list[str]]:
    """What the frozen processes had done that the disk did not hold: claims, outputs
    and moves made in memory (the page cache) but not synced when the power went, and
    directories made or removed (``folder/dir``)."""
    def lacking(source: str, back: tuple[str, ...]) -> list[str]:
        return sorted(n for n in memory[source] if n not in disk[source] and any(n in disk[b] for b in back))
    found = {"claims": lacking("underprocess", ("unprocessed",)),
             "moves": lacking("processed", ("underprocess", "unprocessed")) + lacking("failed", ("underprocess",
                                                                                                 "unprocessed")),
             "outputs": sorted(memory["output"] - disk["output"]),
             "dirs made": sorted(f"{f}/{d}" for f in QUEUE for d in memory_dirs[f] - disk_dirs[f]),
             "dirs removed": sorted(f"{f}/{d}" for f in QUEUE for d in disk_dirs[f] - memory_dirs[f])}
    return {k: v for k, v in found.items() if v}


def classify(watch: Path) -> dict[str, str]:
    """Every phase the frozen filesystem shows, with its evidence: a file claimed with
    no output; a large staged output; an output committed before its input moved; a
    file moved whose state row is still live (the moves and their transaction)."""
    found = {}
    if evidence := seen_claim(watch):
        found["claim"] = evidence
    if evidence := seen_staged(watch, STAGED_BIG_BYTES):
        found["worker_sync"] = evidence
    if evidence := seen_group_commit(watch):
        found["group_commit"] = evidence
    if evidence := seen_group_commit(watch, "large-"):
        found["group_commit/large"] = evidence
    if evidence := seen_reason_written(watch):
        found["moves/reason"] = evidence
    try:
        rows = live_rows(watch / ".foldermill" / "state.db")
    except sqlite3.Error as exc:
        found["state.db"] = f"unreadable while frozen: {exc}"
        rows = []
    for _, name, _, status, _, _ in rows:
        for where in ("processed", "failed"):
            if os.path.lexists(watch / where / name):
                found.setdefault("moves", f"{where}/{name} moved, its state row still {status!r}")
    return found


# -- the checks after recovery -----------------------------------------------------------------

@dataclass(frozen=True)
class Violation:
    """One broken invariant: what kind, which file, what was found."""

    kind: str
    file: str
    evidence: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.file}: {self.evidence}"


def journal_history(watch: Path) -> dict[str, list[str]]:
    """file -> its journal events in order, as ``event`` or ``event(final)`` when the
    final name is not the file's own (for evidence)."""
    history: dict[str, list[str]] = {}
    for path in sorted(watch.glob("input.log*"), reverse=True):
        for line in path.read_bytes().split(b"\n"):
            try:
                entry = json.loads(line.strip(b"\0") or b"null")
            except ValueError:
                continue
            if isinstance(entry, dict) and "file" in entry:
                final = entry.get("final", entry["file"])
                text = entry["event"] if final == entry["file"] else f"{entry['event']}({final})"
                history.setdefault(entry["file"], []).append(text)
    return history


def _differs(got: bytes, want: bytes) -> str:
    if got == want:
        return ""
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    nul = got.count(0)
    return (f"{len(got)} bytes, expected {len(want)}; first difference at byte {at}: "
            f"{got[at:at + 24]!r} instead of {want[at:at + 24]!r}" + (f"; {nul} NUL bytes" if nul else ""))


def second_names(watch: Path) -> dict[str, list[str]]:
    """file -> its collision names (``stem-N.log``...) in processed/, failed/, output/,
    as ``folder/name``. Every name the producer makes is new, so each one is a file or
    its outputs committed a second time."""
    found: dict[str, list[str]] = {}
    for where in ("processed", "failed", "output"):
        for name in _names(watch / where):
            if match := SECOND_NAME.match(name):
                found.setdefault(f"{match['dirs']}{match['stem']}.log", []).append(f"{where}/{name}")
    return found


def check_delivered(watch: Path, acked: dict[str, float], history: dict[str, list[str]]) -> list[Violation]:
    """Invariant 1: each durably delivered name is in exactly one of processed/, failed/
    (a delivery found only under a second name is reported by check_second_names)."""
    out = []
    seconds = second_names(watch)
    for name in sorted(acked):
        where = [f for f in ("processed", "failed") if os.path.lexists(watch / f / name)]
        if len(where) == 2:
            out.append(Violation("twice", name, f"in both processed/ and failed/; journal: {history.get(name, [])}"))
        elif not where and not any(p.startswith(("processed/", "failed/")) for p in seconds.get(name, [])):
            seen = [f"{f}/{n}" for f in ("unprocessed", "underprocess", "output") for n in _names(watch / f)
                    if n == name]
            out.append(Violation("lost", name, "durably delivered, in neither processed/ nor failed/ (under no "
                                 f"name); found: {seen or 'nowhere'}; journal: {history.get(name, [])}"))
    return out


def check_second_names(watch: Path, history: dict[str, list[str]]) -> list[Violation]:
    """Invariants 1, 2 and 8: no file or output under a second name (``stem-N.log``):
    one violation per file, with every such name, its size, and what is under the first."""
    out = []
    for name, paths in sorted(second_names(watch).items()):
        parts = []
        for path in paths:
            where, second = path.split("/", 1)
            match = SECOND_NAME.match(second)
            assert match is not None, path  # second_names found it so
            first = watch / where / (name + match["suffix"])
            size = (watch / path).lstat().st_size
            same = ""
            if first.is_file() and (watch / path).is_file():
                equal = first.read_bytes() == (watch / path).read_bytes()
                same = f", {'the same content as' if equal else 'differs from'} {where}/{name}{match['suffix']}"
            parts.append(f"{path} ({size} bytes{same})")
        firsts = [f"{f}/{name} {'present' if os.path.lexists(watch / f / name) else 'absent'}"
                  for f in ("processed", "failed", "output")]
        out.append(Violation("second-name", name, f"under a second name: {'; '.join(parts)}; "
                             f"{', '.join(firsts)}; journal: {history.get(name, [])}"))
    return out


def check_outputs(watch: Path, history: dict[str, list[str]]) -> list[Violation]:
    """Invariant 2: each processed file has its one output, whole (its input
    upper-cased); a failing file is in failed/ with no output and its reason beside it;
    inputs are intact."""
    out = []
    for where in ("processed", "failed"):
        for name in folder(watch, where):
            match = NAME.match(name)
            if match is None:
                continue  # a second name: check_second_names reports it
            expected = content_for(name)
            if diff := _differs((watch / where / name).read_bytes(), expected):
                out.append(Violation("input", name, f"{where}/{name}: {diff}"))
            failing = match["kind"] == "fail"
            output = watch / "output" / name
            if where == "processed" and failing:
                out.append(Violation("wrong-folder", name, "a file whose processor raises is in processed/; "
                                     f"journal: {history.get(name, [])}"))
            reason = watch / "failed" / f"{name}.reason"
            if where == "failed" and not reason.is_file():
                out.append(Violation("reason", name, f"failed/{name} has no reason beside it; "
                                     f"journal: {history.get(name, [])}"))
            if where == "failed" and not failing:
                text = reason.read_text(errors="replace")[:300] if reason.exists() else "(no reason file)"
                out.append(Violation("wrong-folder", name, f"a good file is in failed/: {text!r}; "
                                     f"journal: {history.get(name, [])}"))
            if where == "processed" and not failing:
                if not output.is_file():
                    out.append(Violation("output", name, f"processed/{name} has no output/{name}; "
                                         f"journal: {history.get(name, [])}"))
                elif diff := _differs(output.read_bytes(), expected.upper()):
                    out.append(Violation("output", name, f"output/{name}: {diff}"))
            if where == "failed" and os.path.lexists(output):
                out.append(Violation("output", name, f"failed/{name} has a committed output/{name} "
                                     f"({output.lstat().st_size} bytes)"))
    inputs = {n for f in ("processed", "failed", "unprocessed", "underprocess") for n in folder(watch, f)}
    seconds = second_names(watch)
    for name in folder(watch, "output"):
        if NAME.match(name) and name not in inputs and name not in seconds:  # (those are reported with it)
            out.append(Violation("orphan-output", name, f"output/{name} ({(watch / 'output' / name).stat().st_size}"
                                 f" bytes) but its input is in no folder; journal: {history.get(name, [])}"))
    return out


def check_debris(watch: Path) -> list[Violation]:
    """Invariant 8: no staged file (``output/.fm-*.tmp``) nor other ``.fm-*`` debris."""
    out = []
    for top, dirs, files in os.walk(watch):
        for name in files + dirs:
            if name.startswith(".fm-"):
                path = Path(top) / name
                kind = "staged-left" if name.endswith(".tmp") and Path(top).name == "output" else "debris"
                out.append(Violation(kind, str(path.relative_to(watch)), f"{path.lstat().st_size} bytes left after "
                                     "recovery"))
    return out


def check_state(watch: Path) -> list[Violation]:
    """Invariant 8: no live state row (claimed, waiting, committing) for a file that is
    not waiting in unprocessed/ or underprocess/."""
    out = []
    try:
        rows = live_rows(watch / ".foldermill" / "state.db", timeout_s=5, mode="rw")
    except sqlite3.Error as exc:
        return [Violation("state-row", "state.db", f"cannot be read: {exc}")]
    for file_id, name, ino, status, final, attempts in rows:
        if any(os.path.lexists(watch / f / name) for f in ("unprocessed", "underprocess")):
            continue
        where = [f"{f}/{name}" for f in ("processed", "failed", "output") if os.path.lexists(watch / f / name)]
        out.append(Violation("state-row", name, f"row id={file_id} status={status!r} final={final!r} "
                             f"attempts={attempts} ino={ino}, but the file is in {where or 'no folder'}"))
    return out


def check_journal(watch: Path) -> list[Violation]:
    """Invariant 8: every entry of input.log (and its rotations) is readable: each line is
    JSON, or damage alone on its line (a run of NUL bytes: data the kernel had not
    written, its size committed), which readers skip. NUL bytes glued to an entry are a
    violation: a reader that skips damage would lose the entry with it."""
    out = []
    for path in sorted(watch.glob("input.log*")):
        data = path.read_bytes()
        offset = 0
        for number, line in enumerate(data.split(b"\n"), 1):
            start, offset = offset, offset + len(line) + 1
            if not line.strip(b"\0"):
                continue  # empty, or damage on a line of its own
            if b"\0" in line:
                rest = line.strip(b"\0")
                out.append(Violation("journal-nul", f"{path.name}:{number}",
                                     f"bytes {start}-{start + len(line)}: {line.count(0)} NUL bytes"
                                     f"{' then ' + repr(rest[:120]) if rest else ''}"))
                continue
            try:
                json.loads(line)
            except ValueError as exc:
                out.append(Violation("journal", f"{path.name}:{number}", f"not JSON ({exc}): {line[:160]!r}"))
    return out


def check_at_cut(memory: dict[str, set[str]], memory_dirs: dict[str, set[str]], disk: dict[str, set[str]],
                 disk_dirs: dict[str, set[str]]) -> list[Violation]:
    """What the daemon had made durable when the power went, judged on the frozen
    processes' view (``memory``) against the copy (``disk``), before any recovery:
    - every directory of output/ that held an output is on the disk (with ``durable``,
      a new directory is on disk before any output is renamed into it);
    - every file in processed/ has its output on the disk (outputs are renamed into
      place and the directories renamed into synced before the input moves).
    A cut lands between system calls, so each holds exactly if the daemon made the
    entry durable before the step that relies on it; it catches a sync left out even
    where the journal, committed by any later sync, would hide it after recovery."""
    out = []
    for directory in sorted({d for n in memory["output"] for d in _parents(n)} - disk_dirs["output"]):
        holding = sorted(n for n in memory["output"] if n.startswith(directory + "/"))
        out.append(Violation("dir-not-durable", f"output/{directory}", f"held {len(holding)} committed outputs "
                             f"({', '.join(holding[:3])}) when the power went, but the disk has no such directory"
                             f"{'' if directory in memory_dirs['output'] else ' (nor had the frozen view)'}"))
    for name in sorted(memory["processed"]):
        if name not in disk["output"] and (match := NAME.match(name)) is not None and match["kind"] != "fail":
            where = [f for f in ("processed", "underprocess", "unprocessed") if name in disk[f]]
            out.append(Violation("output-not-durable", name, f"in processed/ when the power went, its output/{name} "
                                 f"not on the disk (the input is in {where or 'no folder'} there)"))
    return out


def _parents(name: str) -> list[str]:
    """``a/b/x.log`` -> ``["a", "a/b"]``."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def check_invariants(watch: Path, acked: dict[str, float]) -> list[Violation]:
    """Every violation of invariants 1, 2 and 8 the recovered watch dir shows."""
    history = journal_history(watch)
    unfinished = [Violation("unfinished", n, f"still in {f}/ after recovery; journal: {history.get(n, [])}")
                  for f in ("unprocessed", "underprocess") for n in folder(watch, f)]
    return (unfinished + check_delivered(watch, acked, history) + check_second_names(watch, history)
            + check_outputs(watch, history) + check_debris(watch) + check_state(watch) + check_journal(watch))


# -- one cycle ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Aim:
    """Where a cycle cuts: one of PHASES or "random". ``variant``: for worker_sync,
    "growing" or "complete"; for group_commit, "large" (a large file's commit, with the
    quiet producer); for moves, "reason" (a failing file's reason being written beside
    it, before it moves: needs ``failing``); for random, "quiet" (the quiet producer).
    ``failing``: some files fail on purpose. ``tree``: ``recursive = true``, every
    burst into new directories."""

    phase: str
    variant: str = ""
    failing: bool = False
    tree: bool = False

    @property
    def quiet(self) -> bool:
        """The producer pauses after each large file (see ``produce``)."""
        return self.variant in ("large", "quiet")

    @property
    def key(self) -> str:
        """Its name in ``classify``'s findings."""
        return f"{self.phase}/{self.variant}" if self.variant in ("large", "reason") else self.phase

    def __str__(self) -> str:
        return (self.phase + (f"/{self.variant}" if self.variant else "") + ("+failing" if self.failing else "")
                + ("+tree" if self.tree else ""))


@dataclass
class CycleReport:
    """What one cycle aimed at, where it landed, what it found, how long it took."""

    aim: Aim
    seed: int
    trigger: str = ""  # the condition as seen when the cut was ordered ("" if never)
    landed_in: dict[str, str] = field(default_factory=dict)  # phase -> evidence, on the frozen view
    unsynced: dict[str, list[str]] = field(default_factory=dict)  # done in memory, not on the disk (see unsynced)
    cut: Cut | None = None
    acked: dict[str, float] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def landed(self) -> bool:
        # moves: also a cut after a move and before it was synced (the disk still has the file
        # in underprocess/), the window a power cut in the moves really hits.
        return (self.aim.phase == "random" or self.aim.key in self.landed_in
                or (self.aim.key == "moves" and "moves" in self.unsynced))

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for name in self.acked:
            match = NAME.match(name)
            kind = match["kind"] if match else "?"
            found[kind] = found.get(kind, 0) + 1
        return found

    def describe(self) -> str:
        cut = self.cut
        where = ("" if self.aim.phase == "random" else
                 f"{'landed' if self.landed else 'did NOT land'} there; condition seen: ")
        lines = [f"power cut aimed at {self.aim} (seed {self.seed}): {where}{self.trigger or 'never'}",
                 f"  frozen view: {self.landed_in or 'no phase'}",
                 f"  done in memory, not on the disk: {self.unsynced or 'nothing'}",
                 f"  durably delivered before the cut: {len(self.acked)} {self.counts()}"]
        if cut is not None:
            f = cut.frozen
            lines.append(f"  cut: SIGSTOP sent {f.signalled_s * 1000:.2f} ms after the order, all threads stopped at "
                         f"{f.stopped_s * 1000:.1f} ms ({len(f.pids)} processes, {f.done_s * 1000:.1f} ms with the "
                         f"check for new children); image copied in {cut.copy_s * 1000:.0f} ms ({cut.copies} copies, "
                         f"{'stable' if cut.stable else 'NOT stable'})")
        lines.append("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()))
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  {len(self.violations)} violations" + (":" if self.violations else ""))
        lines += [f"    {v}" for v in self.violations]
        return "\n".join(lines)


def write_config(work: Path, watch: Path, tree: bool = False) -> Path:
    """The rig's config (outside the cut filesystem), with the ``behave`` processor;
    ``tree``: recursive (TREE_CONFIG)."""
    (work / "behave.py").write_text(BEHAVE)
    flags = work / "flags"
    flags.mkdir(exist_ok=True)
    (flags / "always").touch()  # FAILIF always: fails on every attempt
    path = work / "config.toml"
    path.write_text(textwrap.dedent(CONFIG.format(watch=watch, flags=flags, tree=TREE_CONFIG if tree else "")))
    return path


def start_daemon(daemons: list[Daemon], config: Path, name: str) -> tuple[Daemon, str]:
    """A supervisor started and registered for teardown; ("" or why it did not start)."""
    d = Daemon(config, name=name)
    daemons.append(d)
    try:
        wait_for(lambda: "foldermill started" in d.log() or not d.alive(), START_TIMEOUT_S, f"{name} to start")
    except AssertionError as exc:
        return d, str(exc)
    return d, "" if d.alive() else f"it exited with {d.proc.poll()}: {d.log()[-1500:]}"


def start_producer(watch: Path, acks: Path, seed: int, aim: Aim, log: Path) -> subprocess.Popen[bytes]:
    """The producer, a process of its own (so that the cut freezes it too)."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.powercut_cycle", "produce", str(watch), str(acks),
                                 str(seed), str(int(aim.failing)), str(int(aim.quiet)), str(int(aim.tree))],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def trigger_for(aim: Aim, watch: Path, rng: random.Random, started: float) -> Callable[[], str]:
    """The condition a cycle waits for (a tight poll) before it cuts. An aimed phase is
    armed only once a random number of files (0 to WARMUP) are in processed/, so the
    cut falls amid traffic, after earlier files were finished, not always on the first."""
    if aim.phase == "random":
        at = started + rng.uniform(*RANDOM_CUT_S)
        return lambda: f"{time.monotonic() - started:.3f}s after the producer started" if time.monotonic() >= at else ""
    condition: Callable[[], str]
    finished_before: set[str] = set()  # moves: only a move seen after the phase is armed counts
    if aim.phase == "claim":
        condition = functools.partial(seen_claim, watch)
    elif aim.phase == "worker_sync":
        least = len(content_for("large-00001.log"))
        if aim.variant == "growing":
            least = int(least * rng.uniform(0.2, 0.9))
        condition = functools.partial(seen_staged, watch, least)
    elif aim.phase == "group_commit":
        condition = functools.partial(seen_group_commit, watch, "large-" if aim.variant == "large" else "")
    elif aim.phase == "moves" and aim.variant == "reason":
        condition = functools.partial(seen_reason_written, watch)
    elif aim.phase == "moves":
        condition = functools.partial(seen_moved_after, watch, finished_before)
    else:
        raise ValueError(f"no such phase: {aim.phase}")
    # A large file is the 2nd and every 9th: a phase of a large file is armed before one comes.
    warmup = rng.randint(0, 1 if aim.phase == "worker_sync" or aim.variant == "large" else WARMUP)
    armed = False

    def trigger() -> str:
        nonlocal armed
        if not armed:
            done = folder(watch, "processed") + folder(watch, "failed")
            armed = len(done) >= warmup
            if not armed:
                return ""
            finished_before.update(done)
        return condition()
    return trigger


def _wait_quietly(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02) -> str:
    """wait_for, but a timeout is returned as its message instead of raised."""
    try:
        wait_for(predicate, timeout_s, what, interval_s)
    except AssertionError as exc:
        return str(exc)
    return ""


def _end(daemons: list[Daemon], producer: subprocess.Popen[bytes] | None) -> None:
    """Whatever this cycle started is dead (by pid) before the filesystem goes."""
    if producer is not None:
        if producer.poll() is None:
            producer.kill()
        producer.wait(timeout=10)
    for d in daemons:
        _end_daemon(d)


def _end_daemon(d: Daemon) -> None:
    children = [c.pid for c in d.children()]
    if d.alive():
        d.kill()
    else:
        d.wait(10)  # reaps it and closes its log (again: harmless)
    if _wait_quietly(lambda: not alive(children), 10, "the supervisor's children to exit"):
        for pid in alive(children):  # the supervisor's own children, by pid
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(children), 10, "the supervisor's children to die")


def run_cycle(work: Path, daemons: list[Daemon], aim: Aim, seed: int, size_mb: int = 384) -> CycleReport:
    """One power-cut cycle in ``work`` (outside the cut filesystem: config, logs,
    acknowledgements). Supervisors go in ``daemons``; everything the cycle started is
    dead and the filesystem gone when it returns."""
    report = CycleReport(aim, seed)
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    fs = LoopFs(work / "disk", size_mb)
    watch = fs.mountpoint / "watch_dir"
    config = write_config(work, watch, aim.tree)
    acks = work / "acks.tsv"
    mine: list[Daemon] = []
    producer = None
    clock = time.monotonic()

    def lap(what: str) -> None:
        nonlocal clock
        now = time.monotonic()
        report.timings[what] = now - clock
        clock = now

    try:
        fs.create()
        watch.mkdir()
        first, why = start_daemon(mine, config, "before-cut")
        assert not why, f"the supervisor did not start on a fresh filesystem: {why}"
        syncfs(watch)  # the installed daemon's folders and database are on disk
        lap("setup")
        producer = start_producer(watch, acks, seed, aim, work / "producer.log")
        # Known before the aim, so the cut wastes no time on it (the freeze also takes
        # any child started since: a replaced worker).
        pids = [*process_tree(first.pid), producer.pid]
        trigger = trigger_for(aim, watch, rng, time.monotonic())
        try:  # a tight poll (no pause between looks): the cut follows the condition within a few ms
            report.trigger = wait_for(trigger, AIM_TIMEOUT_S, f"the phase aimed at ({aim})", interval_s=0)
        except AssertionError as exc:
            report.notes.append(f"cut anyway: {exc}")
        lap("aim")
        report.cut = fs.cut(pids, inspect=lambda: (classify(watch), folders(watch), directories(watch)))
        report.landed_in, memory, memory_dirs = report.cut.inspected
        if not report.cut.stable:
            report.notes.append("the image kept changing while it was copied (kernel writeback): the copy may "
                                "mix two instants")
        lap("cut")
        first.wait(10)
        producer.wait(timeout=10)
        report.acked = read_acks(acks)
        fs.remount(report.cut.copy)
        disk, disk_dirs = folders(watch), directories(watch)
        report.unsynced = unsynced(memory, disk, memory_dirs, disk_dirs)
        report.violations += check_at_cut(memory, memory_dirs, disk, disk_dirs)
        lap("remount")
        second, why = start_daemon(mine, config, "after-cut")
        if why:
            report.violations.append(Violation("daemon", "supervisor.py", f"did not start after the cut: {why}"))
            return report
        if late := _wait_quietly(lambda: not folder(watch, "unprocessed") and not folder(watch, "underprocess"),
                                 FINISH_TIMEOUT_S, "the restarted daemon to finish every file"):
            report.notes.append(late)
        lap("recovery")
        code = second.stop(STOP_TIMEOUT_S)
        if code != 0:
            report.violations.append(Violation("daemon", "supervisor.py", f"exit code {code} after SIGTERM: "
                                               f"{second.log()[-800:]}"))
        lap("stop")
        report.violations += check_invariants(watch, report.acked)
        lap("checks")
    finally:
        daemons.extend(mine)
        _end(mine, producer)
        fs.close()
        report.notes += fs.notes
        report.timings["total"] = sum(report.timings.values())
    return report


TABLE_HEAD = f"{'#':>3} {'aimed at':<26} {'landed':<7} {'acked':>5} {'freeze':>8} {'total':>6}  violations"


def table_row(number: int, report: CycleReport) -> str:
    """One cycle as a line of ``table``."""
    found: dict[str, int] = {}
    for v in report.violations:
        found[v.kind] = found.get(v.kind, 0) + 1
    freeze = f"{report.cut.frozen.stopped_s * 1000:.1f}ms" if report.cut else "-"
    return (f"{number:>3} {report.aim!s:<26} {'yes' if report.landed else 'no':<7} {len(report.acked):>5} {freeze:>8} "
            f"{report.timings.get('total', 0):>5.1f}s  "
            + (", ".join(f"{k}={n}" for k, n in sorted(found.items())) or "none"))


def table(reports: list[CycleReport]) -> str:
    """A summary table of cycles: aim, landed, durably delivered, freeze, time, violations."""
    return "\n".join([TABLE_HEAD, "-" * len(TABLE_HEAD)] + [table_row(i, r) for i, r in enumerate(reports, 1)])


def main(argv: list[str]) -> int:
    if len(argv) == 7 and argv[0] == "produce":
        produce(Path(argv[1]), Path(argv[2]), int(argv[3]), argv[4] == "1", argv[5] == "1", argv[6] == "1")
        return 0
    print("usage: python -m tests.powercut_cycle produce WATCH ACKS SEED FAILING(0|1) QUIET(0|1) TREE(0|1)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
