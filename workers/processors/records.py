"""Built-ins for CSV records (pipelines with ``format = "csv"``): csv_route routes a
record by one column's value, csv_validate checks columns against rules, csv_select
projects, reorders and renames columns.

Columns are configured by header name (a string) or 0-based index (an integer). The
engine calls ``records(fmt, columns)`` once per file, before any record: that is where
names become indexes, and where a header that lacks a configured column fails the
file with a :class:`~workers.records.RecordError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from itertools import compress, filterfalse, repeat
from operator import itemgetter, not_

from workers.records import RecordError, RecordFormat

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
from .routing import group_by_tag

Column = str | int
Columns = list[str] | dict[str, list[str]] | None


def require_column(key: str, value: object) -> Column:
    """A column option: a header name, or a 0-based index."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise OptionError(key, f"must be a column name or a 0-based index (an integer >= 0), got {value!r}")


def resolve_column(column: Column, columns: list[str] | None) -> int:
    """The index of ``column`` in records whose header is ``columns`` (None: no header)."""
    if isinstance(column, int):
        if columns is not None and column >= len(columns):
            raise RecordError(f"header has no column {column} (0-based): it has {len(columns)} "
                              f"(its columns: {_listing(columns)})")
        return column
    if columns is None:
        raise RecordError(f"column {column!r} is given by name, but the pipeline has no header "
                          "(header = false): give its 0-based index instead")
    count = columns.count(column)
    if count == 0:
        raise RecordError(f"header has no column {column!r} (its columns: {_listing(columns)})")
    if count > 1:
        raise RecordError(f"header has {count} columns named {column!r}: give the 0-based index of the one meant")
    return columns.index(column)


def _listing(columns: list[str], limit: int = 20) -> str:
    shown = ", ".join(columns[:limit])
    return shown + f", ... ({len(columns) - limit} more)" if len(columns) > limit else shown


def parse_one(fmt: RecordFormat, text: str) -> list[str]:
    """One record's fields (the reader gives exactly one row for one text)."""
    return fmt.parse((text,))[0]


def parse_batch(fmt: RecordFormat, texts: list[str]) -> list[list[str]]:
    """Each text's fields, in one reader pass where possible."""
    rows = fmt.parse(texts)
    if len(rows) != len(texts):
        # A text with an unbalanced quote (a text processor upstream edited it) runs
        # on into the next one in a single pass: parse one by one, as process() does.
        rows = [parse_one(fmt, text) for text in texts]
    return rows


def _column_values(rows: list[list[str]], index: int) -> list[str | None]:
    """Each row's field at ``index``; None where a row is too short to have it."""
    try:
        return list(map(itemgetter(index), rows))
    except IndexError:
        return [row[index] if len(row) > index else None for row in rows]


def _fields(count: int) -> str:
    return f"{count} field" if count == 1 else f"{count} fields"


class RecordProcessor(Processor):
    """What the three CSV built-ins share: the graph compiler refuses them in a line
    pipeline (``records_only``), and nothing works before ``records()`` was called."""

    records_only = True
    _fmt: RecordFormat | None = None

    def column_names(self) -> list[str]:
        """The columns configured by name (they need header = true)."""
        raise NotImplementedError

    def records(self, fmt: RecordFormat, columns: list[str] | None) -> Columns:
        """Resolve the configured columns in the header ``columns`` (None: no header)
        and return the columns of the records emitted: a list, or {tag: columns}."""
        raise NotImplementedError

    def _format(self) -> RecordFormat:
        if self._fmt is None:
            raise RuntimeError(f"{self.name}: records(fmt, columns) must be called once per file, before any record")
        return self._fmt


class CsvRoute(RecordProcessor):
    """Send each record, unchanged, to the tag that ``routes`` gives its ``column``'s
    value (exact match), else to ``default``; a record too short to have the column
    goes to ``default`` too."""

    name = "csv_route"

    def __init__(self, *, column: Column, routes: dict, default: str = "end", ignore_case: bool = False) -> None:
        self.column = require_column("column", column)
        self.ignore_case = require_bool("ignore_case", ignore_case)
        self.default = optional_tag("default", default)
        self.keys: dict[str, str] = {}  # tag -> the option key that introduced it
        self.routes: dict[str, str] = {}  # value (casefolded with ignore_case) -> tag
        for value, tag in require_table("routes", routes).items():
            key = entry_key("routes", require_str("routes", value))
            tag = require_tag(key, tag)
            folded = value.casefold() if self.ignore_case else value
            if self.routes.setdefault(folded, tag) != tag:
                raise OptionError(key, f"is the same value as another route once case is ignored, "
                                  f"with another tag ({self.routes[folded]!r})")
            self.keys.setdefault(tag, key)
        self._index = -1

    def emits(self) -> dict[str, str]:
        tags = dict(self.keys)
        if self.default:
            tags.setdefault(self.default, "default")
        return tags

    def column_names(self) -> list[str]:
        return [self.column] if isinstance(self.column, str) else []

    def records(self, fmt: RecordFormat, columns: list[str] | None) -> Columns:
        self._index = resolve_column(self.column, columns)
        self._fmt = fmt
        return columns

    def process(self, lines: list[str]) -> Iterator[Pair]:
        fmt, index, default, get = self._format(), self._index, self.default, self.routes.get
        for line in lines:
            row = parse_one(fmt, line)
            if len(row) <= index:
                tag = default
            else:
                tag = get(row[index].casefold() if self.ignore_case else row[index], default)
            if tag:
                yield tag, line

    def process_batch(self, lines: list[str]) -> Routes:
        values = _column_values(parse_batch(self._format(), lines), self._index)
        if self.ignore_case:
            values = [None if value is None else value.casefold() for value in values]
        # None (a short record) is no route's value, so it gets the default.
        return group_by_tag(list(map(self.routes.get, values, repeat(self.default))))  # type: ignore[arg-type]


TYPES = ("str", "int", "float", "date")
RULES = ("required", "type", "format", "regex", "values")
# Plain ASCII numbers: no spaces, underscores, inf or nan (which int() and float() take).
_INT = r"[+-]?[0-9]+"
_FLOAT = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_KNOWN_DATES_MAX = 100_000  # distinct valid dates remembered per column
_SLICE = 256  # records parsed and checked at a time (so that they stay in the CPU cache)


class _Rules:
    """One ``columns`` entry of csv_validate, checked; bound to an index by ``bind``."""

    def __init__(self, key: str, column: Column, options: object) -> None:
        if not isinstance(options, dict):
            raise OptionError(key, f"must be a table of rules ({', '.join(RULES)}), got {options!r}")
        for rule in options:
            if rule not in RULES:
                raise OptionError(entry_key(key, rule), f"is not a rule (rules: {', '.join(RULES)})")
        self.column = column
        self.required = require_bool(entry_key(key, "required"), options.get("required", False))
        self.type = options.get("type", "str")
        if self.type not in TYPES:
            raise OptionError(entry_key(key, "type"), f'must be "int", "float", "date" or "str", got {self.type!r}')
        if "format" in options and self.type != "date":
            raise OptionError(entry_key(key, "format"), f'applies to type = "date" only (this column is {self.type})')
        self.date_format = _date_format(entry_key(key, "format"), options.get("format", "%Y-%m-%d"))
        self.pattern = None if "regex" not in options else require_str(entry_key(key, "regex"), options["regex"])
        self.regex = None if self.pattern is None else compile_regex(entry_key(key, "regex"), self.pattern)
        self.values = None if "values" not in options else _allowed(entry_key(key, "values"), options["values"])

    def bind(self, index: int, columns: list[str] | None) -> _Check:
        return _Check(self, index, f"column {index}" if columns is None else columns[index])


def _date_format(key: str, value: object) -> str:
    text = require_str(key, value)
    if not text:
        raise OptionError(key, "must be a strptime format like %Y-%m-%d, got ''")
    try:
        datetime.strptime("", text)
    except ValueError as exc:
        # Any other complaint is about the (empty) data, not the format.
        if "bad directive" in str(exc) or "stray %" in str(exc):
            raise OptionError(key, f"is not a strptime format: {exc}") from None
    return text


def _allowed(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise OptionError(key, f"must be a non-empty array of strings, got {value!r}")
    for item in value:
        require_str(key, item)
    return tuple(value)


class _Check:
    """One column's checks, at its index: ``explain`` is the whole rule in Python;
    ``screens`` are C-speed predicates (truthy: the value passes that rule) that
    process_batch runs over a column so that only the values they reject reach
    ``explain``. A screen may reject a value ``explain`` accepts, never the reverse."""

    def __init__(self, rules: _Rules, index: int, label: str) -> None:
        self.index, self.label, self.required = index, label, rules.required
        self.type, self.date_format = rules.type, rules.date_format
        self.pattern, self.regex = rules.pattern, rules.regex
        self.values, self.allowed = rules.values, frozenset(rules.values or ())
        self.known_dates: set[str] = set() if rules.required else {""}
        empty = "" if rules.required else "|"  # a regex screen accepts "" when the column is optional
        screens: list[Callable[[str], object]] = []
        if self.type == "int":
            # Twice as fast as the regex; a sign (or "") sends the value to explain().
            screens += [str.isdigit, str.isascii]
        elif self.type == "float":
            screens.append(re.compile(f"{_FLOAT}{empty}").fullmatch)
        elif self.type == "date":
            screens.append(self.known_dates.__contains__)
        if self.regex is not None:
            screens.append(self.regex.fullmatch)
        if self.values is not None:
            screens.append((self.allowed if rules.required else self.allowed | {""}).__contains__)
        if rules.required and all(screen("") for screen in screens):
            screens.append(len)
        self.screens = screens

    def explain(self, value: str) -> str | None:
        """Why ``value`` breaks this column's rules (the first rule it breaks), or None."""
        if not value:
            return f"{self.label}: is empty but required" if self.required else None
        if self.type == "int" and not re.fullmatch(_INT, value):
            return f"{self.label}: not an int: {value!r}"
        if self.type == "float" and not re.fullmatch(_FLOAT, value):
            return f"{self.label}: not a float: {value!r}"
        if self.type == "date" and value not in self.known_dates:
            try:
                datetime.strptime(value, self.date_format)
            except (ValueError, OverflowError):
                return f"{self.label}: {value!r} is not a date like {self.date_format}"
            if len(self.known_dates) < _KNOWN_DATES_MAX:
                self.known_dates.add(value)  # strptime is slow, and dates repeat
        if self.regex is not None and not self.regex.fullmatch(value):
            return f"{self.label}: {value!r} does not match {self.pattern}"
        if self.values is not None and value not in self.allowed:
            return f"{self.label}: {value!r} is not one of {', '.join(self.values)}"
        return None

    def suspects(self, values: Sequence[str]) -> list[int]:
        """The positions of the values some screen rejects, ascending."""
        found: set[int] = set()
        for screen in self.screens:
            passed = list(map(screen, values))
            if not all(passed):  # the common case costs one pass, and all() is cheap
                found.update(compress(range(len(values)), map(not_, passed)))
        return sorted(found)


class CsvValidate(RecordProcessor):
    """Check each record's field count and the ``columns`` rules; send valid records on
    unchanged to ``next``, invalid ones to ``invalid`` with one extra last field
    (``reason_column``): the reasons, each naming its column, joined with "; ".

    Types: int is ``[+-]?[0-9]+``, float is that with an optional fraction and
    exponent (no inf, nan, spaces or underscores), date is what ``strptime(format)``
    accepts. An empty value passes unless the column is ``required``; each column
    reports the first rule it breaks (type, regex, values). A record with the wrong
    field count gets that reason alone: its fields are not where the header says.
    """

    name = "csv_validate"

    def __init__(
        self,
        *,
        columns: dict,
        invalid: str,
        next: str = "end",  # shadows the builtin: it is the option's name
        reason_column: str = "errors",
    ) -> None:
        self.rules = [_Rules(entry_key("columns", key), _table_column(key), options)
                      for key, options in require_table("columns", columns).items()]
        self.next = require_tag("next", next)
        self.invalid = optional_tag("invalid", invalid)
        if self.invalid == self.next:
            raise OptionError("invalid", "must differ from next: invalid records get the extra reason column")
        self.reason_column = require_str("reason_column", reason_column)
        if not self.reason_column:
            raise OptionError("reason_column", "must be a non-empty column name")
        self.checks: list[_Check] = []
        self.width: int | None = None  # the header's, when there is one
        self.need = 0  # without a header: the fields the highest configured index needs

    def emits(self) -> dict[str, str]:
        tags = {self.next: "next"}
        if self.invalid:
            tags[self.invalid] = "invalid"
        return tags

    def column_names(self) -> list[str]:
        return [rules.column for rules in self.rules if isinstance(rules.column, str)]

    def records(self, fmt: RecordFormat, columns: list[str] | None) -> Columns:
        self.checks = [rules.bind(resolve_column(rules.column, columns), columns) for rules in self.rules]
        self.width = None if columns is None else len(columns)
        self.need = max(check.index for check in self.checks) + 1
        self._fmt = fmt
        if columns is None:
            return None
        if not self.invalid:
            return columns
        if self.reason_column in columns:
            raise RecordError(f"header already has a column {self.reason_column!r}: set reason_column "
                              "to another name for the reasons of invalid records")
        return {self.next: columns, self.invalid: [*columns, self.reason_column]}

    def shape_reason(self, count: int) -> str | None:
        """Why a record of ``count`` fields has the wrong shape, or None."""
        if self.width is not None:
            return None if count == self.width else f"has {_fields(count)}, the header has {self.width}"
        if count >= self.need:
            return None
        return f"has {_fields(count)}, column {self.need - 1} needs at least {self.need}"

    def reasons(self, row: list[str]) -> list[str]:
        """Why one record is invalid (empty: it is valid)."""
        shape = self.shape_reason(len(row))
        if shape:
            return [shape]
        return [why for check in self.checks if (why := check.explain(row[check.index]))]

    def process(self, lines: list[str]) -> Iterator[Pair]:
        fmt = self._format()
        for line in lines:
            row = parse_one(fmt, line)
            reasons = self.reasons(row)
            if not reasons:
                yield self.next, line
            elif self.invalid:
                yield self.invalid, fmt.join([*row, "; ".join(reasons)])

    def process_batch(self, lines: list[str]) -> Routes:
        fmt = self._format()
        invalid: dict[int, tuple[list[str], list[str]]] = {}  # position -> (fields, reasons)
        # Slice by slice, so that the fields parsed are still in the CPU cache when the
        # column passes read them: over 20k-record batches, whole-batch passes took
        # about twice as long.
        for start in range(0, len(lines), _SLICE):
            rows = parse_batch(fmt, lines[start : start + _SLICE])
            for k, reasons in self._invalid(rows).items():
                invalid[start + k] = (rows[k], reasons)
        return self._routes(fmt, len(lines), invalid)

    def _invalid(self, rows: list[list[str]]) -> dict[int, list[str]]:
        """The reasons of each invalid record among ``rows``, by position."""
        n = len(rows)
        lengths = list(map(len, rows))
        fits = self.need.__le__ if self.width is None else self.width.__eq__
        wrong = list(compress(range(n), map(not_, map(fits, lengths))))
        reasons = {i: [self.shape_reason(lengths[i]) or ""] for i in wrong}
        where = None  # the positions of the rows whose columns are checked, when not all
        if wrong:
            where = list(filterfalse(reasons.__contains__, range(n)))
            rows = [rows[i] for i in where]
        # Column by column, in C-speed passes; Python runs only for suspect values.
        for check in self.checks:
            values = list(map(itemgetter(check.index), rows))
            for k in check.suspects(values):
                why = check.explain(values[k])
                if why:
                    reasons.setdefault(k if where is None else where[k], []).append(why)
        return reasons

    def _routes(self, fmt: RecordFormat, n: int, invalid: dict[int, tuple[list[str], list[str]]]) -> Routes:
        if not invalid:
            return [(self.next, None, None)] if n else []
        out: Routes = []
        bad = sorted(invalid)
        if len(bad) < n:
            out.append((self.next, _others(bad, n), None))
        if self.invalid:
            texts = fmt.join_all([*invalid[i][0], "; ".join(invalid[i][1])] for i in bad)
            out.append((self.invalid, bad, texts))
        return out


def _others(positions: list[int], n: int) -> list[int]:
    """The positions in range(n) not in ``positions`` (ascending, and few)."""
    out: list[int] = []
    previous = 0
    for i in positions:
        out += range(previous, i)
        previous = i + 1
    out += range(previous, n)
    return out


def _table_column(key: str) -> Column:
    """A column as a table key names it: only digits means a 0-based index."""
    if key.isascii() and key.isdigit():
        return int(key)
    return require_column(entry_key("columns", key), key)


class CsvSelect(RecordProcessor):
    """Keep the ``columns`` listed, in that order (one may appear twice), renamed by
    ``rename``; a record too short for a column gets "" there."""

    name = "csv_select"

    def __init__(
        self,
        *,
        columns: list,
        rename: dict | None = None,
        next: str = "end",  # shadows the builtin: it is the option's name
    ) -> None:
        if not isinstance(columns, list) or not columns:
            raise OptionError("columns", f"must be a non-empty array of column names or indexes, got {columns!r}")
        self.columns = [require_column("columns", column) for column in columns]
        self.rename: dict[str, str] = {}
        for old, new in ({} if rename is None else _rename_table(rename)).items():
            key = entry_key("rename", old)
            if old not in self.columns:
                raise OptionError(key, f"renames {old!r}, which is not among the columns selected by name")
            if not isinstance(new, str) or not new:
                raise OptionError(key, f"must be the new column name, got {new!r}")
            self.rename[old] = new
        self.next = require_tag("next", next)
        self.indexes: list[int] = []

    def emits(self) -> dict[str, str]:
        return {self.next: "next"}

    def column_names(self) -> list[str]:
        return list(dict.fromkeys(column for column in self.columns if isinstance(column, str)))

    def records(self, fmt: RecordFormat, columns: list[str] | None) -> Columns:
        self.indexes = [resolve_column(column, columns) for column in self.columns]
        self._fmt = fmt
        if columns is None:
            return None
        return [self.rename.get(columns[i], columns[i]) for i in self.indexes]

    def process(self, lines: list[str]) -> Iterator[Pair]:
        fmt, indexes, next_ = self._format(), self.indexes, self.next
        for line in lines:
            row = parse_one(fmt, line)
            yield next_, fmt.join([row[i] if i < len(row) else "" for i in indexes])

    def process_batch(self, lines: list[str]) -> Routes:
        if not lines:
            return []
        fmt, indexes = self._format(), self.indexes
        rows = parse_batch(fmt, lines)
        need = max(indexes) + 1
        if min(map(len, rows)) < need:
            rows = [row if len(row) >= need else row + [""] * (need - len(row)) for row in rows]
        # itemgetter of one index gives the field itself, not a 1-tuple: zip makes those.
        picked = map(itemgetter(*indexes), rows) if len(indexes) > 1 else zip(map(itemgetter(indexes[0]), rows))
        return [(self.next, None, fmt.join_all(picked))]


def _rename_table(value: object) -> dict:
    if not isinstance(value, dict):
        raise OptionError("rename", f"must be a table old name -> new name, got {value!r}")
    return value
