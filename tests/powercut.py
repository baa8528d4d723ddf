"""Simulated power cuts on a loop-mounted ext4 (RECIPES.md, "A power cut").

The method
----------
A sparse image in ``/dev/shm`` gets ``mkfs.ext4 -q -b 4096 -E lazy_itable_init=0,
lazy_journal_init=0``, is attached with ``losetup --find --show`` and mounted with
``-o commit=60,noatime``. The loop device writes into the image through tmpfs, so a
write the filesystem *submitted* is in the image at once, and nothing else is: the
page cache of the mounted filesystem (dirty data, metadata not yet committed to the
ext4 journal) is not. With ``commit=60`` the journal commits only when something
syncs (``fsync``, ``fdatasync``, ``syncfs``, ``sync``) or after 60 s, so the image
holds what was synced plus what happened to be written back.

A cut (``LoopFs.cut``): every given process, and every descendant of one, gets
SIGSTOP; we wait, with a deadline, until every thread of each shows state ``T`` in
``/proc/PID/task/*/stat`` (a thread inside ``fsync`` stops only once the call has
returned: a cut lands between system calls); then ``cp --sparse=always IMG COPY`` takes
what the disk held at that instant; then the frozen processes get SIGKILL. The copy is
attached and mounted at the same directory, and mounting replays its ext4 journal as
a boot after a power cut would: a restarted daemon finds what it would find on a
machine whose power went out at the instant of the freeze. What else a reboot clears
is cleared too: the files in /dev/shm the killed processes mapped (multiprocessing's
semaphores ``sem.mp-*``, which their resource tracker, killed with them, would have
unlinked).

Why the method has no false alarms: every image it can produce is one the kernel
could have left on a real disk at a power cut. The kernel may write back and commit
at any moment, so more surviving than was synced is always possible in reality too;
a state the test finds (e.g. a journal line that has its length but NUL bytes, see
below) is a state a real machine can reach.

Limits (what it does not simulate)
----------------------------------
- Writes are never reordered within a flush and sectors are never torn: a real disk
  with a volatile write cache may persist a later write of a flush epoch and lose an
  earlier one, or half a sector. Those states are never produced here.
- A cut lands between system calls of the frozen processes, never inside one.
- Processes are stopped one after another (microseconds apart), not at one instant:
  the result is a state of some interleaving in which the later ones ran a little
  longer, which a real schedule could also produce.
- Metadata reaches the disk in the order it changed: ext4's journal puts every
  change (a ``mkdir``, a ``rename``) in the one running transaction and commits the
  transactions in order, and an ``fsync`` of *any* file commits the running one. So a
  directory whose parent was never fsynced, or a rename whose directory was never
  fsynced, survives as soon as anything later syncs (measured: ``mkdir a``, a synced
  file renamed into it, then an fsync of an unrelated new file: ``a`` and the rename
  survive; a rename after that last fsync does not). A left-out directory fsync shows
  only in a cut before the next sync of anything; a filesystem that does not order
  metadata (or orders it per inode) may lose more. The tree cycles of
  ``tests/powercut_cycle.py`` therefore judge directories on the frozen view, at the
  cut (``check_at_cut``), not only after recovery.
- Kernel threads are not frozen: the jbd2 commit thread, the loop worker and the
  flusher keep running while the image is copied. ``LoopFs.cut`` compares the loop
  device's write counters (``/sys/block/loopN/stat``) and the journal's transaction
  count (``/proc/fs/jbd2/loopN-8/info``) before and after the copy and takes it again
  until nothing moved and no request is in flight (``Cut.stable``), so the copy is the
  image at one instant, a little after the freeze at worst.

What reaches the image without a sync
-------------------------------------
- The flusher writes dirty *data* back once it is older than ``vm.dirty_expire_centisecs``
  (3000 = 30 s here) on its ``vm.dirty_writeback_centisecs`` (500 = 5 s) rounds, or
  sooner past ``vm.dirty_background_ratio``/``_bytes`` (10 % of memory, GBs here). With
  delayed allocation that writeback allocates blocks in the *running* transaction, which
  commits only at the next sync or at ``commit=60``: data reaches the image, the inode
  and extents that point at it do not. Measured here (a probe writes a 100 kB file and
  appends to a synced one, then nothing syncs; cut after N s): at 0 s and at 40 s the
  new file is absent after replay (at 40 s the device had written its data: the
  flusher ran, no journal commit), the append not there; at 70 s the 60 s commit timer
  had fired and both were whole. A cycle of a few seconds on a fresh filesystem
  stays well inside both 30 s and 60 s, so neither matters for the tests here: only
  what something synced survives. A cycle longer than that explores more states
  (timer commits), which are legitimate too (ext4's default ``commit=5`` makes them
  the common case on real machines), not false alarms.
- Any ``sync(2)`` on the host (another test, a package install) commits this
  filesystem too: a cycle then sees more durable than the daemon asked for. That can
  hide a bug, never invent one. ``syncfs`` and ``fsync`` elsewhere do not touch it.
- Size without data: an *append within a block that is already allocated* (the
  journal's ``write`` of a few lines into its last, partly filled 4 KiB block; a
  SQLite WAL frame) updates ``i_disksize`` in the running transaction at once
  (``ext4_da_write_end``), but its data page is not on the ordered-data list (no new
  block was allocated). The next commit, caused by anyone's ``fsync`` on the
  filesystem, then makes the new size durable while the data page stays dirty: after
  the cut the file has its full length and NUL bytes where the append was. This is
  ext4's ``data=ordered`` behaviour, the same on real disks (and likelier there: with
  the default ``commit=5`` the timer commits the size within 5 s while the data waits
  30 s for the flusher), and ``test_the_method`` shows it (the "appended" probe). A
  journal that must stay readable has to fsync its appends (or tolerate and skip NUL
  runs); SQLite's WAL survives it by its frame checksums (the frames are lost).
- ext4's ``auto_da_alloc`` heuristic writes a file's data before committing a rename
  that *replaces* an existing file (or a truncate to 0): such an unsynced replace
  survives better than POSIX promises. Only replacing renames are affected.

Stricter or harsher variants
----------------------------
- Stricter (nothing but what is synced survives): keep cycles shorter than 30 s, or
  raise ``vm.dirty_expire_centisecs``/``vm.dirty_writeback_centisecs`` (host-wide:
  not on a shared machine); mount with ``noauto_da_alloc``; ``commit=`` larger than
  the cycle (the default 60 s suffices here).
- Harsher (more partial states): ``data=writeback`` (metadata may commit before any
  data: old or zero blocks in any file written without fsync); smaller
  ``vm.dirty_expire_centisecs`` so data lands without its metadata.
- More lenient (would hide bugs; never use for these tests): ``data=journal`` (the
  NUL-tail state above disappears), mounting with ``sync`` or ``dirsync``.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.daemon import pace, wait_for

__all__ = ["Cut", "Frozen", "LoopFs", "PowerCutError", "freeze", "kill_frozen", "process_tree", "syncfs",
           "thread_states"]

SHM = Path("/dev/shm")
MOUNT_OPTIONS = "commit=60,noatime"  # noatime: the test's own polling adds no metadata writes
MKFS = ("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0")
COMMAND_TIMEOUT_S = 60.0
FREEZE_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 10.0
UMOUNT_TIMEOUT_S = 5.0
COPY_ATTEMPTS = 5
STOPPED = frozenset("TtZX")  # T stopped, t traced; Z/X: an exited thread writes nothing more
TOOLS = ("mkfs.ext4", "losetup", "mount", "umount", "cp")


class PowerCutError(RuntimeError):
    """A step of the harness itself failed (a command, a freeze, an unmount)."""


def run(*cmd: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Run a system command with a deadline; its stdout, or PowerCutError with its stderr."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise PowerCutError(f"{' '.join(cmd)} did not finish within {timeout_s}s") from None
    if done.returncode != 0:
        raise PowerCutError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def syncfs(path: Path) -> None:
    """syncfs(2) of the filesystem holding ``path`` (only that one, unlike sync(1))."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs {path}")
    finally:
        os.close(fd)


def thread_states(pid: int) -> dict[int, str]:
    """The state letter of every thread of ``pid`` (R, S, D, T, Z...); {} once it is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return {}
    states = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread exited meanwhile
        # The command name is in parentheses and may itself hold ") ": the state is the
        # first field after the last ")".
        states[int(tid)] = stat[stat.rindex(b")") + 2:][:1].decode()
    return states


def _wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, state: Callable[[], object]) -> None:
    """``wait_for`` with a tight interval; on timeout, PowerCutError with ``state()`` then."""
    try:
        wait_for(predicate, timeout_s, what, interval_s=0.0002)
    except AssertionError:
        raise PowerCutError(f"timed out after {timeout_s}s waiting for {what}: threads' states {state()}") from None


def _stopped(pid: int) -> bool:
    return all(state in STOPPED for state in thread_states(pid).values())


def _gone(pid: int) -> bool:
    return set(thread_states(pid).values()) <= {"Z", "X"}


def _children(parents: Iterable[int]) -> list[int]:
    """The children of any of ``parents`` (one pass over /proc)."""
    wanted = set(parents)
    found = []
    for proc in psutil.process_iter(["ppid"]):
        if proc.info["ppid"] in wanted:
            found.append(proc.pid)
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the supervisor: manager, dashboard, workers)."""
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


@dataclass
class Frozen:
    """Processes frozen by ``freeze``, and how long it took (seconds from the call)."""

    pids: list[int]
    signalled_s: float  # every SIGSTOP of the given processes sent
    stopped_s: float  # every thread of them stopped
    done_s: float  # descendants found and stopped too


def freeze(pids: Iterable[int], timeout_s: float = FREEZE_TIMEOUT_S) -> Frozen:
    """SIGSTOP every process of ``pids`` and, recursively, every child of one (a worker
    forked at the last instant included); return once every thread of every one is
    stopped (or gone), failing after ``timeout_s``."""
    started = time.monotonic()
    frozen: list[int] = []
    todo = list(dict.fromkeys(pids))
    times: list[float] = []
    while todo:
        # All of this round first, then the wait: the processes stop microseconds apart.
        for pid in todo:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
        times.append(time.monotonic() - started)
        _wait_until(lambda: all(_stopped(p) for p in frozen), timeout_s, "every thread of the processes to stop",
                    lambda: {p: thread_states(p) for p in frozen if not _stopped(p)})
        times.append(time.monotonic() - started)
        # Only a stopped process cannot fork any more: its children are known now.
        todo = [c for c in _children(frozen) if c not in frozen]
    return Frozen(frozen, times[0], times[1], time.monotonic() - started)


def shm_mapped(pids: Iterable[int]) -> set[Path]:
    """Files in /dev/shm that the processes map (multiprocessing's POSIX semaphores,
    ``sem.mp-*``): a reboot would clear them, a SIGKILL leaves them."""
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    fields = line.split(maxsplit=5)
                    path = fields[5].strip() if len(fields) == 6 else ""
                    if path.startswith(f"{SHM}/") and not path.endswith(" (deleted)"):
                        found.add(Path(path))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def kill_frozen(pids: Iterable[int], timeout_s: float = KILL_TIMEOUT_S) -> None:
    """SIGKILL each (a stopped process dies at once) and wait until each is gone or a
    zombie: a zombie has closed its files, so it holds nothing on the mount."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: all(_gone(p) for p in pids), timeout_s, "the killed processes to exit",
                lambda: {p: thread_states(p) for p in pids if not _gone(p)})


@dataclass
class Cut:
    """What one cut did: the copy of the image (the disk at that instant) and timings."""

    copy: Path
    frozen: Frozen
    copy_s: float
    copies: int  # attempts until the image was still while it was copied
    stable: bool  # the last copy saw no write, commit or request in flight on the device
    inspected: Any = None  # what ``inspect`` returned, looking at the frozen filesystem


@dataclass
class LoopFs:
    """An ext4 on a loop device over a sparse image in /dev/shm, mounted at
    ``mountpoint``; power cuts by freezing processes and copying the image.

    Use it as a context manager (or call ``close``): it unmounts (``umount``, then
    ``umount -l`` if the mount stays busy), detaches only the loop devices it attached,
    and deletes every image it made. Whoever runs processes on the mount must have them
    dead before (``cut`` kills what it froze)."""

    mountpoint: Path
    size_mb: int = 384
    tag: str = "foldermill-powercut"
    mount_options: str = MOUNT_OPTIONS
    image: Path | None = None
    device: str = ""  # the loop device mounted at mountpoint, "" if none
    mounted: bool = False
    attached: list[str] = field(default_factory=list)  # devices we attached and have not detached yet
    images: list[Path] = field(default_factory=list)  # images we made and have not deleted yet
    notes: list[str] = field(default_factory=list)  # teardown trouble, for the report

    def __enter__(self) -> LoopFs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def create(self) -> None:
        """A fresh filesystem in a new sparse image, mounted at ``mountpoint``."""
        image = self._new_image("img")
        with open(image, "wb") as f:
            f.truncate(self.size_mb << 20)
        run(*MKFS, str(image))
        self._attach_and_mount(image)

    def _new_image(self, kind: str) -> Path:
        path = SHM / f"{self.tag}-{os.getpid()}-{time.monotonic_ns()}.{kind}"
        self.images.append(path)
        return path

    def _attach_and_mount(self, image: Path) -> None:
        device = run("losetup", "--find", "--show", str(image)).strip()
        self.attached.append(device)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        run("mount", "-o", self.mount_options, device, str(self.mountpoint))
        self.image, self.device, self.mounted = image, device, True

    def activity(self) -> tuple[int, int, int, int]:
        """(writes completed, sectors written, requests in flight, journal transactions)
        of the mounted device: unchanged across a copy means the image stood still."""
        name = Path(self.device).name
        stat = Path(f"/sys/block/{name}/stat").read_text().split()
        infos = glob.glob(f"/proc/fs/jbd2/{name}-*/info")
        transactions = int(Path(infos[0]).read_text().split()[0]) if infos else -1
        return int(stat[4]), int(stat[6]), int(stat[8]), transactions

    def snapshot(self) -> tuple[Path, int, bool]:
        """Copy the image as it is now: (copy, attempts, stable). Kernel threads still
        run, so the copy is taken again while the device wrote or committed during it."""
        assert self.image is not None, "create() first"
        copy = self._new_image("copy")
        for attempt in range(1, COPY_ATTEMPTS + 1):
            before = self.activity()
            run("cp", "--sparse=always", str(self.image), str(copy))
            after = self.activity()
            if before == after and after[2] == 0:
                return copy, attempt, True
            pace(0.05)  # let the kernel's write finish before the next copy
        return copy, COPY_ATTEMPTS, False

    def cut(self, pids: Iterable[int], inspect: Callable[[], Any] | None = None) -> Cut:
        """A power cut: freeze ``pids`` and their descendants, copy the image, call
        ``inspect`` (the frozen processes' view of the filesystem, e.g. to tell which
        phase the cut landed in; the copy is taken already, so looking changes nothing),
        then SIGKILL every frozen process and wait until each is gone."""
        frozen = freeze(pids)
        try:
            started = time.monotonic()
            copy, copies, stable = self.snapshot()
            copy_s = time.monotonic() - started
            inspected = inspect() if inspect is not None else None
        finally:
            shm = shm_mapped(frozen.pids)
            kill_frozen(frozen.pids)
            # What a reboot clears: the killed processes' semaphores (their resource
            # tracker, which would unlink them, died with them).
            for path in shm - set(self.images):
                path.unlink(missing_ok=True)
        return Cut(copy, frozen, copy_s, copies, stable, inspected)

    def remount(self, copy: Path) -> None:
        """Unmount and detach the original, then attach and mount ``copy`` at the same
        place (ext4 replays its journal). Every process on the mount must be dead."""
        old = self.image
        self.unmount()
        self.detach()
        if old is not None:
            self._delete(old)
        self._attach_and_mount(copy)

    def unmount(self) -> None:
        """``umount``, retried while busy for a few seconds, then ``umount -l``."""
        if not self.mounted:
            return
        deadline = time.monotonic() + UMOUNT_TIMEOUT_S
        while True:
            try:
                run("umount", str(self.mountpoint))
                break
            except PowerCutError as exc:
                if time.monotonic() >= deadline:
                    self.notes.append(f"umount {self.mountpoint} failed ({exc}; processes using it: "
                                      f"{holders(self.mountpoint)}); lazy unmount")
                    run("umount", "-l", str(self.mountpoint))
                    break
                pace(0.1)
        self.mounted = False

    def detach(self) -> None:
        """``losetup -d`` the mounted device (only ever one we attached)."""
        if self.device and self.device in self.attached:
            run("losetup", "-d", self.device)
            self.attached.remove(self.device)
        self.device = ""

    def _delete(self, image: Path) -> None:
        image.unlink(missing_ok=True)
        if image in self.images:
            self.images.remove(image)

    def close(self) -> None:
        """Unmount, detach every device we attached, delete every image we made; goes
        on past a failing step and raises the first failure at the end."""
        errors: list[Exception] = []
        for step in (self.unmount, self.detach):
            try:
                step()
            except PowerCutError as exc:
                errors.append(exc)
        for device in list(self.attached):
            try:
                run("losetup", "-d", device)
                self.attached.remove(device)
            except PowerCutError as exc:
                errors.append(exc)
        for image in list(self.images):
            self._delete(image)
        if errors:
            raise errors[0]


def holders(mountpoint: Path) -> list[int]:
    """Processes with an open file or their cwd under ``mountpoint`` (for messages)."""
    prefix = str(mountpoint.resolve()) + os.sep
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            paths = [f.path for f in proc.open_files()] + [proc.cwd()]
        except psutil.Error:
            continue
        if any(p.startswith(prefix) for p in paths):
            found.append(proc.pid)
    return found
