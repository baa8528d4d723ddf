"""State retention: the records of finished files and the dedupe digests do not grow
forever (``[watch] state_retention_days``, ``dedupe_retention_days``).

A daemon part. The loop calls ``Retention.step`` every step; it prunes in small transactions
(``Store.prune``, at most ``PRUNE_ROWS`` rows each), one batch per step while there is
a backlog of old rows and then once a minute, so it never holds the loop for more than
a few milliseconds.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from workers.store import Store

log = logging.getLogger("foldermill")

DAY_S = 86400.0
IDLE_EVERY_S = 60.0  # between passes once nothing old is left (shorter for a short retention)
BUSY_EVERY_S = 0.5  # between batches while old rows remain


class Retention:
    """Owns when to prune; the store owns what a prune removes."""

    def __init__(self, store: Store, state_days: float, dedupe_days: float,
                 held: Callable[[str, str], bool]) -> None:
        self.store = store
        self.state_s = state_days * DAY_S
        self.dedupe_s = dedupe_days * DAY_S
        self.held = held
        self.idle_s = max(1.0, min(IDLE_EVERY_S, min(x for x in (self.state_s, self.dedupe_s, IDLE_EVERY_S * 10)
                                                        if x) / 10))
        self.due = 0.0  # monotonic: the first pass comes at once
        self.pruned = 0  # rows removed since start (logged once a pass ends)

    def step(self, now: float) -> None:
        """``now``: ``time.monotonic()``. Cutoffs are wall-clock ages of the records."""
        if now < self.due or not (self.state_s or self.dedupe_s):
            return
        wall = time.time()
        never = 0.0  # a cutoff nothing is older than
        try:
            removed, more = self.store.prune(wall - self.state_s if self.state_s else never,
                                             wall - self.dedupe_s if self.dedupe_s else never, self.held)
        except sqlite3.OperationalError as exc:  # locked by another supervisor for long: next time
            log.debug("state retention: %s; trying again later", exc)
            self.due = now + self.idle_s
            return
        self.pruned += removed
        self.due = now + (BUSY_EVERY_S if more else self.idle_s)
        if not more and self.pruned:
            log.info("state retention: forgot %d record(s) older than %g days (digests: %g days)",
                     self.pruned, self.state_s / DAY_S, self.dedupe_s / DAY_S)
            self.pruned = 0
