"""The local backend: a pool of worker processes on this machine (``workers/worker.py``).

It owns the worker slots (each a position whose process is replaced when it dies),
each worker's job queue (a manager queue, up to ``PREFETCH_JOBS`` jobs), the shared
memory progress slots through which a worker says which file it is on, and the limits
(``file_timeout``, ``max_memory_mb``, crash loops). After a worker's death it decides,
as rq's work-horse monitor does, what that death means for each job it held: the
file it was on is named as the culprit; the rest go out again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from workers.config import Config
from workers.daemon.types import Delivery, Returned, Shared
from workers.failure import Failure
from workers.messages import BrokerNews
from workers.names import shown
from workers.worker import (
    P_BYTES,
    P_ITEM,
    P_JOB,
    P_LINES,
    P_PID,
    P_SENT,
    P_STARTED,
    SLOT_SIZE,
    Job,
    JobResult,
    WorkerArgs,
    worker_main,
)

PREFETCH_JOBS = 2  # jobs per worker: one running, one waiting
MEMORY_CHECK_EVERY_S = 0.25
QUICK_DEATH_S = 5.0  # a worker that dies this soon after start, before any job, is flapping
FLAP_DEATHS = 3  # ... this many times in a row: its slot backs off
FLAP_BACKOFF_MAX_S = 60.0
ORPHAN_WAIT_S = 5.0

log = logging.getLogger("foldermill")


@dataclass
class Slot:
    """One worker position: the process in it is replaced when it dies."""

    index: int
    process: Any = None
    jobs: Any = None  # its manager queue
    assigned: dict[int, Job] = field(default_factory=dict)
    started_at: float = 0.0
    kill_cause: str = ""  # why we killed it (timeout, memory), if we did
    recycling: bool = False
    quick_deaths: int = 0
    not_before: float = 0.0
    files_done: int = 0
    rss: int = 0
    restarts: int = 0
    cpu: Any = None  # psutil.Process, for CPU %
    capacity: int = PREFETCH_JOBS  # jobs it may hold at once


class LocalPool:
    """The Backend protocol (``backend.py``) on local worker processes."""

    def __init__(self, ctx: Any, shared: Shared, config: Config, count: int, trace: bool, state_db: Path,
                 restarts: Any) -> None:
        self.ctx = ctx
        self.shared = shared
        self.config = config
        self.trace = trace
        self.state_db = state_db
        self.restarts = restarts  # Stats.restarts: deaths by cause
        self.progress = ctx.RawArray("d", count * SLOT_SIZE)
        self.slots = [Slot(i) for i in range(count)]
        self.orphans: dict[int, tuple[Job, float]] = {}  # a dead worker's last job, whose result is on its way
        self.last_memory = 0.0

    def start(self, inbox: queue.SimpleQueue) -> None:
        """Workers start at the first check; results come through the manager's queue."""

    # -- jobs --------------------------------------------------------------------------------

    def _free(self) -> list[Slot]:
        """Live slots with room for another job, least loaded first."""
        live = [s for s in self.slots if s.process is not None and not s.recycling]
        return sorted((s for s in live if len(s.assigned) < s.capacity), key=lambda s: len(s.assigned))

    def room(self) -> int:
        return sum(s.capacity - len(s.assigned) for s in self._free())

    def submit(self, job: Job) -> bool:
        free = self._free()
        if not free:
            return False
        slot = min(free, key=lambda s: len(s.assigned))
        slot.assigned[job.seq] = job
        try:
            slot.jobs.put(job)
        except (OSError, EOFError):  # the manager died: the next step rebuilds it
            del slot.assigned[job.seq]
            return False
        return True

    def collect(self, result: JobResult) -> Delivery | None:
        slot = self.slots[result.slot] if 0 <= result.slot < len(self.slots) else None
        job = slot.assigned.pop(result.seq, None) if slot else None
        if job is None:
            orphan = self.orphans.pop(result.seq, None)
            job = orphan[0] if orphan else None
        if job is None:
            return None  # stale: its files were requeued after a crash
        if slot is not None:
            slot.rss = result.rss_bytes
            slot.files_done += len(result.items)
            if result.rss_bytes > self.config.workers.max_memory_mb * 1024 * 1024 and slot.process is not None:
                log.info("worker %d uses %d MB (> max_memory_mb): recycling it", result.pid, result.rss_bytes >> 20)
                self._recycle(slot)
        return Delivery(result.seq, result.pid, True, result.items, result.nodes)

    def on_message(self, message: BrokerNews) -> None:
        """The local pool has no threads of its own."""

    # -- how the workers are ---------------------------------------------------------------------

    def check(self, now: float, stopping: bool) -> list[Returned]:
        returned: list[Returned] = []
        check_memory = now - self.last_memory >= MEMORY_CHECK_EVERY_S
        if check_memory:
            self.last_memory = now
        for slot in self.slots:
            if slot.process is None:
                if not stopping and now >= slot.not_before:
                    self._start_worker(slot, now)
            elif slot.process.exitcode is not None:
                returned += self._on_death(slot, now)
            else:
                self._watch_limits(slot, check_memory)
        for seq, (job, deadline) in list(self.orphans.items()):
            if now >= deadline:  # its result never came: treat its files as not started
                del self.orphans[seq]
                returned.append(Returned(seq, job.items))
        return returned

    def rebuild(self, shared: Shared) -> list[Returned]:
        """Every job queue went with the old manager: the workers stop, their jobs come back."""
        returned = []
        for slot in self.slots:
            returned += [Returned(seq, job.items) for seq, job in slot.assigned.items()]
            slot.assigned.clear()
            self._stop_process(slot)
        returned += [Returned(seq, job.items) for seq, (job, _) in self.orphans.items()]
        self.orphans.clear()
        self.shared = shared
        return returned

    def reload(self, config: Config, pipeline: str) -> None:
        """Workers read the pipeline when they start: recycle them after their current job
        (no job goes to a recycling worker, so every job meets the pipeline it needs)."""
        self.config = config
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                self._recycle(slot)

    def idle(self) -> bool:
        return not self.orphans

    def stop(self) -> None:
        for slot in self.slots:
            self._stop_process(slot)

    def _start_worker(self, slot: Slot, now: float) -> None:
        base = slot.index * SLOT_SIZE
        for k in range(SLOT_SIZE):
            self.progress[base + k] = 0
        self.progress[base + P_ITEM] = -1
        try:
            slot.jobs = self.shared.new_queue()
        except (OSError, EOFError):
            return  # the manager is gone: rebuilt on the next step
        w = self.config.workers
        args = WorkerArgs(slot.index, os.getpid(), str(self.config.path), dict(self.config.raw),
                          100 if self.trace else 0, w.durable, w.max_files_per_worker,
                          str(self.state_db) if self.config.watch.dedupe == "content" else "")
        process = self.ctx.Process(target=worker_main, args=(args, slot.jobs, self.shared.results, self.progress),
                                   name=f"foldermill-worker-{slot.index}", daemon=True)
        process.start()
        slot.process = process
        slot.started_at = now
        slot.kill_cause = ""
        slot.recycling = False
        slot.rss = 0

    def _watch_limits(self, slot: Slot, check_memory: bool) -> None:
        base = slot.index * SLOT_SIZE
        busy = self.progress[base + P_ITEM] >= 0 and int(self.progress[base + P_JOB]) in slot.assigned
        if busy and time.monotonic() - self.progress[base + P_STARTED] > self.config.workers.file_timeout:
            self._kill(slot, "timeout")
            return
        if check_memory:
            slot.rss = _rss_of(slot.process.pid)
            if slot.rss > self.config.workers.max_memory_mb * 1024 * 1024:
                if busy:
                    self._kill(slot, "memory")
                elif not slot.recycling:
                    self._recycle(slot)

    def _kill(self, slot: Slot, cause: str) -> None:
        slot.kill_cause = cause
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.process.pid, signal.SIGKILL)

    def _recycle(self, slot: Slot) -> None:
        """Let the worker finish its current job, then exit (SIGTERM)."""
        slot.recycling = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(slot.process.pid, signal.SIGTERM)

    def _stop_process(self, slot: Slot) -> None:
        p = slot.process
        if p is None:
            return
        if p.is_alive():
            p.kill()
        p.join(timeout=5)
        slot.process = None

    def _on_death(self, slot: Slot, now: float) -> list[Returned]:
        process = slot.process
        process.join(timeout=1)
        code = process.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        cause = slot.kill_cause or ("recycled" if slot.recycling or (code == 0) else "crashed")
        self.restarts[cause] += 1
        slot.restarts += 1
        base = slot.index * SLOT_SIZE
        ran_a_job = self.progress[base + P_JOB] > 0
        returned = self._settle_jobs(slot, process.pid, how, cause)
        slot.process = None
        slot.assigned.clear()
        if cause == "crashed" and not ran_a_job and now - slot.started_at < QUICK_DEATH_S:
            slot.quick_deaths += 1
        elif ran_a_job:
            slot.quick_deaths = 0
        if slot.quick_deaths >= FLAP_DEATHS:
            delay = min(FLAP_BACKOFF_MAX_S, 2.0 ** (slot.quick_deaths - FLAP_DEATHS + 1))
            slot.not_before = now + delay
            log.error("worker slot %d is crash-looping (%d deaths right after start, last: %s); "
                      "next start in %.0fs", slot.index, slot.quick_deaths, how, delay)
        elif cause != "recycled":
            log.warning("worker %d %s (%s); starting a new one", process.pid, how, cause)
        return returned

    def _settle_jobs(self, slot: Slot, pid: int, how: str, cause: str) -> list[Returned]:
        """What a worker's death means for each job it held: the file it was on is the
        culprit (one attempt); the others were fine or not started, and go out again.
        The job whose result it had just sent is an orphan: its result is on the way."""
        base = slot.index * SLOT_SIZE
        current = int(self.progress[base + P_JOB])
        sent = int(self.progress[base + P_SENT])
        item = int(self.progress[base + P_ITEM])
        same_pid = int(self.progress[base + P_PID]) == pid
        reasons = {"timeout": f"took longer than file_timeout = {self.config.workers.file_timeout:g}s",
                   "memory": f"used more than max_memory_mb = {self.config.workers.max_memory_mb}"}
        returned = []
        for seq, job in list(slot.assigned.items()):
            if same_pid and seq == sent:
                self.orphans[seq] = (job, time.monotonic() + ORPHAN_WAIT_S)
                continue
            if same_pid and seq == current and 0 <= item < len(job.items):
                reason = f"worker {pid} {how} while processing it"
                if cause in reasons:
                    reason = f"{reasons[cause]}: worker {pid} {how}"
                returned.append(Returned(seq, job.items, job.items[item],
                                         Failure(reason, cause if cause in reasons else "crash", worker=pid)))
            else:
                returned.append(Returned(seq, job.items))
        return returned

    # -- what is shown ---------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"backend": "local"}

    def in_progress(self) -> list[tuple[str, int, int]]:
        found = []
        for slot in self.slots:
            base = slot.index * SLOT_SIZE
            job = slot.assigned.get(int(self.progress[base + P_JOB]))
            item = int(self.progress[base + P_ITEM])
            if job is not None and 0 <= item < len(job.items):
                it = job.items[item]
                found.append((shown(it.name), int(self.progress[base + P_BYTES]), it.size))
        return found

    def workers(self, now: float) -> list[dict[str, Any]]:
        return [self._worker_row(slot, now) for slot in self.slots]

    def _worker_row(self, slot: Slot, now: float) -> dict[str, Any]:
        base = slot.index * SLOT_SIZE
        process = slot.process
        row: dict[str, Any] = {"slot": slot.index, "pid": process.pid if process else None,
                               "alive": bool(process and process.is_alive()), "files_done": slot.files_done,
                               "restarts": slot.restarts, "rss": slot.rss, "file": None, "progress_percent": None,
                               "lines_done": 0, "cpu_percent": 0.0,
                               "uptime_s": round(now - slot.started_at, 1) if process else 0.0}
        if process is None:
            row["state"] = "backoff" if slot.not_before > now else "starting"
            return row
        if int(self.progress[base + P_PID]) != process.pid:
            row["state"] = "starting"
            return row
        job = slot.assigned.get(int(self.progress[base + P_JOB]))
        item = int(self.progress[base + P_ITEM])
        if job is not None and 0 <= item < len(job.items):
            it = job.items[item]
            done = self.progress[base + P_BYTES]
            row.update(state="busy", file=shown(it.name), lines_done=int(self.progress[base + P_LINES]),
                       progress_percent=round(min(100.0, 100.0 * done / it.size), 1) if it.size else 100.0)
        else:
            row["state"] = "idle"
        try:
            if slot.cpu is None or slot.cpu.pid != process.pid:
                slot.cpu = psutil.Process(process.pid)
            row["cpu_percent"] = slot.cpu.cpu_percent(None)
        except psutil.Error:
            pass
        return row


def _rss_of(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0
