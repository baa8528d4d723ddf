"""Globs on names and on relative paths, as ``include``/``exclude`` and routes use them.

A pattern without ``/`` matches a file's base name, at any depth (``*.csv``): the
meaning every flat config had. A pattern with ``/`` matches the path relative to
``unprocessed/``, where ``*`` and ``?`` stop at a ``/`` and ``**`` spans any number of
directories: ``acme/**/*.csv`` matches ``acme/x.csv`` and ``acme/2026/12/x.csv``. A
leading ``/`` anchors nothing more (paths are relative already) and is dropped.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable


def matcher(patterns: tuple[str, ...] | list[str]) -> Callable[[str], bool]:
    """Whether a relative path matches any of ``patterns`` (none: nothing matches)."""
    names = [p for p in patterns if "/" not in p]
    paths = [p.lstrip("/") for p in patterns if "/" in p]
    by_name = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in names) or "(?!)", re.DOTALL).match
    by_path = re.compile("|".join(f"(?:{path_regex(p)})" for p in paths) or "(?!)", re.DOTALL).match
    if not paths:
        return lambda rel: by_name(rel[rel.rfind("/") + 1:]) is not None
    return lambda rel: by_name(rel[rel.rfind("/") + 1:]) is not None or by_path(rel) is not None


def path_regex(pattern: str) -> str:
    """The regular expression of a path glob (``fnmatch``'s rules within a component)."""
    out = []
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")  # any number of directories (none too)
            continue
        out.append(_component(part) + ("" if last else "/"))
    return "".join(out) + r"\Z"


def _component(part: str) -> str:
    """One component: ``*``/``?`` never cross a ``/``; ``[...]`` as fnmatch has it."""
    rx, i = [], 0
    while i < len(part):
        ch = part[i]
        if ch == "*":
            while i + 1 < len(part) and part[i + 1] == "*":
                i += 1
            rx.append("[^/]*")
        elif ch == "?":
            rx.append("[^/]")
        elif ch == "[":
            end = part.find("]", i + 2 if part[i + 1:i + 2] in ("!", "]") else i + 1)
            if end < 0:
                rx.append(r"\[")
            else:
                body = part[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                elif body.startswith("^"):
                    body = "\\" + body
                rx.append(f"(?!/)[{body}]")
                i = end
        else:
            rx.append(re.escape(ch))
        i += 1
    return "".join(rx)
