"""What the daemon's loop is told, and by whom: one small type per kind of message, the
items of its inbox (``workers/daemon/inbox.py``). They cross threads (file events, the
broker's news, the pumps from the manager's queues) and, for the dashboard's commands,
processes (pickled through a manager queue): plain frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class JobDone:
    """A job's result (``workers.worker.JobResult``), from a local worker or a Celery node."""

    result: Any


@dataclass(frozen=True, slots=True)
class Command:
    """An operator's action from the dashboard, authorised and validated there: "pause",
    "resume", or "retry"/"discard"/"replay" of ``name`` (shown, ``workers/names.py``)."""

    action: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class BrokerNews:
    """The Celery broker went away (``ok`` false, with ``error``) or came back."""

    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class Reload:
    """SIGHUP: read the configuration again."""


@dataclass(frozen=True, slots=True)
class StopSignal:
    """SIGTERM or SIGINT."""

    signum: int


@dataclass(frozen=True, slots=True)
class FileEvent:
    """A file event in unprocessed/ (``workers/daemon/events.py`` kinds), or an overflow."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class FileEvents:
    """The file events of one read of the kernel's queue, in order."""

    events: tuple[FileEvent, ...]


Message = JobDone | Command | BrokerNews | Reload | StopSignal | FileEvent | FileEvents
