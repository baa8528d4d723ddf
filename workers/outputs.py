"""Stage a file's outputs beside their final names, then commit them together.

Every output (``output/<name>`` and each side output ``output/<name>.<suffix>``) is
written to a hidden temporary file in the same folder and renamed into place only when
the whole file succeeded, so a reader never sees a partial output. A retry of the same
file after a crash rewrites identical content under the same final names.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO

from workers.engine import OutputSink

BUFFER_BYTES = 1 << 20


def unique_name(name: str, taken: callable) -> str:
    """``name`` if ``taken(name)`` is false, else ``stem-N.ext`` for the smallest free N.

    ``app.log`` becomes ``app-1.log``, ``app-2.log``...; a name without an extension
    gets ``-N`` appended; a hidden name keeps its leading dot.
    """
    if not taken(name):
        return name
    lead = "." if name.startswith(".") else ""
    body = name[len(lead):]
    stem, dot, ext = body.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = body, "", ""
    n = 1
    while True:
        candidate = f"{lead}{stem}-{n}{dot}{ext}"
        if not taken(candidate):
            return candidate
        n += 1


class StagedOutputs:
    """The outputs of one file being processed; ``commit()`` or ``abort()`` once."""

    def __init__(self, out_dir: Path, final_name: str, encoding: str) -> None:
        self.out_dir = out_dir
        self.final_name = final_name
        self.encoding = encoding
        self.token = secrets.token_hex(4)
        self.staged: dict[str, tuple[Path, IO[str]]] = {}
        self.sink = OutputSink(final_name, self._open(""), self._open)

    def _open(self, suffix: str) -> IO[str]:
        if suffix in self.staged:
            return self.staged[suffix][1]
        final = self.final_name + (f".{suffix}" if suffix else "")
        temp = self.out_dir / f".{final}.{self.token}.tmp"
        # Closed by commit() or abort(), which every caller reaches.
        stream = open(  # noqa: SIM115
            temp, "w", encoding=self.encoding, errors="replace", newline="\n", buffering=BUFFER_BYTES
        )
        self.staged[suffix] = (temp, stream)
        return stream

    def final_paths(self) -> list[Path]:
        return [self.out_dir / (self.final_name + (f".{s}" if s else "")) for s in self.staged]

    def commit(self, durable: bool = True) -> list[Path]:
        """Flush (and fsync when ``durable``) every stream, then rename each into place."""
        for _, stream in self.staged.values():
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
            stream.close()
        finals = []
        for suffix, (temp, _) in self.staged.items():
            final = self.out_dir / (self.final_name + (f".{suffix}" if suffix else ""))
            os.replace(temp, final)
            finals.append(final)
        if durable:
            _fsync_dir(self.out_dir)
        return finals

    def abort(self) -> None:
        for temp, stream in self.staged.values():
            stream.close()
            temp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
