"""The census: how many files each queue folder holds, for the dashboard and /metrics,
without listing a folder of a million files twice a second.

``underprocess/``, ``processed/`` and ``failed/`` are listed once at start, then kept
by our own moves (``FolderQueue.moved``: a claim, a commit, a put-back, a recovery, a
retry), and listed again at most every ``RECOUNT_EVERY_S``, or less often when a listing
is costly (a listing takes at most ``1 / COST_SHARE`` of the loop's time), which puts
right whatever someone else changed by hand (a file archived out of ``processed/``, a
CLI ``retry``). ``unprocessed/`` is the backlog's count (``workers/daemon/backlog.py``).
"""

from __future__ import annotations

import time

from workers.queue import FolderQueue

RECOUNT_EVERY_S = 10.0
COST_SHARE = 50.0
LISTED = ("underprocess", "processed", "failed")


class Census:
    """Counts per folder: a listing, plus our moves since."""

    def __init__(self, queue: FolderQueue) -> None:
        self.queue = queue
        self.listed: dict[str, int] = {}
        self.listed_at = float("-inf")
        self.cost = 0.0

    def due(self, now: float) -> bool:
        return now - self.listed_at >= max(RECOUNT_EVERY_S, COST_SHARE * self.cost)

    def recount(self, now: float) -> None:
        started = time.perf_counter()
        self.listed = self.queue.counts(LISTED)
        self.queue.counted(LISTED)
        self.cost = time.perf_counter() - started
        self.listed_at = now

    def counts(self, now: float, waiting: int) -> dict[str, int]:
        if self.due(now):
            self.recount(now)
        moved = self.queue.moves()
        return {"unprocessed": waiting, **{f: max(0, n + moved[f]) for f, n in self.listed.items()}}
