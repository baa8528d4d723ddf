"""The shared-state schema: what the supervisor publishes into the manager dict.

The supervisor alone accumulates these figures (from job results, worker deaths and
its own moves), so counters never go backwards whatever happens to workers; twice a
second it publishes one plain snapshot (``snapshot()``) under the key ``"snapshot"``
with a single round trip. The dashboard and ``/metrics`` read that snapshot and nothing
else. Everything here is plain data: no processes, no queues.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from workers.failure import Failure

HISTOGRAM_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)
WINDOWS = {"1m": 60, "5m": 300, "15m": 900}
RECENT_FILES = 10
RECENT_ERRORS = 100
RECENT_ROUTES = 20


class Stats:
    """Running figures of one supervisor (since it started), plus the totals kept in
    the state database (since the journal began)."""

    def __init__(self, started: float, db_totals: dict[str, int]) -> None:
        self.started = started
        self.db_totals = Counter(db_totals)
        self.totals: Counter[str] = Counter()
        self.attempts_failed: Counter[str] = Counter()  # by reason class
        self.restarts: Counter[str] = Counter()  # by cause
        self.nodes: dict[str, list[float]] = {}  # "pipeline/tag" -> [in, out, errors, seconds]
        self.pipelines: dict[str, Counter[str]] = {}  # name -> files_processed, files_failed, lines_processed
        self.buckets = [0] * (len(HISTOGRAM_BUCKETS) + 1)
        self.seconds_sum = 0.0
        self.per_second: deque[list[float]] = deque()  # [second, files, lines]
        self.recent_files: deque[dict[str, Any]] = deque(maxlen=RECENT_FILES)
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self.routes: deque[dict[str, Any]] = deque(maxlen=RECENT_ROUTES)
        self.changed_while_processing = 0  # inputs caught still being written between claim and commit

    def processed(self, name: str, lines: int, seconds: float, worker: int, now: float, pipeline: str = "") -> None:
        if pipeline:
            per = self.pipelines.setdefault(pipeline, Counter())
            per["files_processed"] += 1
            per["lines_processed"] += lines
        self.totals["files_processed"] += 1
        self.totals["lines_processed"] += lines
        self.db_totals["files_processed"] += 1
        self.db_totals["lines_processed"] += lines
        self._observe(seconds)
        self._tick(now, 1, lines)
        self.recent_files.appendleft({"time": now, "file": name, "lines": lines, "seconds": round(seconds, 6),
                                      "outcome": "processed", "worker": worker, "pipeline": pipeline})

    def attempt_failed(self, name: str, attempt: int, failure: Failure, final: bool, pipeline: str = "",
                       now: float | None = None) -> None:
        """A failed attempt (``final``: the file's last): counted, and shown in the
        dashboard's recent errors (and recent files, when final)."""
        now = time.time() if now is None else now
        if final and pipeline:
            self.pipelines.setdefault(pipeline, Counter())["files_failed"] += 1
        self.attempts_failed[failure.cause] += 1
        key = "files_failed" if final else "files_retried"
        self.totals[key] += 1
        self.db_totals[key] += 1
        self.recent_errors.appendleft({"time": now, "file": name, "attempt": attempt, "node": failure.node,
                                       "line": failure.line, "message": failure.reason, "cause": failure.cause,
                                       "pipeline": pipeline})
        if final:
            self.recent_files.appendleft({"time": now, "file": name, "lines": 0, "seconds": 0.0,
                                          "outcome": "failed", "worker": failure.worker, "pipeline": pipeline})

    def route_traced(self, name: str, line: int, route: list[str]) -> None:
        """A traced line's route (``--trace``), for /trace."""
        self.routes.appendleft({"file": name, "line": line, "route": route})

    def input_changed(self) -> None:
        """An input was caught still being written between its claim and its commit."""
        self.changed_while_processing += 1

    def merge_nodes(self, nodes: dict[str, tuple[int, int, int, float]]) -> None:
        for tag, (n_in, n_out, errors, seconds) in nodes.items():
            acc = self.nodes.setdefault(tag, [0, 0, 0, 0.0])
            acc[0] += n_in
            acc[1] += n_out
            acc[2] += errors
            acc[3] += seconds

    def _observe(self, seconds: float) -> None:
        self.seconds_sum += seconds
        for i, bound in enumerate(HISTOGRAM_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1

    def _tick(self, now: float, files: int, lines: int) -> None:
        second = int(now)
        if self.per_second and self.per_second[-1][0] == second:
            self.per_second[-1][1] += files
            self.per_second[-1][2] += lines
        else:
            self.per_second.append([second, files, lines])
        while self.per_second and self.per_second[0][0] < second - WINDOWS["15m"]:
            self.per_second.popleft()

    def throughput(self, now: float) -> dict[str, dict[str, float]]:
        out = {}
        for name, span in WINDOWS.items():
            since = now - span
            files = sum(f for s, f, _ in self.per_second if s >= since)
            lines = sum(n for s, _, n in self.per_second if s >= since)
            span_s = min(span, max(1.0, now - self.started))
            out[name] = {"files_per_s": files / span_s, "lines_per_s": lines / span_s}
        return out

    def history(self, now: float, seconds: int = 300) -> list[list[float]]:
        """[second, files, lines] for the chart: the last ``seconds`` seconds."""
        return [list(x) for x in self.per_second if x[0] >= now - seconds]

    def snapshot_part(self, now: float) -> dict[str, Any]:
        return {
            "totals_since_start": dict(self.totals),
            "totals_since_journal_began": dict(self.db_totals),
            "throughput": self.throughput(now),
            "history": self.history(now),
            "attempts_failed": dict(self.attempts_failed),
            "changed_while_processing": self.changed_while_processing,
            "restarts": dict(self.restarts),
            "nodes": {tag: {"lines_in": int(v[0]), "lines_out": int(v[1]), "errors": int(v[2]),
                            "seconds": v[3], "mean_us_per_line": (v[3] / v[0] * 1e6) if v[0] else 0.0}
                      for tag, v in self.nodes.items()},
            "pipelines": {name: dict(c) for name, c in self.pipelines.items()},
            "histogram": {"buckets": list(HISTOGRAM_BUCKETS), "counts": list(self.buckets),
                          "sum": self.seconds_sum},
            "recent_files": list(self.recent_files),
            "recent_errors": list(self.recent_errors),
            "routes": list(self.routes),
        }


def errors_from_journal(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recent errors (newest first) from journal entries, so /errors survives a restart."""
    errors = []
    for e in reversed(entries):
        if e.get("event") in ("retried", "failed"):
            errors.append({"time": _parse_ts(e.get("ts", "")), "file": e.get("file", ""),
                           "attempt": e.get("attempt"), "node": e.get("node", ""), "line": e.get("line"),
                           "message": e.get("reason", ""), "cause": e.get("cause", "")})
            if len(errors) >= RECENT_ERRORS:
                break
    return errors


def _parse_ts(ts: str) -> float:
    try:
        import calendar

        return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000
    except (ValueError, IndexError):
        return 0.0
