"""File names: how foldermill shows them, and the names it derives from them.

A name in a queue folder may be anything the filesystem allows: bytes that are not
UTF-8 (Python hands them over as surrogate escapes, ``os.fsdecode``), control
characters, 255 bytes (ext4's ``NAME_MAX``). On disk it is kept exactly. Everywhere a
person or a program reads it (logs, the journal, JSON, the dashboard, ``status``,
``history``) it is *shown*: a printable, valid-UTF-8 form that maps back to exactly one
name (``shown`` / ``unshown``):

- a byte that is not UTF-8 becomes ``\\xNN`` (NN >= 80), a control character below 0x80
  ``\\xNN`` (or ``\\n``, ``\\t``, ``\\r``), any other unprintable character ``\\uNNNN``;
- a backslash becomes ``\\\\``; everything else is itself.

A compressed input's outputs are named without its compression suffix
(``app.log.1.gz`` -> ``output/app.log.1``, ``strip_suffix``): the name decides, as for
routes, though the content's magic bytes decide how it is read.

Every name foldermill derives from a file's name (its final name after a collision,
its side outputs, its reason file) fits in ``NAME_MAX`` bytes: one that would not is
shortened deterministically (``fit``) to a prefix, ``~``, a hash of the whole name, and
its extension. Staged temporary files never carry the name at all.

With ``[watch] recursive = true`` a name is a path relative to its queue folder
(``acme/2026-12/x.csv``, components joined by ``/``): every derived name keeps the
directories and derives from the last component alone, which is what must fit.
"""

from __future__ import annotations

import hashlib
import os
import secrets

NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, tmpfs)
EXT_MAX = 40  # an extension longer than this is not kept when a name is shortened
REASON_SUFFIX = ".reason"
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}
_BACK = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def shown(name: str) -> str:
    """The printable, unambiguous form of ``name`` (see the module's doc)."""
    if name.isprintable() and "\\" not in name:
        return name  # the usual case, at C speed
    out = []
    for ch in name:
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a raw byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def unshown(text: str) -> str:
    """The name that ``shown`` turned into ``text`` (text with no escapes is itself)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "\\" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        kind = text[i + 1]
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        if width is None:
            out.append(_BACK.get(kind, "\\" + kind))
            i += 2
            continue
        digits = text[i + 2: i + 2 + width]
        try:
            code = int(digits, 16)
        except ValueError:
            out.append(text[i: i + 2])
            i += 2
            continue
        if code > 0x10FFFF:  # no such character: the text stays as it is
            out.append(text[i: i + 2])
            i += 2
            continue
        out.append(chr(0xDC00 + code) if kind == "x" and code >= 0x80 else chr(code))
        i += 2 + width
    return "".join(out)


def name_bytes(name: str) -> int:
    return len(os.fsencode(name))


def split(name: str) -> tuple[str, str]:
    """``("acme/2026-12/", "x.csv")``: the directories (with their ``/``) and the base name."""
    cut = name.rfind("/") + 1
    return name[:cut], name[cut:]


def base_name(name: str) -> str:
    return name[name.rfind("/") + 1:]


def fit(name: str, limit: int = NAME_MAX) -> str:
    """The last component of ``name`` fitted (its directories are kept as they are):
    ``name`` if it fits in ``limit`` bytes, else ``<prefix>~<hash>.<ext>`` that does:
    the same long name always gives the same short one, and two long names that share
    their first 200 bytes still differ."""
    if "/" in name:
        head, base = split(name)
        return head + fit(base, limit)
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    digest = hashlib.blake2b(raw, digest_size=6).hexdigest()
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or name_bytes(ext) > EXT_MAX:
        ext, dot = "", ""
    tail = os.fsencode(f"~{digest}{dot}{ext}")
    room = limit - len(tail)
    while room > 0 and (raw[room] & 0xC0) == 0x80:  # never cut a UTF-8 character in two
        room -= 1
    return os.fsdecode(raw[:room] + tail)


def collision_name(name: str, n: int) -> str:
    """``app.log`` -> ``app-1.log``; no extension: ``-N`` at the end; a hidden name keeps
    its leading dot. Shortened to fit. Of a path, the last component's."""
    if "/" in name:
        head, base = split(name)
        return head + collision_name(base, n)
    lead = "." if name.startswith(".") else ""
    body = name[len(lead):]
    stem, dot, ext = body.rpartition(".")
    if not dot or not stem or name_bytes(ext) > EXT_MAX:  # a long "extension" is part of the stem
        stem, dot, ext = body, "", ""
    suffix = f"-{n}{dot}{ext}"
    candidate = f"{lead}{stem}{suffix}"
    if name_bytes(candidate) <= NAME_MAX:
        return candidate
    # Keep the "-N.ext" visible: shorten the stem, not the whole name. A shortened stem
    # keeps no extension of its own (fit's), so the result always fits.
    return _fit_bare(f"{lead}{stem}", NAME_MAX - name_bytes(suffix)) + suffix


def _fit_bare(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` bytes with ``~<hash>`` at the end (no extension kept)."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    tail = b"~" + hashlib.blake2b(raw, digest_size=6).hexdigest().encode()
    room = limit - len(tail)
    while room > 0 and (raw[room] & 0xC0) == 0x80:
        room -= 1
    return os.fsdecode(raw[:room] + tail)


def strip_suffix(name: str) -> str:
    """``name`` without one compression suffix (any case), if a name remains."""
    if "/" in name:
        head, base = split(name)
        return head + strip_suffix(base)
    lower = name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if lower.endswith(suffix) and name[: -len(suffix)] not in ("", "."):
            return name[: -len(suffix)]
    return name


def output_name(final: str, suffix: str = "") -> str:
    """``output/<final>`` for the main output, ``<final>.<suffix>`` for a side output;
    a compression suffix is not part of them (``strip_suffix``)."""
    base = strip_suffix(final)
    return fit(f"{base}.{suffix}") if suffix else base


def reason_name(final: str) -> str:
    """The file beside ``failed/<final>`` that says why it failed."""
    return fit(final + REASON_SUFFIX)


def reason_files(names: list[str] | set[str]) -> set[str]:
    """Of the names in ``failed/``, those that are the reason file of another one."""
    present = set(names)
    return {r for r in (reason_name(n) for n in present) if r in present}


def staged_name(file_id: int | str, execution: str, k: int) -> str:
    """A staged output: hidden, short whatever the file's name, unique per execution
    (two executions of one file never share a temporary file)."""
    return f".fm-{file_id}.{execution}.{k}.tmp"


def staged_prefix(file_id: int | str) -> str:
    return f".fm-{file_id}."


def new_execution() -> str:
    return secrets.token_hex(6)
