"""Fixtures for the daemon tests: a watch dir in tmp_path and supervisors that are
always stopped, with a check that none of their processes outlives the test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

from tests.components import require
from tests.daemon import Daemon, alive, wait_for
from tests.redis_server import RedisServer

# In CI the property tests are derandomized: the same examples every run, so main stays
# green or red for a reason; locally they explore new examples each run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Supervisors started by a test go in this list; teardown kills what is left and
    asserts that no worker or manager process survives its supervisor."""
    started: list[Daemon] = []
    yield started
    leftovers = []
    for d in started:
        leftovers += [c.pid for c in d.children()]
        if d.alive():
            d.kill()
    wait_for(lambda: not alive(leftovers), 10, f"children of the supervisors to exit: {alive(leftovers)}")


@pytest.fixture(autouse=True)
def no_stray_children() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield

    def strays() -> list[int]:
        now = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]
        return alive(now)

    wait_for(lambda: not strays(), 10, "the test's child processes to exit")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a free loopback port."""
    server = RedisServer(require("redis-server"), tmp_path)
    server.start()
    yield server
    server.stop()
