"""A real redis-server on loopback for the tests and the runtime smoke check.

No pytest here: ``tests/smoke_runtime.py`` runs it from a venv that holds only
``requirements.txt``.
"""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path

from tests.daemon import wait_for


def free_port() -> int:
    """A loopback port that is free now, for a server that must be given a number.

    Binding port 0 and releasing it is a race: the kernel hands the same ephemeral ports
    to every outgoing connection (ours to Redis, a browser's...), so the port is soon
    taken again, and a server restarted on it fails. So pick below the ephemeral range,
    where only explicit binds go; a server that still loses the race is started again
    (``RedisServer.start``)."""
    low, _ = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


class RedisServer:
    """``redis-server`` without persistence, as a child process stopped by its PID.

    ``start`` picks a new port if another process won it first; ``restart`` keeps the
    port (clients hold the URL) and retries until the old socket is released. PING is
    not enough to know it is up: another server could answer on that port, so the
    answer's ``process_id`` must be ours."""

    def __init__(self, binary: str, log_dir: Path) -> None:
        self.binary = binary
        self.log_dir = log_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30) -> None:
        for _ in range(5):
            if self._try_start(timeout_s):
                self.starts += 1
                return
            if self.starts:  # a restart: the port is fixed, try it again
                continue
            self.port = free_port()
        raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}; see {self._log_path()}")

    def restart(self) -> None:
        """Stop and start again on the same port: a broker restart without persistence."""
        self.stop()
        self.start()

    def _try_start(self, timeout_s: float) -> bool:
        with open(self._log_path(), "a") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--daemonize", "no"], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.ours() or self.proc.poll() is not None, timeout_s,
                 f"redis-server to answer on port {self.port} (or exit)")
        if self.ours():
            return True
        self.proc.wait(timeout=10)
        return False

    def ours(self) -> bool:
        """It answers, and it is our process that does."""
        import redis

        try:
            info = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1).info("server")
        except (redis.RedisError, OSError):
            return False
        return self.proc is not None and info.get("process_id") == self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def _log_path(self) -> Path:
        return self.log_dir / f"redis-{self.port}.log"
