"""The operator's verbs: status, retry, history (``python supervisor.py -c config.toml VERB``).

``status`` asks a running supervisor's API when one is up (it announces itself in
``watch_dir/.foldermill/supervisor-<pid>.json``) and otherwise reads the folders and the
journal, and says which. ``retry`` moves failed files back exactly as the dashboard
action does. ``history`` lists every journal entry for one file.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from workers.actions import DISCARDED, SOURCE, Done, check, files_in, journal_fields, perform
from workers.config import Config
from workers.names import shown, unshown
from workers.paths import look, plain
from workers.queue import FolderQueue
from workers.readiness import see_writers
from workers.store import Journal, Store, journal_entry, journal_lines, state_db_path, tail_journal

ANNOUNCE_GLOB = "supervisor-*.json"


def announce(state_dir: Path, pid: int, url: str, owner: str) -> Path:
    """Written by a running supervisor; removed when it stops."""
    path = state_dir / f"supervisor-{pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "url": url, "owner": owner, "started": time.time()}))
    os.replace(tmp, path)
    return path


def running_supervisors(state_dir: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(state_dir.glob(ANNOUNCE_GLOB)):
        try:
            info = json.loads(path.read_text())
            os.kill(int(info["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue  # stale: that supervisor died without cleaning up
        found.append(info)
    return found


def status(config: Config) -> dict[str, Any]:
    """From a running supervisor's /stats when possible, else from disk."""
    q = _queue(config)
    for info in running_supervisors(q.state_dir):
        if not info.get("url"):
            continue
        try:
            with urllib.request.urlopen(info["url"] + "stats", timeout=3) as response:
                stats = json.loads(response.read())
            with urllib.request.urlopen(info["url"] + "errors", timeout=3) as response:
                errors = json.loads(response.read())["errors"][:5]
        except (OSError, ValueError):
            continue
        return {"source": f"running supervisor {info['owner']} at {info['url']}", "folders": stats["folders"],
                "oldest_unprocessed_age_s": stats["oldest_unprocessed_age_s"],
                "workers": [{k: w.get(k) for k in ("pid", "state", "file", "progress_percent")}
                            for w in stats["workers"]],
                "recent_failures": errors, "totals": stats["totals_since_journal_began"],
                "machine_fault": stats.get("machine_fault"), "writers": stats.get("writers") or {}}
    return _status_from_disk(config, q)


def _status_from_disk(config: Config, q: FolderQueue) -> dict[str, Any]:
    candidates = q.scan()
    oldest = min((c.mtime_ns for c in candidates), default=None)
    failures = [e for e in reversed(tail_journal(config.watch.dir / "input.log"))
                if e.get("event") in ("failed", "retried")][:5]
    return {"source": "no supervisor is running: read from the folders and the journal",
            "folders": q.counts(),
            "oldest_unprocessed_age_s": time.time() - oldest / 1e9 if oldest is not None else None,
            "workers": [], "recent_failures": failures, "totals": {}, "machine_fault": None,
            # What a daemon of this user would see (the service may run as another).
            "writers": see_writers(str(q.unprocessed), True, config.watch.settle).as_dict()}


def format_status(s: dict[str, Any]) -> str:
    lines = [f"source: {s['source']}"]
    fault = s.get("machine_fault")
    if fault:
        lines.append(f"INTAKE PAUSED by a fault of the machine: {fault['message']} (it resumes by itself when "
                     "that clears)")
    lines.append("folders: " + ", ".join(f"{k} {v}" for k, v in s["folders"].items()))
    age = s["oldest_unprocessed_age_s"]
    lines.append(f"oldest waiting file: {age:.1f} s" if age is not None else "oldest waiting file: none")
    for w in s["workers"]:
        doing = f"{w['file']} {w['progress_percent']}%" if w.get("file") else "idle"
        lines.append(f"worker {w['pid']}: {w['state']}, {doing}")
    writers = (s.get("writers") or {}).get("summary")
    if writers:
        lines.append("writers are seen by:" + "".join(f"\n  - {w}" for w in writers))
    if s["recent_failures"]:
        lines.append("recent failures:")
        for f in s["recent_failures"]:
            lines.append(f"  {f.get('file')}: {f.get('message') or f.get('reason')}")
    return "\n".join(lines)


def act(config: Config, action: str, names: list[str], every: bool = False) -> tuple[list[str], list[str]]:
    """retry, discard or replay files (``workers/actions.py``), each journalled.
    Returns (what was done, problems), in shown names."""
    q = _queue(config)
    source = q.root / SOURCE[action]
    if every:
        names = files_in(q.root, SOURCE[action], q.recursive)
    w = config.watch
    store = Store(state_db_path(config.watch.dir)) if action == "replay" else None
    journal = Journal(w.dir / "input.log", int(w.journal_max_mb * 1024 * 1024), w.journal_keep,
                      q.locks_dir / "journal.lock")
    done, problems = [], []
    try:
        for name in names:
            name = resolve(source, name)
            # A file sent back to unprocessed/ may be claimed by a running daemon at once: its
            # request goes in the journal before the move, so that the journal's order is
            # the order of events (a move that then fails, or raises, is journalled refused).
            early = action != "discard" and not check(q.root, action, name, q.recursive)
            if early:
                event, fields = journal_fields(Done(action, name))
                journal.write([journal_entry(event, name, by="cli", **fields)])
            try:
                result = perform(q, action, name, store)
            except Exception as exc:
                if early:
                    journal.write([journal_entry("action-refused", name, action=action, reason=str(exc), by="cli")])
                raise
            if result.problem:
                problems.append(f"{shown(result.name)}: {result.problem}")
                if early:
                    journal.write([journal_entry("action-refused", name, action=action, reason=result.problem,
                                                 by="cli")])
                continue
            if not early:
                event, fields = journal_fields(result)
                journal.write([journal_entry(event, result.name, by="cli", **fields)])  # each as it is done
            done.append(shown(result.name) if action != "discard" else
                        f"{shown(result.name)} -> {DISCARDED}/{shown(result.target)}")
    finally:
        journal.close()
        if store is not None:
            store.close()
    return done, problems


def resolve(folder: Path, name: str) -> str:
    """A name as the operator typed it: exact, or in its shown form (``caf\\xe9.log``,
    ``d\\xff/x.log``), looked up beneath ``folder``; else as typed, to be refused."""
    for typed in (name, unshown(name)):
        if not plain(typed) and look(folder, typed)[0]:
            return typed
    return name


def history(config: Config, name: str, exact: bool = False) -> list[dict[str, Any]]:
    """Every journal entry (all rotated files, oldest first) for the file ``name``, under
    its input name or its final name. The journal holds names shown (workers/names.py):
    ``name`` may be given exactly or in its shown form (``exact``: exactly only)."""
    wanted = {shown(name)} if exact else {shown(name), name}
    needles = [json.dumps(w, ensure_ascii=False)[1:-1] for w in wanted]  # as they appear in a line
    path = config.watch.dir / "input.log"
    entries = []
    for n in range(config.watch.journal_keep, -1, -1):
        p = path if n == 0 else path.with_name(f"{path.name}.{n}")
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if any(needle in line for needle in needles):
                        entries += [e for e in journal_lines([line]) if wanted & {e.get("file"), e.get("final")}]
        except FileNotFoundError:
            continue
    return entries


def format_history(entries: list[dict[str, Any]]) -> str:
    lines = []
    for e in entries:
        extra = {k: v for k, v in e.items() if k not in ("ts", "event", "file")}
        lines.append(f"{e['ts']}  {e['event']:<10} {e['file']}  " +
                     " ".join(f"{k}={v!r}" for k, v in extra.items()))
    return "\n".join(lines)


def _queue(config: Config) -> FolderQueue:
    w = config.watch
    return FolderQueue(w.dir, w.include, w.exclude, w.ready_marker, w.recursive, w.max_depth,
                           w.dir_ready_marker)
