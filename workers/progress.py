"""Progress for ``run FILE...`` and ``--once``: a bar on a terminal, log lines otherwise.

On a terminal: one line for the whole (files and bytes done, rate, ETA) and one line
per file in flight, redrawn at most 10 times a second. Not on a terminal (a pipe, a
log file, cron): a plain line every ``LINE_EVERY_S`` seconds and one at the end.
"""

from __future__ import annotations

import time
from typing import TextIO

LINE_EVERY_S = 2.0
REDRAW_EVERY_S = 0.1
BAR_WIDTH = 24


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _eta(done: float, total: float, rate: float) -> str:
    if rate <= 0 or total <= done:
        return "--"
    seconds = (total - done) / rate
    return f"{seconds:,.0f} s" if seconds < 120 else f"{seconds / 60:,.1f} min"


def _bar(fraction: float) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


class Progress:
    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.last = 0.0
        self.drawn = 0  # lines of the last drawing (terminal)

    def update(self, files_done: int, files_total: int, bytes_done: int, bytes_total: int,
               in_flight: list[tuple[str, int, int]], final: bool = False) -> None:
        """in_flight: (name, bytes done, size) for each file being processed."""
        now = time.monotonic()
        if not final and now - self.last < (REDRAW_EVERY_S if self.tty else LINE_EVERY_S):
            return
        self.last = now
        elapsed = max(1e-6, now - self.started)
        rate = bytes_done / elapsed
        summary = (f"{files_done}/{files_total} files, {_mb(bytes_done)}/{_mb(bytes_total)}, "
                   f"{_mb(rate)}/s, {files_done / elapsed:,.1f} files/s, ETA {_eta(bytes_done, bytes_total, rate)}")
        if not self.tty:
            self.stream.write(f"progress: {summary}\n")
            self.stream.flush()
            return
        fraction = bytes_done / bytes_total if bytes_total else (1.0 if final else 0.0)
        lines = [f"{_bar(fraction)} {fraction * 100:5.1f}%  {summary}"]
        lines += [f"  {_bar(done / size if size else 1.0)} {name}" for name, done, size in in_flight[:8]]
        # Move up over the previous drawing, clear each line, draw again.
        self.stream.write("\x1b[F\x1b[2K" * self.drawn + "\r\x1b[2K" + "\n\x1b[2K".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)
