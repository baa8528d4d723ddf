"""Stage a file's outputs beside their final names, then commit them together.

Every output (``output/<name>`` and each side output ``output/<name>.<suffix>``) is
written to a hidden temporary file in the same folder and renamed into place only when
the whole file succeeded, so a reader never sees a partial output. A retry of the same
file after a crash rewrites identical content under the same final names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from workers.engine import OutputSink
from workers.fs import fsync_dir, make_dirs_beneath
from workers.names import collision_name, new_execution, output_name, staged_name, staged_prefix

# 64 KiB: a bigger buffer is an mmap per stream (glibc), ~0.4 ms per file opened.
BUFFER_BYTES = 64 * 1024


def unique_name(name: str, taken: Callable[[str], bool]) -> str:
    """``name`` if ``taken(name)`` is false, else ``stem-N.ext`` for the smallest free N
    (``workers.names.collision_name``: shortened to fit where needed). A path whose
    directory cannot be used (``taken`` raised NotADirectoryError: a file of that name
    is there) keeps its base name in the first free directory name instead
    (``acme/x.csv`` -> ``acme-1/x.csv``)."""
    try:
        if not taken(name):
            return name
        n = 1
        while True:
            candidate = collision_name(name, n)
            if not taken(candidate):
                return candidate
            n += 1
    except NotADirectoryError:
        head, _, rest = name.partition("/")
        if not rest:
            raise
        n = 1
        while True:
            try:
                return unique_name(f"{collision_name(head, n)}/{rest}", taken)
            except NotADirectoryError:
                n += 1


class StagedOutputs:
    """The outputs of one file being processed; ``commit()`` or ``abort()`` once.

    Temporary files are named ``.fm-<token>.<execution>.<k>.tmp``: hidden, short
    whatever the file's name, easy to find again for one file (the daemon uses the
    file's id as the token, so cleanup knows what to remove), and unique to this
    execution, so two executions of one file (a job delivered twice) never write or
    remove each other's.
    """

    def __init__(self, out_dir: Path, final_name: str, encoding: str, token: str = "") -> None:
        self.out_dir = out_dir
        self.final_name = final_name
        self.encoding = encoding
        self.token = token or "run"
        self.execution = new_execution()
        self.staged: dict[str, tuple[Path, IO[str]]] = {}
        self.sink = OutputSink(final_name, self._open(""), self._open)

    def _open(self, suffix: str) -> IO[str]:
        if suffix in self.staged:
            return self.staged[suffix][1]
        temp = self.out_dir / staged_name(self.token, self.execution, len(self.staged))
        # Closed by commit() or abort(), which every caller reaches.
        stream = open(  # noqa: SIM115
            temp, "w", encoding=self.encoding, errors="replace", newline="\n", buffering=BUFFER_BYTES
        )
        self.staged[suffix] = (temp, stream)
        return stream

    def final_paths(self) -> list[Path]:
        return [self.out_dir / output_name(self.final_name, s) for s in self.staged]

    def close(self, durable: bool = False) -> list[tuple[str, str]]:
        """Flush and close every stream (fsync each when ``durable``); return the
        (temporary, final) names to rename, in the output folder."""
        for _, stream in self.staged.values():
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
            stream.close()
        return [(temp.name, output_name(self.final_name, s)) for s, (temp, _) in self.staged.items()]

    def commit(self, durable: bool = True) -> list[Path]:
        """Close, then rename every output into place (the one-process path of ``run``)."""
        pairs = self.close(durable)
        rename_staged(self.out_dir, pairs, durable)
        return [self.out_dir / final for _, final in pairs]

    def abort(self) -> None:
        """Close and remove every staged file. Closing flushes what is buffered, which
        fails on a full disk: the descriptor is closed all the same, and the file goes."""
        for temp, stream in self.staged.values():
            with contextlib.suppress(OSError):
                stream.close()
            temp.unlink(missing_ok=True)


def rename_staged(out_dir: Path, pairs: list[tuple[str, str]], durable: bool, durable_dirs: bool = False
                  ) -> set[str]:
    """Rename each staged output to its final name. Idempotent: a pair whose staged
    file is gone while its final name is there was renamed by an earlier try (one a
    full disk, or a crash, cut short). A final name in a directory (``acme/x.csv``,
    recursive) has its directories made first, on disk before anything is renamed into
    them when ``durable``. Returns the directories renamed into ("" for ``out_dir``),
    which the caller syncs (with ``durable`` here, they are synced now; ``durable_dirs``
    makes only the new directories durable, for a caller that syncs the rest)."""
    base = str(out_dir) + "/"
    into: set[str] = set()
    for temp, final in pairs:
        parent = final.rpartition("/")[0]
        into.add(parent)
        try:
            os.replace(base + temp, base + final)
        except FileNotFoundError:
            if os.path.lexists(base + final):
                continue
            if not parent or not os.path.lexists(base + temp):
                raise
            with _dir_fd(out_dir) as top:
                os.close(make_dirs_beneath(top, parent, durable or durable_dirs))
            os.replace(base + temp, base + final)
    if durable:
        for parent in into:
            fsync_dir(base + parent)
    return into


@contextlib.contextmanager
def _dir_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def remove_staged(out_dir: Path, token: str) -> None:
    """Remove what an attempt with this token left behind (a worker that died). A
    cleanup: one that fails now (no descriptors left...) is done by the file's next
    attempt, or by a start-up's sweep; it never stops what called it."""
    prefix = staged_prefix(token)
    with contextlib.suppress(OSError), os.scandir(out_dir) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                Path(entry.path).unlink(missing_ok=True)
