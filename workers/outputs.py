"""Stage a file's outputs beside their final names, then commit them together.

Every output (``output/<name>`` and each side output ``output/<name>.<suffix>``) is
written to a hidden temporary file in the same folder and renamed into place only when
the whole file succeeded, so a reader never sees a partial output. A retry of the same
file after a crash rewrites identical content under the same final names.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

from workers.engine import OutputSink

# 64 KiB: a bigger buffer is an mmap per stream (glibc), ~0.4 ms per file opened.
BUFFER_BYTES = 64 * 1024


def unique_name(name: str, taken: Callable[[str], bool]) -> str:
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
    """The outputs of one file being processed; ``commit()`` or ``abort()`` once.

    Temporary files are named ``.fm-<token>.<final name>.tmp``: hidden, and easy to
    find again for one file (the daemon uses the file's id as the token, so a retry
    after a crash overwrites its own leftovers and cleanup knows what to remove).
    """

    def __init__(self, out_dir: Path, final_name: str, encoding: str, token: str = "") -> None:
        self.out_dir = out_dir
        self.final_name = final_name
        self.encoding = encoding
        self.token = token or secrets.token_hex(4)
        self.staged: dict[str, tuple[Path, IO[str]]] = {}
        self.sink = OutputSink(final_name, self._open(""), self._open)

    def _open(self, suffix: str) -> IO[str]:
        if suffix in self.staged:
            return self.staged[suffix][1]
        final = self.final_name + (f".{suffix}" if suffix else "")
        temp = self.out_dir / f".fm-{self.token}.{final}.tmp"
        # Closed by commit() or abort(), which every caller reaches.
        stream = open(  # noqa: SIM115
            temp, "w", encoding=self.encoding, errors="replace", newline="\n", buffering=BUFFER_BYTES
        )
        self.staged[suffix] = (temp, stream)
        return stream

    def final_paths(self) -> list[Path]:
        return [self.out_dir / (self.final_name + (f".{s}" if s else "")) for s in self.staged]

    def close(self, durable: bool = False) -> list[tuple[str, str]]:
        """Flush and close every stream (fsync each when ``durable``); return the
        (temporary, final) names to rename, in the output folder."""
        for _, stream in self.staged.values():
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
            stream.close()
        return [(temp.name, self.final_name + (f".{s}" if s else "")) for s, (temp, _) in self.staged.items()]

    def commit(self, durable: bool = True) -> list[Path]:
        """Close, then rename every output into place (the one-process path of ``run``)."""
        pairs = self.close(durable)
        rename_staged(self.out_dir, pairs, durable)
        return [self.out_dir / final for _, final in pairs]

    def abort(self) -> None:
        for temp, stream in self.staged.values():
            stream.close()
            temp.unlink(missing_ok=True)


def rename_staged(out_dir: Path, pairs: list[tuple[str, str]], durable: bool) -> None:
    base = str(out_dir) + "/"
    for temp, final in pairs:
        os.replace(base + temp, base + final)
    if durable:
        fsync_dir(out_dir)


def remove_staged(out_dir: Path, token: str) -> None:
    """Remove what an attempt with this token left behind (a worker that died)."""
    for path in out_dir.glob(f".fm-{token}.*.tmp"):
        path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
