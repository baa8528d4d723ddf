"""One failed attempt, as one record, and the rule that says what it costs.

A ``Failure`` is built where the failure is found (a worker's result, a dead worker's
job, a step of the commit that broke, a symlink rejected) and carried unchanged to the
state database (``Store.attempt_failed``), the stats and the dashboard
(``Stats.attempt_failed``) and the journal (``Failure.fields``). ``next_try_s`` is the
backoff rule, the only one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Why an attempt failed, as /metrics counts them (foldermill_file_attempts_failed_total{reason}).
CAUSES = ("input", "error", "crash", "timeout", "memory")


@dataclass(frozen=True)
class Failure:
    """What went wrong with one attempt at one file."""

    reason: str  # said to people: the journal, the reason file, the dashboard
    cause: str  # one of CAUSES
    permanent: bool = False  # the file itself is at fault (bad input): no retry will help
    worker: int = 0  # the worker's pid, 0 if the supervisor found it
    node: str = ""  # the pipeline node it failed in, if one did
    line: int | None = None  # the input line it failed at, if one
    seconds: float | None = None  # how long the attempt ran, when its worker said

    def fields(self) -> dict[str, Any]:
        """As the journal writes it."""
        timing = {} if self.seconds is None else {"seconds": round(self.seconds, 6)}
        return dict(worker=self.worker, cause=self.cause, reason=self.reason, node=self.node, line=self.line,
                    **timing)

    def given_up(self, attempts: int, max_attempts: int) -> str:
        """The reason a file failed for good says, after its last attempt."""
        return self.reason if self.permanent else f"{self.reason} (attempt {attempts} of {max_attempts}; giving up)"


def next_try_s(attempts: int, permanent: bool, max_attempts: int, backoff_s: float) -> float | None:
    """The backoff rule: after ``attempts`` failed attempts, the wait before the next one
    (base x 2^(n-1)), or None when there is no next one (the last attempt, or a
    permanent failure)."""
    if permanent or attempts >= max_attempts:
        return None
    return backoff_s * 2 ** (attempts - 1)
