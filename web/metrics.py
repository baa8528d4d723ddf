"""``/metrics``: Prometheus text format from a custom collector over the snapshot.

The collector computes every value at scrape time from the snapshot handed in and
keeps nothing between scrapes; it lives in a private registry (prometheus/client_python's
custom-collector pattern). No file name is ever a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from workers.faults import KINDS as FAULT_KINDS
from workers.pipelines import split_node_key

bp = Blueprint("metrics", __name__)


class FoldermillCollector:
    def __init__(self, source: Callable[[], dict[str, Any]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        s = self.source()
        totals = s.get("totals_since_start", {})
        yield _counter("foldermill_files_processed", "Files processed since the supervisor started.",
                       totals.get("files_processed", 0))
        yield _counter("foldermill_files_failed", "Files given up (moved to failed/) since start.",
                       totals.get("files_failed", 0))
        yield _counter("foldermill_lines_processed", "Input lines of processed files since start.",
                       totals.get("lines_processed", 0))
        yield _labelled(CounterMetricFamily, "foldermill_file_attempts_failed",
                        "Failed attempts by reason (crash, timeout, memory, error, input).", "reason",
                        s.get("attempts_failed", {}))
        yield _labelled(CounterMetricFamily, "foldermill_worker_restarts",
                        "Worker processes replaced, by cause.", "cause", s.get("restarts", {}))
        yield from self._pipelines(s.get("pipeline_names", []), s.get("pipelines", {}))
        yield from self._nodes(s.get("nodes", {}))
        yield _labelled(GaugeMetricFamily, "foldermill_queue_files", "Files in each queue folder.", "folder",
                        s.get("folders", {}))
        age = s.get("oldest_unprocessed_age_s")
        yield GaugeMetricFamily("foldermill_oldest_unprocessed_age_seconds",
                                "Age of the oldest file waiting in unprocessed/ (0 when none).", value=age or 0)
        # The state of the loop's last step is what every other value here shows: a value
        # that stops moving while scrapes succeed is a stuck loop (alert FoldermillStalled).
        yield GaugeMetricFamily("foldermill_loop_last_step_timestamp_seconds",
                                "Unix time of the supervisor loop's last step; the other values are the state "
                                "of then (0 before the first).", value=s.get("loop_tick") or 0)
        yield from self._workers(s.get("workers", []))
        broker = s.get("broker") or {}
        if broker.get("queue_depth") is not None:
            yield GaugeMetricFamily("foldermill_broker_queue_jobs", "Jobs waiting on the Celery broker's queue.",
                                    value=broker["queue_depth"])
        yield from self._histogram(s.get("histogram"))
        yield from self._faults(s)

    def _faults(self, s: dict[str, Any]) -> Iterator[Metric]:
        """The fault of the machine that pauses intake (1 for its kind), episodes by
        kind, whether intake is paused at all, inputs caught still being written."""
        faults = s.get("faults") or {}
        active = faults.get("active")
        episodes = faults.get("episodes") or dict.fromkeys(FAULT_KINDS, 0)
        yield _labelled(GaugeMetricFamily, "foldermill_machine_fault", "1 while a fault of the machine of this "
                        "kind pauses intake (a full disk, a quota, no descriptors...).", "kind",
                        {k: int(k == active) for k in episodes})
        yield _labelled(CounterMetricFamily, "foldermill_machine_faults", "Times intake was paused by a fault of "
                        "the machine, by kind.", "kind", episodes)
        yield GaugeMetricFamily("foldermill_intake_paused", "1 while no new file is claimed (paused by an operator "
                                "or by a fault of the machine).", value=int(bool(s.get("intake_paused") or active)))
        yield _counter("foldermill_inputs_changed_while_processing", "Inputs caught still being written between "
                       "their claim and their commit (never committed; processed again once stable).",
                       s.get("changed_while_processing", 0))

    def _pipelines(self, names: list[str], figures: dict[str, dict[str, int]]) -> Iterator[Metric]:
        """Per pipeline: its label values are the configured names (and those a reload
        removed while their files were counted), never a file's name."""
        files = CounterMetricFamily("foldermill_pipeline_files", "Files finished since start, by pipeline and "
                                    "outcome.", labels=["pipeline", "outcome"])
        lines = CounterMetricFamily("foldermill_pipeline_lines", "Input lines (CSV: records) of processed "
                                    "files since start, by pipeline.", labels=["pipeline"])
        for name in dict.fromkeys([*names, *sorted(figures)]):
            f = figures.get(name, {})
            files.add_metric([name, "processed"], f.get("files_processed", 0))
            files.add_metric([name, "failed"], f.get("files_failed", 0))
            lines.add_metric([name], f.get("lines_processed", 0))
        yield files
        yield lines

    def _nodes(self, nodes: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        lines = CounterMetricFamily("foldermill_node_lines", "Lines into and out of each node.",
                                    labels=["pipeline", "node", "direction"])
        errors = CounterMetricFamily("foldermill_node_errors", "Lines a node failed on.", labels=["pipeline", "node"])
        for key, n in sorted(nodes.items()):
            pipeline, tag = split_node_key(key)
            lines.add_metric([pipeline, tag, "in"], n.get("lines_in", 0))
            lines.add_metric([pipeline, tag, "out"], n.get("lines_out", 0))
            errors.add_metric([pipeline, tag], n.get("errors", 0))
        yield lines
        yield errors

    def _workers(self, workers: list[dict[str, Any]]) -> Iterator[Metric]:
        states = {"busy": 0, "idle": 0, "starting": 0, "backoff": 0}
        rss = GaugeMetricFamily("foldermill_worker_rss_bytes", "Resident memory of each worker slot.",
                                labels=["worker"])
        for w in workers:
            states[w.get("state", "idle")] = states.get(w.get("state", "idle"), 0) + 1
            if w.get("backend") != "celery":
                rss.add_metric([str(w.get("slot"))], w.get("rss", 0))
        yield _labelled(GaugeMetricFamily, "foldermill_workers", "Worker slots by state.", "state", states)
        yield rss

    def _histogram(self, h: dict[str, Any] | None) -> Iterator[Metric]:
        if not h:
            h = {"buckets": [], "counts": [0], "sum": 0.0}
        running, buckets = 0, []
        for bound, count in zip([*h["buckets"], float("inf")], h["counts"], strict=False):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        yield HistogramMetricFamily("foldermill_file_processing_seconds",
                                    "Seconds a worker spent on each processed file.",
                                    buckets=buckets, sum_value=h["sum"])


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(kind: type, name: str, doc: str, label: str, values: Mapping[str, float]) -> Metric:
    family = kind(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


def exposition(source: Callable[[], dict[str, Any]]) -> bytes:
    """The text format of the collector over ``source``, in a private registry: what
    /metrics answers (and what the metrics reference is made from, docs/hooks.py)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FoldermillCollector(source))
    return generate_latest(registry)


@bp.get("/metrics", endpoint="metrics")
def metrics() -> Response:
    from web.dashboard import snapshot

    # content_type, not mimetype: CONTENT_TYPE_LATEST has its charset already (Flask would add another).
    return Response(exposition(snapshot), content_type=CONTENT_TYPE_LATEST)
