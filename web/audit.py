"""The audit log: every action asked of the dashboard, accepted or refused, as one JSON
line in ``watch_dir/audit.log`` (time, action, targets, outcome, HTTP status, how it
was authorised, remote address). Appended with one ``write`` per line (O_APPEND);
rotated past ``MAX_BYTES`` (``KEEP`` old logs are kept); a bulk action's line names its
first ``TARGETS_SHOWN`` files, their count and the set's digest. A hostile page posting in a loop can
neither fill the disk nor push the operator's actions out of the log: accepted actions
are always written, refusals at most ``REFUSALS_PER_MINUTE`` lines a minute, and the
next refusal written says how many were left out (``"unlogged_before"``).
``GET /audit`` serves its tail.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from flask import Response, g, request

from web.lookup import names_digest
from workers.names import shown

MAX_BYTES = 8 << 20
TAIL_BYTES = 256 << 10
KEEP = 5  # rotated logs kept: audit.log.1 ... audit.log.5
TARGETS_SHOWN = 20
REFUSALS_PER_MINUTE = 30


class Audit:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.minute = 0.0  # when the current minute of refusals began (monotonic)
        self.refusals = 0  # refusals written in it
        self.unlogged = 0  # refusals left out since the last one written

    def record(self, response: Response) -> None:
        """One line for the POST just answered (called after every POST)."""
        outcome = "accepted" if response.status_code < 400 else "refused"
        targets = list(getattr(g, "targets", []))
        error = getattr(g, "refused", "") or _error_of(response)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "action": getattr(g, "action", "") or request.path[:200],
            "targets": [shown(t)[:300] for t in targets[:TARGETS_SHOWN]],
            "outcome": outcome if not error else f"{outcome}: {error}",
            "status": response.status_code,
            "auth": getattr(g, "auth", "none"),
            "remote": request.remote_addr,
        }
        if len(targets) > TARGETS_SHOWN:  # a bulk action: the first names, how many, and the set's digest
            entry["targets_count"] = len(targets)
            entry["targets_digest"] = names_digest(targets)
        with self.lock:
            if outcome == "refused" and not self._room_for_refusal(entry):
                return
            line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            except OSError:
                return  # the action stands or falls on its own; the log of it is best effort
            try:
                os.write(fd, line)
                if os.fstat(fd).st_size > MAX_BYTES:
                    self._rotate()
            except OSError:
                pass  # a full disk: the answer to the request stands
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        for n in range(KEEP - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if os.path.lexists(older):
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))

    def _room_for_refusal(self, entry: dict[str, Any]) -> bool:
        now = time.monotonic()
        if now - self.minute >= 60:
            self.minute, self.refusals = now, 0
        if self.refusals >= REFUSALS_PER_MINUTE:
            self.unlogged += 1
            return False
        self.refusals += 1
        if self.unlogged:
            entry["unlogged_before"], self.unlogged = self.unlogged, 0
        return True

    def tail(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return []
        with open(fd, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().split(b"\n")
        if size > TAIL_BYTES:
            lines = lines[1:]
        entries = []
        for line in reversed(lines):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
            if len(entries) >= limit:
                break
        return entries


def _error_of(response: Response) -> str:
    if response.status_code < 400 or not response.is_json:
        return ""
    body = response.get_json(silent=True)
    return str(body.get("error", ""))[:300] if isinstance(body, dict) else ""
