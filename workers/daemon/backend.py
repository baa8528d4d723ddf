"""The one protocol every backend follows, so that the loop never asks which one it
has: the local multiprocessing pool (``local_pool.py``) or Celery worker nodes behind
Redis (``celery_pool.py``).

A backend takes jobs (``Job``: files already claimed, their final names chosen, and
the pipeline version they need), runs them somewhere, and turns what comes back into
named types: a ``Delivery`` for a result, a ``Returned`` for files it gives back (a
dead worker's job, naming the file it was on; a job the broker lost). It never moves
a queue file, holds no lock and writes no state: the ledger and the commit part do.
"""

from __future__ import annotations

import queue
from typing import Any, Protocol

from workers.config import Config
from workers.daemon.types import Delivery, Returned, Shared
from workers.messages import BrokerNews
from workers.worker import Job, JobResult


class Backend(Protocol):
    """Dispatch jobs, collect results, tell which file a dead worker was on, stop."""

    def start(self, inbox: queue.SimpleQueue) -> None:
        """Get ready to take jobs; results (and news) arrive in ``inbox``."""

    def room(self) -> int:
        """How many more jobs it can take now (0: none, e.g. every worker busy, the broker down)."""

    def submit(self, job: Job) -> bool:
        """Send a job; False if it could not be taken (its files go out again)."""

    def collect(self, result: JobResult) -> Delivery | None:
        """A job's result as this backend accepts it; None when it is stale (its files
        were given back already)."""

    def check(self, now: float, stopping: bool) -> list[Returned]:
        """How the workers are: replace the dead (not while ``stopping``), enforce the
        limits, and give back the files of jobs that will not deliver."""

    def on_message(self, message: BrokerNews) -> None:
        """News from the backend's own threads (the broker went away or came back)."""

    def rebuild(self, shared: Shared) -> list[Returned]:
        """The manager died and ``shared`` replaces it: give back what travelled through it."""

    def reload(self, config: Config, pipeline: str) -> None:
        """A new pipeline and new limits (SIGHUP): jobs from now on need ``pipeline``."""

    def workers(self, now: float) -> list[dict[str, Any]]:
        """One row per worker, for the dashboard."""

    def describe(self) -> dict[str, Any]:
        """The backend's part of the snapshot ("backend", and the broker's state)."""

    def in_progress(self) -> list[tuple[str, int, int]]:
        """(file shown, bytes done, size) of each file being processed, for --once's progress."""

    def idle(self) -> bool:
        """Nothing is still due from it (no orphaned result on its way)."""

    def stop(self) -> None:
        """Stop its workers and threads (files in flight are the ledger's to return)."""
