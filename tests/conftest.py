"""Fixtures for the daemon tests: a watch dir in tmp_path and supervisors that are
always stopped, with a check that none of their processes outlives the test."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest

from tests.daemon import Daemon, alive, wait_for


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

