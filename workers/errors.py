"""The exception tree: small and shallow, each error says what happened where."""

from __future__ import annotations

from workers.names import shown


class FoldermillError(Exception):
    """Base of every error foldermill raises on purpose."""


class ConfigError(FoldermillError):
    """The configuration is invalid. ``key`` is the dotted key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class InputError(FoldermillError):
    """A file cannot be processed as it is: binary, undecodable, a line too long.

    Raised by the engine with the file name and the 1-based line number.
    """

    def __init__(self, file: str, line: int | None, message: str, node: str = "") -> None:
        where = shown(file) + (f" line {line}" if line is not None else "")
        where += f" (node {node!r})" if node else ""
        super().__init__(f"{where}: {message}")
        self.file = file
        self.line = line
        self.node = node
        self.message = message


class ProcessingError(InputError):
    """A node failed on a line: the processor raised, emitted an unknown tag, or a
    line went past ``max_hops``."""


class SystemFailure(FoldermillError):
    """The whole system cannot go on (the watch dir is gone, the disk is read-only, the
    state database is corrupt): the supervisor stops with exit status 3, not one file."""
