"""The Celery backend: worker nodes behind Redis run the jobs (``workers/celery_app.py``);
this process still claims, commits and moves every file.

It owns the jobs out on the broker (up to ``[celery] prefetch_jobs``), when each was
sent, the watch that tells a lost job from a slow one (``workers/remote.py``
``JobWatch``), and the broker's state. Delivery underneath is at-least-once: the first
of a job's executions to arrive is the one committed; a late or duplicate one is not
accepted (its staged files go), and an item whose staged output vanished is sent again.
Each job carries the pipeline version it needs, with that pipeline's tables: a node
that has an older one reloads it first (SIGHUP reaches the nodes through the jobs).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from workers.config import Config
from workers.daemon.types import Delivery, Returned, Shared
from workers.messages import BrokerNews
from workers.queue import QueueSetupError
from workers.worker import Job, JobResult

log = logging.getLogger("foldermill")


class CeleryPool:
    """The Backend protocol (``backend.py``) on Celery worker nodes."""

    def __init__(self, config: Config, owner: str, trace: bool, pipeline: str) -> None:
        from workers.remote import CeleryBackend, JobWatch  # Celery and redis only with this backend

        self.client = CeleryBackend(config, owner, 100 if trace else 0, pipeline)
        self.sent: dict[int, float] = {}  # job seq -> when it was sent (monotonic)
        self.watch = JobWatch(config, self.sent)
        self.assigned: dict[int, Job] = {}
        self.capacity = config.celery.prefetch_jobs
        self.config = config
        self._stop = threading.Event()

    def start(self, inbox: queue.SimpleQueue) -> None:
        from workers.remote import BackendMissing

        try:
            self.client.preflight()
        except BackendMissing as exc:
            raise QueueSetupError(str(exc)) from None
        threading.Thread(target=self.client.pump, args=(inbox, self._stop), name="celery-pump",
                         daemon=True).start()
        log.info("backend: celery, broker %s, queue %r, replies on %s", self.config.celery.broker_url,
                 self.config.celery.queue, self.client.reply)

    def room(self) -> int:
        if not self.client.broker_ok:
            return 0
        return max(0, self.capacity - len(self.assigned))

    def submit(self, job: Job) -> bool:
        self.assigned[job.seq] = job
        self.sent[job.seq] = time.monotonic()
        try:
            self.client.send(job)
        except (OSError, EOFError):  # BrokerDown: the files go out again once it is back
            del self.assigned[job.seq]
            self.sent.pop(job.seq, None)
            return False
        return True

    def collect(self, result: JobResult) -> Delivery | None:
        """The first of a job's executions to arrive is accepted; any other (late, a
        duplicate, or of a job sent again) never is. An accepted item whose staged
        file is gone is sent again."""
        self.watch.forget(result.seq)
        job = self.assigned.pop(result.seq, None)
        if job is None:
            return Delivery(result.seq, result.pid, False, result.items)
        out = self.config.output_dir
        resend = frozenset(res.file_id for res in result.items
                           if res.ok and not all(os.path.exists(out / temp) for temp, _ in res.staged))
        return Delivery(result.seq, result.pid, True, result.items, result.nodes, resend)

    def on_message(self, message: BrokerNews) -> None:
        """The broker went away or came back. The jobs that were out stay out: their
        executions may still run (and their results arrive); only those the broker
        really lost are given back, by check(), once that is known."""
        if not message.ok:
            log.error("the broker is unreachable (%s): claimed files wait; new claims stop", message.error)
            return
        log.warning("the broker is back: %d job(s) out are kept; any the broker lost go out again",
                    len(self.assigned))
        self.watch.outage_over(time.monotonic(), list(self.assigned))

    def check(self, now: float, stopping: bool) -> list[Returned]:
        """Jobs the broker really lost go out again; a job with a live execution never
        does, however long it takes."""
        if not self.assigned or not self.client.broker_ok or not self.watch.due(now):
            return []
        states = self.client.job_states(list(self.assigned))
        returned = []
        for seq in self.watch.lost(now, self.assigned, states or {}):
            job = self.assigned.pop(seq)
            self.watch.forget(seq)
            log.warning("job %d (%d files) was lost by the broker: sending its files again", seq, len(job.items))
            returned.append(Returned(seq, job.items))
        return returned

    def rebuild(self, shared: Shared) -> list[Returned]:
        return []  # nothing of ours travels through the manager

    def reload(self, config: Config, pipeline: str) -> None:
        """Jobs sent from now on carry the new pipeline and limits; nodes reload them."""
        self.config = config
        self.client.use(config, pipeline)

    def workers(self, now: float) -> list[dict[str, Any]]:
        return self.client.workers() if self.client.broker_ok else []

    def describe(self) -> dict[str, Any]:
        ok = self.client.broker_ok
        return {"backend": "celery",
                "broker": {"ok": ok, "error": self.client.broker_error,
                           "queue_depth": self.client.queue_depth() if ok else None}}

    def in_progress(self) -> list[tuple[str, int, int]]:
        return []

    def idle(self) -> bool:
        return True

    def stop(self) -> None:
        self._stop.set()
