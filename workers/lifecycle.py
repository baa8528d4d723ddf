"""Child processes that die with the supervisor (Linux parent-death signal)."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def die_with_parent(parent_pid: int, title: str) -> None:
    """Ask Linux to SIGKILL us when the supervisor dies (exit now if it already has),
    and name the process (``ps``, ``top`` and the tests see ``title``)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(PR_SET_NAME, title.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the getppid() check in the loop still applies
    if os.getppid() != parent_pid:
        os._exit(1)
