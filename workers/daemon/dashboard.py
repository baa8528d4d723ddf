"""The dashboard's process, as the loop sees it: started through the starter that
``supervisor.py`` hands in (``workers/`` never imports ``web/``), awaited at start-up,
started again when it dies (at most every ``WEB_RESTART_EVERY_S``), killed at the end.
It runs in a process of its own, so a slow or hostile client cannot stall the loop.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from workers.config import Config
from workers.daemon.types import Shared, StartDashboard
from workers.queue import QueueSetupError

WEB_RESTART_EVERY_S = 2.0  # a dashboard that keeps dying is restarted at most this often

log = logging.getLogger("foldermill")


class Dashboard:
    """The dashboard process: its port, the process, and the event it sets when ready."""

    def __init__(self, starter: StartDashboard, host: str, port: int) -> None:
        self.starter = starter
        self.host = host
        self.port = check_port(host, port)  # fail early and clearly if the port is taken
        self.process: Any = None
        self.ready: Any = None  # kept: the child unpickles it after start() returns
        self.started = 0.0

    def start(self, ctx: Any, config: Config, shared: Shared) -> None:
        """Start it without waiting for it (``wait_ready`` does)."""
        self.started = time.monotonic()
        self.process, self.ready = self.starter(ctx, config, self.port, shared)

    def wait_ready(self, timeout_s: float, interrupted: Callable[[], None]) -> None:
        """Wait for it to serve, but stop waiting at a signal (``interrupted`` raises)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready.wait(0.1):
                break
            interrupted()
        if not self.ready.is_set() or not self.process.is_alive():
            raise QueueSetupError(f"the dashboard could not start on {self.host}:{self.port}")

    def url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}/"

    def check(self, now: float, ctx: Any, config: Config, shared: Shared) -> None:
        """A dashboard that died is started again."""
        if not self.process.is_alive() and now - self.started >= WEB_RESTART_EVERY_S:
            log.warning("the dashboard process died (exit %s); starting it again", self.process.exitcode)
            self.start(ctx, config, shared)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join(timeout=5)


def check_port(host: str, port: int) -> int:
    """Fail early and clearly if the dashboard's port is taken; with port 0, pick one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise QueueSetupError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror} "
                                  "(set [web] port, or [web] enabled = false)") from None
        return s.getsockname()[1]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
