"""Built-ins that choose where a line goes: regex_route, json_route, fanout."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

from .base import (
    OptionError,
    Pair,
    Processor,
    Routes,
    compile_regex,
    entry_key,
    optional_tag,
    require_bool,
    require_str,
    require_table,
    require_tag,
)


def group_by_tag(tags: list[str]) -> Routes:
    """Turn one tag per input line ("" = drop) into :data:`Routes`."""
    if not tags:
        return []
    first = tags[0]
    if tags.count(first) == len(tags):
        return [(first, None, None)] if first else []
    # Few distinct tags, so one C-speed scan per tag beats appending per line.
    return [(tag, [i for i, t in enumerate(tags) if t == tag], None) for tag in dict.fromkeys(tags) if tag]


def _add_route(routes: Routes, tag: str, positions: list[int]) -> None:
    """Append an entry, merging with an earlier entry for the same tag (positions
    must stay ascending, and one entry per tag is what the engine expects)."""
    for k, (other, previous, _) in enumerate(routes):
        if other == tag:
            assert previous is not None  # entries built here always list their positions
            routes[k] = (tag, sorted(previous + positions), None)
            return
    routes.append((tag, positions, None))


class RegexRoute(Processor):
    """Send each line to the tag of the first route whose regex matches it
    (or, with ``all``, to every matching route), else to ``default``."""

    name = "regex_route"

    def __init__(
        self,
        *,
        routes: dict,
        default: str = "end",
        all: bool = False,  # shadows the builtin: it is the option's name
        ignore_case: bool = False,
    ) -> None:
        ignore_case = require_bool("ignore_case", ignore_case)
        self.all = require_bool("all", all)
        self.default = optional_tag("default", default)
        self.routes = [
            (
                require_tag("routes", tag),
                compile_regex(entry_key("routes", tag), rx, ignore_case).search,
            )
            for tag, rx in require_table("routes", routes).items()
        ]
        self._router: Callable[[list[str]], tuple[list[int], ...]] | None = None
        if self.all:
            # The fast path cannot copy a line to two tags: the engine checks
            # `getattr(node, "process_batch", None)` and falls back to process().
            self.process_batch = None  # type: ignore[method-assign,assignment]

    def emits(self) -> dict[str, str]:
        tags = {tag: entry_key("routes", tag) for tag, _ in self.routes}
        if self.default:
            tags.setdefault(self.default, "default")
        return tags

    def process(self, lines: list[str]) -> Iterator[Pair]:
        routes, default = self.routes, self.default
        if self.all:
            for line in lines:
                matched = False
                for tag, search in routes:
                    if search(line):
                        matched = True
                        yield tag, line
                if default and not matched:
                    yield default, line
            return
        for line in lines:
            for tag, search in routes:
                if search(line):
                    yield tag, line
                    break
            else:
                if default:
                    yield default, line

    def process_batch(self, lines: list[str]) -> Routes:
        if self._router is None:
            self._router = first_match_router(len(self.routes))(*(search for _, search in self.routes))
        groups = self._router(lines)  # positions per route, then the default's
        n = len(lines)
        out: Routes = []
        tags = [tag for tag, _ in self.routes] + [self.default]
        for tag, positions in zip(tags, groups, strict=True):
            if not positions or not tag:
                continue
            if len(positions) == n:
                return [(tag, None, None)]
            _add_route(out, tag, positions)
        return out


@functools.cache
def first_match_router(count: int) -> Callable[..., Callable[[list[str]], tuple[list[int], ...]]]:
    """A factory for a loop that sorts line positions by the first of ``count``
    searches that matches (the last group takes the lines none matched).

    An if/elif chain costs ~100 ns a line less than a loop over the routes, or than
    C-speed cascades of map/compress (each route's pass plus the partitions). The
    generated source depends only on ``count``: patterns are passed in as arguments.
    """
    names = [f"s{k}" for k in range(count)]
    body = [f"def make({', '.join(names)}):", "    def route(lines):"]
    body += [f"        p{k} = []; a{k} = p{k}.append" for k in range(count + 1)]
    body += ["        i = 0", "        for line in lines:"]
    for k in range(count):
        body += [f"            {'if' if k == 0 else 'elif'} s{k}(line):", f"                a{k}(i)"]
    body += ["            else:", f"                a{count}(i)", "            i += 1"]
    body += [f"        return ({', '.join(f'p{k}' for k in range(count + 1))},)", "    return route"]
    namespace: dict[str, Any] = {}
    exec("\n".join(body), namespace)  # the source holds no user input: only `count`
    return namespace["make"]


def _reject_constant(name: str) -> None:
    # NaN and Infinity are not JSON; Python's parser would accept them.
    raise ValueError(f"not JSON: {name}")


_MISSING = object()


class JsonRoute(Processor):
    """Parse each line as a JSON object and route it, unchanged, by the value of
    one (dotted) field."""

    name = "json_route"

    def __init__(
        self,
        *,
        field: str,
        routes: dict,
        default: str = "end",
        invalid: str | None = None,
    ) -> None:
        path = require_str("field", field).split(".")
        if not all(path):
            raise OptionError("field", f"must be a dotted path like 'http.status', got {field!r}")
        self.path = path
        self.routes = {
            require_str("routes", value): require_tag(entry_key("routes", value), tag)
            for value, tag in require_table("routes", routes).items()
        }
        self.default = optional_tag("default", default)
        self.invalid_given = invalid is not None
        self.invalid = self.default if invalid is None else optional_tag("invalid", invalid)
        # Numbers keep their own text ("404", "1e3"), so routes compare JSON text.
        self._decode = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=_reject_constant).decode

    def emits(self) -> dict[str, str]:
        tags: dict[str, str] = {}
        for value, tag in self.routes.items():
            tags.setdefault(tag, entry_key("routes", value))
        if self.default:
            tags.setdefault(self.default, "default")
        if self.invalid and self.invalid_given:
            tags.setdefault(self.invalid, "invalid")
        return tags

    def tag_of(self, line: str) -> str:
        """The tag for one line ("" = drop)."""
        if line.lstrip(" \t\r\n")[:1] != "{":  # cheap, and exceptions are not
            return self.invalid
        try:
            value = self._decode(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            return self.invalid
        if not isinstance(value, dict):
            return self.invalid
        for key in self.path:
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is True or value is False:
            value = "true" if value else "false"
        elif value is None:
            value = "null"
        elif not isinstance(value, str):  # missing, or an object or array
            return self.default
        return self.routes.get(value, self.default)

    def process(self, lines: list[str]) -> Iterator[Pair]:
        tag_of = self.tag_of
        for line in lines:
            tag = tag_of(line)
            if tag:
                yield tag, line

    def process_batch(self, lines: list[str]) -> Routes:
        return group_by_tag(list(map(self.tag_of, lines)))


class Fanout(Processor):
    """Copy every line to each tag in ``to``, in list order."""

    name = "fanout"

    def __init__(self, *, to: list) -> None:
        if not isinstance(to, list) or not to:
            raise OptionError("to", f"must be a non-empty list of tags, got {to!r}")
        for tag in to:
            require_tag("to", tag)
        if len(set(to)) != len(to):
            raise OptionError("to", f"lists a tag twice: {to!r}")
        self.to = tuple(to)

    def emits(self) -> dict[str, str]:
        return dict.fromkeys(self.to, "to")

    def process(self, lines: list[str]) -> Iterator[Pair]:
        to = self.to
        for line in lines:
            for tag in to:
                yield tag, line
