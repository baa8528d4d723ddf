"""The publisher: what the daemon shows. It owns the running figures (``Stats``, fed by
the other parts through its methods), the last publish and summary times, and the
--once progress view; it writes one snapshot into the manager dict at most every
``PUBLISH_EVERY_S`` (the dashboard and /metrics read only that), logs a summary line
every ``SUMMARY_EVERY_S``, and draws the progress of --once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from workers.daemon.types import Report, Tally
from workers.progress import Progress
from workers.state import Stats

PUBLISH_EVERY_S = 0.5
SUMMARY_EVERY_S = 10.0

log = logging.getLogger("foldermill")


class Publisher:
    """Snapshots for the dashboard, summary lines for the log, progress for --once."""

    def __init__(self, stats: Stats, tally: Tally, owner: str, trace: bool) -> None:
        self.stats = stats
        self.tally = tally
        self.owner = owner
        self.trace = trace
        self.state: Any = None  # the manager dict proxy
        self.url = ""
        self.loop_tick = time.time()
        self.last_publish = 0.0
        self.last_summary = time.monotonic()
        self.view: Progress | None = None
        self.writers: dict[str, Any] = {}

    def attach(self, state: Any) -> None:
        """The manager dict to publish into (again after the manager was rebuilt)."""
        self.state = state

    def serving(self, url: str) -> None:
        self.url = url

    def writers_seen(self, sight: dict[str, Any]) -> None:
        """How this daemon sees writers (``workers/readiness.py`` ``Sight``), found at start."""
        self.writers = sight

    def beat(self) -> None:
        """The loop is alive (its last tick is in every snapshot, for /health)."""
        self.loop_tick = time.time()

    def tick(self, now: float, report: Callable[[], Report], in_flight: int) -> None:
        if now - self.last_publish >= PUBLISH_EVERY_S:
            self.publish(now, report())
        if now - self.last_summary >= SUMMARY_EVERY_S:
            self.summary(now, in_flight)

    def publish(self, now: float, report: Report) -> None:
        """One snapshot into the manager dict (one round trip) for the dashboard."""
        self.last_publish = now
        wall = time.time()
        oldest = report.oldest_waiting_mtime
        snapshot = {
            "time": wall, "owner": self.owner, "started": self.stats.started, "loop_tick": self.loop_tick,
            "intake_paused": report.paused, "in_flight": report.in_flight, "folders": report.folders,
            "oldest_unprocessed_age_s": max(0.0, wall - oldest) if oldest is not None else None,
            "workers": report.workers, "graph": report.graph,
            "graph_layout": report.layout, "pipeline_names": report.pipelines, **report.backend,
            "tracing": self.trace, "url": self.url, "machine_fault": report.machine, "faults": report.faults,
            "writers": self.writers, "file_events": report.file_events, **self.stats.snapshot_part(wall),
        }
        with contextlib.suppress(Exception):  # the manager may be gone while stopping
            self.state["snapshot"] = snapshot

    def summary(self, now: float, in_flight: int) -> None:
        s = self.tally.take_summary()
        if any(s.values()):
            log.info("last %.0fs: %d files processed (%d lines), %d retried, %d failed; %d in flight",
                     now - self.last_summary, s["files"], s["lines"], s["retried"], s["failed"], in_flight)
        self.last_summary = now

    def progress(self, in_progress: list[tuple[str, int, int]], waiting_files: int, waiting_bytes: int,
                 final: bool = False) -> None:
        """--once: a bar on a terminal, periodic lines otherwise (workers/progress.py)."""
        if self.view is None:
            if final:
                return
            self.view = Progress(sys.stderr)
        done, done_bytes = self.tally.done_files, self.tally.done_bytes
        self.view.update(done, done + waiting_files, done_bytes + sum(d for _, d, _ in in_progress),
                         done_bytes + waiting_bytes, in_progress, final=final)
