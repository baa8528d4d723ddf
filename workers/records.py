"""CSV records: what a unit is in a pipeline with ``format = "csv"``.

The engine reads such a file with the standard :mod:`csv` module (so a quoted field
may hold newlines and delimiters) and hands each processor one *record* where a line
pipeline hands one line: the record's text as it stood in the file, its physical
lines joined with ``\\n``, without the final line end. Text processors (``grep``,
``regex_route``, ...) therefore see a record as its CSV text; record processors
(``csv_route``, ``csv_validate``, ``csv_select``) turn a batch of them into fields with
:meth:`RecordFormat.parse` and back with :meth:`RecordFormat.join`. Every output gets
records back in the same dialect, one per line end ``\\n``.

A processor that wants the columns implements ``records(fmt, columns)``: the engine
calls it once per file, before any record, with the pipeline's format and the columns
of the records this node receives (``None`` when the pipeline has no header), and it
returns the columns of the records it emits (its input's, if it does not change
them). That is how the header each output gets follows the ``csv_select`` nodes the
records went through.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence


class RecordError(ValueError):
    """A file's records do not suit a node (its header lacks a configured column)."""


class RecordFormat:
    """A CSV dialect (delimiter, quote character) and whether files have a header."""

    def __init__(self, delimiter: str = ",", quotechar: str = '"', header: bool = False) -> None:
        self.delimiter = delimiter
        self.quotechar = quotechar
        self.header = header
        self._buf = io.StringIO()
        # "\r\n": the writer quotes a field holding any character of its line end, so a
        # lone "\r" in a field is quoted too (with "\n" it would be written bare).
        self._writer = csv.writer(self._buf, delimiter=delimiter, quotechar=quotechar, lineterminator="\r\n")

    def __repr__(self) -> str:
        return f"RecordFormat(delimiter={self.delimiter!r}, quotechar={self.quotechar!r}, header={self.header})"

    def reader(self, lines: Iterable[str], strict: bool = False) -> Iterator[list[str]]:
        return csv.reader(lines, delimiter=self.delimiter, quotechar=self.quotechar, strict=strict)

    def parse(self, texts: Sequence[str]) -> list[list[str]]:
        """Each record's fields. A record's text is one complete record, so the reader
        returns exactly one row per text (``[]`` for an empty text)."""
        return list(csv.reader(texts, delimiter=self.delimiter, quotechar=self.quotechar))

    def join(self, fields: Iterable[object]) -> str:
        """One record's text in this dialect (quoted where needed, no line end)."""
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        self._writer.writerow(fields)
        return buf.getvalue()[:-2]

    def join_all(self, rows: Iterable[Iterable[object]]) -> list[str]:
        """Many records' texts at once (one writer call, then one split)."""
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        self._writer.writerows(rows)
        text = buf.getvalue()
        if not text:
            return []
        if self.quotechar not in text:
            return text[:-2].split("\r\n")
        # A quoted field may hold a newline: split on record boundaries only.
        return _split_records(text, self.quotechar)


def _split_records(text: str, quote: str) -> list[str]:
    """Split a writer's output into one text per record. The writer quotes every field
    holding a quote or a newline and doubles the quotes inside, so a physical line ends
    a record exactly when the quotes seen so far are even."""
    out: list[str] = []
    pending: list[str] = []
    odd = False
    for line in text[:-2].split("\r\n"):
        pending.append(line)
        odd ^= line.count(quote) % 2 == 1
        if not odd:
            out.append("\r\n".join(pending) if len(pending) > 1 else line)
            pending = []
    if pending:
        out.append("\r\n".join(pending))
    return out
