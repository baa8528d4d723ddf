"""What a processor is, as the engine sees it.

The public contract (docs/guide/writing-processors.md) is small: a plain function, or a
class instantiated once per file with the node's options as keyword arguments, whose
``process(lines: list[str])`` returns ``(tag, line)`` pairs; an optional ``finish()``
yields more pairs at end of file; an optional ``start(ctx)`` receives the file's
context (its name, side outputs); an optional ``emits`` names the tags it may emit,
an optional ``side_outputs`` the suffixes it opens (only declared ones may be opened).

Built-ins may also offer ``process_batch(lines)``, a fast path that returns
:data:`Routes`: for each tag, which input positions go there and, where the text
changed, the new lines. It never copies one input to two tags (positions are
disjoint), so the engine can keep each line's identity without per-line bookkeeping.
``process`` stays the reference behaviour: the property tests check that both agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Protocol

# One entry per destination tag: (tag, positions or None for "every input line",
# new texts aligned with those positions or None for "unchanged").
Routes = list[tuple[str, "list[int] | None", "list[str] | None"]]

Pair = tuple[str, str]


class OptionError(ValueError):
    """A processor option has a bad value; ``key`` names it (e.g. ``routes.error``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class FileContext(Protocol):
    """What a processor's optional ``start(ctx)`` hook receives."""

    name: str

    def side_output(self, suffix: str) -> IO[str]:
        """The open text stream for ``output/<name>.<suffix>``, committed with the file;
        ``suffix`` must be declared (a write node's, or in ``side_outputs``)."""


@dataclass
class NullContext:
    """A context for validation runs: side outputs go nowhere."""

    name: str = "<check>"
    streams: dict[str, IO[str]] = field(default_factory=dict)

    def side_output(self, suffix: str) -> IO[str]:
        import io

        return self.streams.setdefault(suffix, io.StringIO())


def passthrough_next(options: dict, default: str = "end") -> str:
    """Read and check the ``next`` option that every pass-through built-in takes."""
    value = options.pop("next", default)
    return require_tag("next", value)


def require_tag(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise OptionError(key, f"must be a non-empty tag name, got {value!r}")
    return value


def require_str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise OptionError(key, f"must be a string, got {type(value).__name__}")
    return value


# A side output's suffix: a file-name suffix, no path separator, no leading dot.
_SUFFIX = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def require_suffix(key: str, value: object) -> str:
    """A side output's suffix (``errors`` for ``output/<name>.errors``)."""
    value = require_str(key, value)
    # ".tmp" is what the engine uses for files it has not committed yet.
    if not _SUFFIX.fullmatch(value) or value.endswith(".tmp"):
        raise OptionError(key, f"must be a file suffix like 'errors.log' ([A-Za-z0-9_.-], no leading dot, "
                               f"not ending in .tmp), got {value!r}")
    return value


def optional_tag(key: str, value: object) -> str:
    """A tag, or "" meaning "drop the line" (the options that may consume)."""
    return require_str(key, value)


def require_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise OptionError(key, f"must be true or false, got {value!r}")
    return value


def require_int(key: str, value: object, minimum: int | None = None) -> int:
    # bool is an int subclass, but `count = true` in TOML is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(key, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise OptionError(key, f"must be at least {minimum}, got {value}")
    return value


def require_table(key: str, value: object) -> dict:
    """A non-empty table (TOML gives a dict, ordered as written)."""
    if not isinstance(value, dict) or not value:
        raise OptionError(key, f"must be a non-empty table, got {value!r}")
    return value


def entry_key(table: str, name: str) -> str:
    """The dotted key of one table entry, quoted as TOML would when not a bare key."""
    import json
    import re

    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return f"{table}.{name}"
    return f"{table}.{json.dumps(name)}"


def compile_regex(key: str, pattern: object, ignore_case: bool = False) -> re.Pattern[str]:
    """Compile ``pattern`` or raise an OptionError naming ``key``."""
    import re

    text = require_str(key, pattern)
    try:
        return re.compile(text, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise OptionError(key, f"is not a valid regular expression: {exc}") from None


class Processor:
    """Base class for the built-ins: subclasses set ``name`` and override what they need.

    ``emits()`` returns {tag: option key that names it}, so a tag that is not
    registered can be reported against the option that introduced it.
    """

    name = ""

    def emits(self) -> dict[str, str]:
        return {}

    def start(self, ctx: FileContext) -> None:
        """Called once per file before any line."""

    def process(self, lines: list[str]) -> Iterator[Pair]:
        raise NotImplementedError

    def finish(self) -> Iterable[Pair]:
        return ()


ProcessorFactory = Callable[..., object]
