"""The inbox: the one queue every thread writes into and the loop alone reads (job
results, dashboard actions, file events, the backend's news, signals). It owns the
pump threads that move results and actions from the manager's queues into it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from workers.daemon.types import Shared
from workers.messages import JobDone, Message


class Inbox:
    """A SimpleQueue (put() is reentrant, so a signal handler may use it) and its pumps."""

    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()

    def put(self, item: Message) -> None:
        self.items.put(item)

    def get(self, timeout_s: float) -> Message | None:
        try:
            return self.items.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def get_nowait(self) -> Message | None:
        try:
            return self.items.get_nowait()
        except queue.Empty:
            return None

    def pump_from(self, shared: Shared) -> None:
        """Pump ``shared``'s result and command queues (the previous pumps stop)."""
        self._stop.set()
        self._stop = stop = threading.Event()
        for source, wrap, kind in ((shared.results, JobDone, "result"), (shared.commands, None, "command")):
            threading.Thread(target=self._pump, args=(source, wrap, stop), name=f"{kind}-pump", daemon=True).start()

    def stop_pumps(self) -> None:
        self._stop.set()

    def _pump(self, source: Any, wrap: Callable[[Any], Message] | None, stop: threading.Event) -> None:
        """Move job results (wrapped in ``JobDone``) or dashboard commands (``Command``s
        already) from a manager queue to the inbox."""
        while not stop.is_set():
            try:
                item = source.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            self.items.put(wrap(item) if wrap is not None else item)
