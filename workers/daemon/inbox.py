"""The inbox: the one queue every thread writes into and the loop alone reads (job
results, dashboard actions, file events, the backend's news, signals). It owns the
pump threads that move results and actions from the manager's queues into it.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from workers.daemon.types import Shared


class Inbox:
    """A SimpleQueue (put() is reentrant, so a signal handler may use it) and its pumps."""

    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()

    def put(self, item: tuple[Any, ...]) -> None:
        self.items.put(item)

    def get(self, timeout_s: float) -> tuple[Any, ...] | None:
        try:
            return self.items.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def get_nowait(self) -> tuple[Any, ...] | None:
        try:
            return self.items.get_nowait()
        except queue.Empty:
            return None

    def pump_from(self, shared: Shared) -> None:
        """Pump ``shared``'s result and command queues (the previous pumps stop)."""
        self._stop.set()
        self._stop = stop = threading.Event()
        for source, kind in ((shared.results, "result"), (shared.commands, "command")):
            threading.Thread(target=self._pump, args=(source, kind, stop), name=f"{kind}-pump", daemon=True).start()

    def stop_pumps(self) -> None:
        self._stop.set()

    def _pump(self, source: Any, kind: str, stop: threading.Event) -> None:
        """Move job results (or dashboard commands) from a manager queue to the inbox."""
        while not stop.is_set():
            try:
                item = source.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            self.items.put((kind, item))
