"""The HTML dashboard and the JSON API over the supervisor's snapshot: /stats /trace
/errors /health (the console's reads and the actions are in ``web/console.py``)."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from workers.config import Config

bp = Blueprint("dashboard", __name__)
HEALTH_MAX_AGE_S = 5.0


SNAPSHOT_TTL_S = 0.25  # the supervisor publishes twice a second: fresher is not possible


def snapshot() -> dict[str, Any]:
    """The latest published snapshot, or {}. One round trip to the manager at most every
    SNAPSHOT_TTL_S, however many requests come: load on the dashboard must not become
    load on the manager (and through it on the supervisor's machine)."""
    cache = current_app.config.setdefault("FOLDERMILL_CACHE", {"at": -1.0, "value": {}, "lock": threading.Lock()})
    with cache["lock"]:
        now = time.monotonic()
        if now - cache["at"] >= SNAPSHOT_TTL_S:
            try:
                cache["value"] = dict(current_app.config["FOLDERMILL_STATE"].get("snapshot") or {})
            except (OSError, EOFError):  # the manager is gone: the supervisor is stopping
                cache["value"] = {}
            cache["at"] = now
        return cache["value"]


def _config() -> Config:
    return current_app.config["FOLDERMILL_CONFIG"]


@bp.get("/", endpoint="index")
def index() -> Response:
    return current_app.send_static_file("index.html")


@bp.get("/stats", endpoint="stats")
def stats() -> Response:
    s = snapshot()
    return jsonify({
        "time": s.get("time"),
        "supervisor": s.get("owner"),
        "intake_paused": s.get("intake_paused", False),
        "folders": s.get("folders", {}),
        "in_flight": s.get("in_flight", 0),
        "oldest_unprocessed_age_s": s.get("oldest_unprocessed_age_s"),
        "totals_since_start": s.get("totals_since_start", {}),
        "totals_since_journal_began": s.get("totals_since_journal_began", {}),
        "throughput": s.get("throughput", {}),
        "history": s.get("history", []),
        "workers": s.get("workers", []),
        "restarts": s.get("restarts", {}),
        "attempts_failed": s.get("attempts_failed", {}),
        "nodes": s.get("nodes", {}),
        "graph": s.get("graph", []),
        "graph_layout": s.get("graph_layout", []),
        "backend": s.get("backend", "local"),
        "broker": s.get("broker"),
        "machine_fault": s.get("machine_fault"),
        "changed_while_processing": s.get("changed_while_processing", 0),
        "writers": s.get("writers", {}),
    })


@bp.get("/trace", endpoint="trace")
def trace() -> Response:
    s = snapshot()
    current = [{"worker": w.get("pid"), "file": w.get("file"), "progress_percent": w.get("progress_percent"),
                "lines_done": w.get("lines_done")} for w in s.get("workers", []) if w.get("file")]
    return jsonify({"current": current, "recent": s.get("recent_files", [])[:10],
                    "tracing": s.get("tracing", False), "routes": s.get("routes", [])})


@bp.get("/errors", endpoint="errors")
def errors() -> Response:
    return jsonify({"errors": snapshot().get("recent_errors", [])})


@bp.get("/health", endpoint="health")
def health() -> tuple[Response, int]:
    s = snapshot()
    problems = []
    if not s:
        problems.append("no state published by the supervisor")
    else:
        age = time.time() - float(s.get("loop_tick", 0))
        if age > HEALTH_MAX_AGE_S:
            problems.append(f"the supervisor loop has not ticked for {age:.1f}s")
        # A slot between two workers (recycled after max_files_per_worker, or by a reload)
        # is "starting": that is no outage. One backing off from a crash loop is.
        if not any(w.get("alive") or w.get("state") == "starting" for w in s.get("workers", [])):
            problems.append("no worker is alive")
        broker = s.get("broker")
        if broker and not broker.get("ok"):
            problems.append(f"the broker is unreachable: {broker.get('error')}")
        fault = s.get("machine_fault")
        if fault:
            problems.append(f"intake paused by a fault of the machine: {fault.get('message')}")
    body = {"status": "ok" if not problems else "unhealthy", "problems": problems,
            "machine_fault": s.get("machine_fault"), "writers": s.get("writers", {}),
            "file_events": s.get("file_events", "")}
    return jsonify(body), 200 if not problems else 503
