"""Compressed inputs, read transparently: gzip, bzip2, xz and zstd.

The kind is told by the file's first bytes (its magic), never by its name: a ``.gz``
that is plain text is read as text, a gzip file called ``data`` is decompressed.
Every format is read as its tools write it: gzip members, bzip2 and xz streams and zstd
frames may follow each other (``cat a.gz b.gz``, pbzip2), zstd skippable frames are
skipped, and NUL padding after a member is accepted (gzip and xz tools accept it).

Memory stays flat whatever the compression ratio: compressed bytes are read ``CHUNK``
at a time and each ``read(n)`` decompresses at most ``n`` bytes (zlib's
``unconsumed_tail``, bz2's and lzma's ``max_length``, zstandard's ``stream_reader``).
What a format itself keeps is on top: gzip's 32 KiB window, bzip2's block (< 4 MiB), an
xz dictionary or a zstd window (8 MiB at ``xz -6`` / ``zstd -19``), at most
``WINDOW_MAX_BYTES``, and touched only as far as output was produced.

Whatever the bytes, the only error raised is ``InputError``: corrupt data, a truncated
file, or a decompression refused by ``Limits``. A corrupt file's message names the
compressed byte where the trouble was seen, as precisely as it comes cheaply: gzip to
the byte (zlib is replayed), zstd the start of the block being decoded, bzip2 and xz the
start of the ``PIECE`` being fed. ``consumed`` counts what was read ahead from the file
(up to ``CHUNK``), so ``max_expansion`` is measured against it.
"""

from __future__ import annotations

import bz2
import lzma
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

import zstandard

from workers.errors import InputError
from workers.names import COMPRESSED_SUFFIXES, strip_suffix

MIB = 1 << 20
CHUNK = 64 * 1024  # compressed bytes read from the file at a time
PIECE = 4 * 1024  # bzip2/xz: compressed bytes fed at a time, so an error is placed within this
WINDOW_MAX_BYTES = 128 * MIB  # libzstd's default cap; xz -9 needs 64 MiB
HEAD = 6  # the longest magic (xz)

GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Each kind's magic, short enough to tell a cut-off next member from other bytes.
_MAGIC_PREFIX = {"gzip": GZIP_MAGIC, "bzip2": b"BZh", "xz": XZ_MAGIC}
_MAGIC_LEN = {"gzip": 2, "bzip2": 4, "xz": 6}
_PIECE_NAME = {"gzip": "member", "bzip2": "stream", "xz": "stream", "zstd": "frame"}


@dataclass(frozen=True)
class Limits:
    """How much decompression a file may ask for (0: no limit).

    ``max_expansion``: refused when produced > max_expansion * consumed, past the first
    MiB of output. ``max_decompressed_bytes``: refused when produced > this (the config
    key is ``max_decompressed_mb``).
    """

    max_expansion: float = 0.0
    max_decompressed_bytes: int = 0


class Input(Protocol):
    """What ``open_input`` returns: ``read(n)`` gives up to n decompressed bytes (b"" only
    at the end); ``consumed`` counts the compressed bytes read from the file, ``produced``
    the decompressed bytes returned. ``read`` may be kept in a local (a hot loop does);
    after the end it returns b"" again."""

    kind: str
    read: Callable[[int], bytes]

    @property
    def consumed(self) -> int: ...

    @property
    def produced(self) -> int: ...


def kind_of(head: bytes) -> str:
    """The kind told by a file's first bytes (at least ``HEAD`` of them, if it has them)."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if len(head) >= 4 and head[:3] == b"BZh" and 0x31 <= head[3] <= 0x39:  # BZh1 .. BZh9
        return "bzip2"
    if head[:6] == XZ_MAGIC:
        return "xz"
    if head[:4] == ZSTD_MAGIC or _is_skippable(head):
        return "zstd"
    return "plain"


def open_input(raw: BinaryIO, name: str, limits: Limits) -> Input:
    """Read ``raw`` (a binary file at its start, closed by the caller) decompressed if its
    magic says so. ``name`` is only for the messages."""
    seekable = getattr(raw, "seekable", None)  # a bare reader (read() only) is a pipe
    seekable = bool(seekable and seekable())
    start = raw.tell() if seekable else 0
    head = _read_up_to(raw, HEAD)
    kind = kind_of(head)
    if kind == "plain":
        if seekable:
            return _Plain(raw, start)
        return _PlainStream(raw, head)
    if kind == "gzip":
        return _Gzip(raw, name, limits, head)
    if kind == "zstd":
        return _Zstd(raw, name, limits, head)
    if kind == "bzip2":
        return _Streams(raw, name, limits, head, "bzip2", bz2.BZ2Decompressor)
    return _Streams(raw, name, limits, head, "xz", _xz_decompressor)


def _read_up_to(raw: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = raw.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _is_skippable(head: bytes) -> bool:
    # Skippable zstd frames: magic 0x184D2A50 .. 0x184D2A5F, little-endian.
    return len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50


def _xz_decompressor() -> lzma.LZMADecompressor:
    return lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=WINDOW_MAX_BYTES)


class _Plain:
    """Not compressed, seekable: ``read`` is the file's own (the peek is handed back by
    seeking), so a plain file costs nothing on top. The counts are the file's position:
    ask for them while it is open."""

    kind = "plain"

    def __init__(self, raw: BinaryIO, start: int) -> None:
        raw.seek(start)
        self._raw = raw
        self._start = start
        self.read: Callable[[int], bytes] = raw.read

    @property
    def consumed(self) -> int:
        return self._raw.tell() - self._start

    @property
    def produced(self) -> int:
        return self._raw.tell() - self._start


class _PlainStream:
    """Not compressed, not seekable (a pipe): the peeked bytes come first."""

    kind = "plain"

    def __init__(self, raw: BinaryIO, head: bytes) -> None:
        self._raw = raw
        self._head = head
        self.consumed = self.produced = 0
        self.read: Callable[[int], bytes] = self._read

    def _read(self, n: int) -> bytes:
        if self._head:
            data, self._head = self._head[:n], self._head[n:]
        else:
            data = self._raw.read(n)
        self.consumed = self.produced = self.produced + len(data)
        return data


class _Decoder:
    """What the compressed kinds share: the counts, the limits and the messages."""

    kind = ""

    def __init__(self, raw: BinaryIO, name: str, limits: Limits) -> None:
        self._raw = raw
        self._name = name
        self._limits = limits
        self.consumed = 0
        self.produced = 0
        # read(n) is clamped to _cap - produced, so a refusal comes at exactly one byte
        # past max_decompressed_bytes; produced > _stop is the one limit test a read makes.
        self._cap = limits.max_decompressed_bytes + 1 if limits.max_decompressed_bytes > 0 else sys.maxsize
        self._stop = 0
        self._check()
        self.read: Callable[[int], bytes] = self._read

    def _read(self, n: int) -> bytes:
        if not 0 < n <= self._cap - self.produced:
            n = self._room(n)
        return self._decode(n)

    def _decode(self, n: int) -> bytes:
        """Up to ``n`` decompressed bytes (``n`` already within the limits)."""
        raise NotImplementedError

    def _room(self, n: int) -> int:
        """``n`` for ``read(n)``, clamped to what max_decompressed_bytes leaves (plus one)."""
        if n < 1:
            raise ValueError(f"read(n) needs n >= 1, not {n}: reading a whole file at once defeats the memory bound")
        return min(n, self._cap - self.produced)

    def _took(self, out: bytes) -> bytes:
        """Decompressed bytes handed out: counted, and held to the limits."""
        self.produced += len(out)
        if self.produced > self._stop:
            self._check()
        return out

    def _check(self) -> None:
        """Refuse past a limit; else move ``_stop`` to where the next test is due."""
        lim, produced, consumed = self._limits, self.produced, self.consumed
        stop = sys.maxsize
        if lim.max_decompressed_bytes > 0:
            if produced > lim.max_decompressed_bytes:
                mb = lim.max_decompressed_bytes / MIB
                raise self.error(f"decompression refused: more than max_decompressed_mb = {mb:g} ({produced} bytes) "
                                  f"from {consumed} compressed bytes (a decompression bomb?); "
                                  "raise max_decompressed_mb if the file is genuine")
            stop = lim.max_decompressed_bytes
        if lim.max_expansion > 0:
            allowed = int(lim.max_expansion * consumed)  # produced > x  <=>  produced > floor(x)
            if produced > MIB and produced > allowed:
                raise self.error(f"decompression refused: {produced} bytes from {consumed} compressed bytes is more "
                                  f"than max_expansion = {lim.max_expansion:g} times (a decompression bomb?); "
                                  "raise max_expansion if the file is genuine")
            stop = min(stop, max(MIB, allowed))
        self._stop = stop

    def error(self, message: str) -> InputError:
        return InputError(self._name, None, message)

    def _corrupt(self, offset: int, exc: Exception) -> InputError:
        reason = str(exc).removeprefix("Error -3 while decompressing data: ").removeprefix("zstd decompress error: ")
        return self.error(f"corrupt {self.kind} data at compressed byte {offset}: {reason}")

    def truncated(self, inside: str = "") -> InputError:
        inside = inside or f"a {_PIECE_NAME[self.kind]}"
        return self.error(f"truncated {self.kind} data: the file ends at compressed byte {self.consumed}, "
                           f"inside {inside}")

    def _next_start(self, rest: bytes) -> bytes | None:
        """After a member (stream) ends, ``rest`` and what follows in the file: None at the
        end (NUL padding included), else the bytes from the next member's magic on."""
        need = _MAGIC_LEN[self.kind]
        while True:
            rest = rest.lstrip(b"\0")
            if len(rest) >= need:
                break
            chunk = self._raw.read(CHUNK)
            if not chunk:
                if not rest:
                    return None
                if _MAGIC_PREFIX[self.kind].startswith(rest[: len(_MAGIC_PREFIX[self.kind])]):
                    raise self.truncated()
                break
            self.consumed += len(chunk)
            rest += chunk
        if kind_of(rest[:HEAD]) != self.kind:
            at = self.consumed - len(rest)
            raise self.error(f"corrupt {self.kind} data at compressed byte {at}: the bytes after the end of the "
                              f"last {_PIECE_NAME[self.kind]} are neither another one nor NUL padding")
        return rest


class _Gzip(_Decoder):
    """gzip members through zlib (wbits=31 checks the header, the CRC and the length)."""

    kind = "gzip"

    def __init__(self, raw: BinaryIO, name: str, limits: Limits, head: bytes) -> None:
        super().__init__(raw, name, limits)
        self.consumed = len(head)
        self._d = zlib.decompressobj(31)
        self._tail = head  # compressed bytes read but not yet taken by zlib
        self._snap = (self._d.copy(), 0, head)

    def _decode(self, n: int) -> bytes:
        d = self._d
        if d.eof:
            return b""  # the end, asked again
        while True:
            data = self._tail or self._fill()
            try:
                out = d.decompress(data, n)
            except zlib.error as exc:
                raise self._corrupt(self._corrupt_at(), exc) from None
            self._tail = d.unconsumed_tail
            if d.eof:
                d = self._next_member(d.unused_data)
            if out:
                return self._took(out)
            if d.eof:
                return b""  # the last member ended with no output left
            if not data:
                raise self.truncated()

    def _fill(self) -> bytes:
        data = self._raw.read(CHUNK)
        self.consumed += len(data)
        if data:
            self._snap = (self._d.copy(), self.consumed - len(data), data)
        return data

    def _next_member(self, rest: bytes) -> zlib._Decompress:
        after = self._next_start(rest)
        if after is None:
            return self._d  # at its eof: every read from now on returns b""
        self._d = zlib.decompressobj(31)
        self._tail = after
        self._snap = (self._d.copy(), self.consumed - len(after), after)
        return self._d

    def _corrupt_at(self) -> int:
        """Where zlib gave up, to the byte: the chunk it was in is fed again, a byte at a
        time, to a copy of the decompressor taken before it. The copy is cheap (a 32 KiB
        window per 64 KiB chunk) and the replay costs only when the data is corrupt."""
        d, start, data = self._snap
        for i in range(len(data)):
            try:
                d.decompress(data[i : i + 1])
            except zlib.error:
                return start + i
            if d.eof:
                break
        return start  # not reproduced: at least the chunk's start


class _Streams(_Decoder):
    """bzip2 or xz streams, one after the other. The compressed bytes are fed ``PIECE``
    at a time: neither decompressor can be copied or says where it stopped, so an error
    is placed at the start of the piece being fed, which is within ``PIECE`` bytes."""

    def __init__(self, raw: BinaryIO, name: str, limits: Limits, head: bytes, kind: str,
                 new: Callable[[], bz2.BZ2Decompressor | lzma.LZMADecompressor]) -> None:
        super().__init__(raw, name, limits)
        self.kind = kind
        self.consumed = len(head)
        self._new = new
        self._d = new()
        self._buf = memoryview(head)  # read from the file, not yet fed from _pos on
        self._pos = 0
        self._piece_at = 0

    def _decode(self, n: int) -> bytes:
        d = self._d
        if d.eof:
            return b""  # the end, asked again
        while True:
            data = self._piece() if d.needs_input else b""
            if d.needs_input and not data:
                raise self.truncated()
            try:
                out = d.decompress(data, n)
            except (OSError, lzma.LZMAError) as exc:
                raise self._corrupt(self._piece_at, exc) from None
            if d.eof:
                d = self._next_stream(d.unused_data)
            if out:
                return self._took(out)
            if d.eof:
                return b""

    def _piece(self) -> memoryview:
        if self._pos >= len(self._buf):
            chunk = self._raw.read(CHUNK)
            self.consumed += len(chunk)
            self._buf = memoryview(chunk)
            self._pos = 0
        pos = self._pos
        self._pos = pos + PIECE
        self._piece_at = self.consumed - len(self._buf) + pos
        return self._buf[pos : pos + PIECE]

    def _next_stream(self, unused: bytes) -> bz2.BZ2Decompressor | lzma.LZMADecompressor:
        after = self._next_start(unused + self._buf[self._pos :])
        if after is None:
            return self._d
        self._d = self._new()
        self._buf = memoryview(after)
        self._pos = 0
        return self._d


class _Frames:
    """The compressed bytes on their way to zstandard's reader, walked frame by frame
    (RFC 8878), because the reader ends without an error when a frame is cut short.

    The walker hands over one unit at a time (a frame header, a block, a checksum), so
    when the reader fails, ``unit_at`` is the start of the block (or header) it was
    decoding. NUL bytes between frames are dropped (padding), skippable frames skipped;
    any other byte where a frame should start is corrupt data.
    """

    def __init__(self, raw: BinaryIO, head: bytes, owner: _Decoder) -> None:
        self._raw = raw
        self._owner = owner
        self._buf = head
        self._pos = 0
        self.consumed = len(head)
        self.unit_at = 0
        self._left = 0  # bytes of the current unit not yet handed over
        self._skipping = False  # the current unit is a skippable frame: dropped
        self._state = "frame"  # what comes after the unit: "frame", "block" or "checksum"
        self._checksum = False

    def read(self, size: int = -1) -> bytes | memoryview:
        while not self._left or self._skipping:
            if self._skipping:
                self._skip()
            elif not self._next_unit():
                return b""
        if self._pos == len(self._buf) and not self._more():
            raise self._owner.truncated("a frame")
        end = min(len(self._buf), self._pos + self._left, self._pos + size if size > 0 else sys.maxsize)
        piece = memoryview(self._buf)[self._pos : end]
        self._left -= end - self._pos
        self._pos = end
        return piece

    def _more(self) -> bool:
        """Read the next chunk, keeping what is left of this one."""
        chunk = self._raw.read(CHUNK)
        if not chunk:
            return False
        self.consumed += len(chunk)
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def _need(self, n: int) -> bool:
        while len(self._buf) - self._pos < n:
            if not self._more():
                return False
        return True

    def _skip(self) -> None:
        while self._left:
            if self._pos == len(self._buf) and not self._more():
                raise self._owner.truncated("a skippable frame")
            step = min(self._left, len(self._buf) - self._pos)
            self._pos += step
            self._left -= step
        self._skipping = False

    def _next_unit(self) -> bool:
        """Parse the next header; False at the clean end of the file."""
        self.unit_at = self.consumed - len(self._buf) + self._pos
        if self._state == "frame":
            return self._frame_start()
        if self._state == "checksum":
            self._left, self._state = 4, "frame"
            return True
        if not self._need(3):
            raise self._owner.truncated("a frame")
        b = self._buf
        header = b[self._pos] | b[self._pos + 1] << 8 | b[self._pos + 2] << 16
        block_type = (header >> 1) & 3
        if block_type == 3:
            raise self._owner.error(f"corrupt zstd data at compressed byte {self.unit_at}: reserved block type")
        self._left = 3 + (1 if block_type == 1 else header >> 3)
        if header & 1:  # the frame's last block
            self._state = "checksum" if self._checksum else "frame"
        return True

    def _frame_start(self) -> bool:
        while True:
            if self._pos == len(self._buf) and not self._more():
                return False
            if self._buf[self._pos]:
                break
            rest = self._buf[self._pos :].lstrip(b"\0")  # NUL padding: dropped
            self._pos = len(self._buf) - len(rest)
        self.unit_at = self.consumed - len(self._buf) + self._pos
        if not self._need(4) or not self._need(5 if self._buf[self._pos : self._pos + 4] == ZSTD_MAGIC else 8):
            raise self._cut_short()
        b, p = self._buf, self._pos
        if b[p : p + 4] == ZSTD_MAGIC:
            fhd = b[p + 4]  # Frame_Header_Descriptor
            single = (fhd >> 5) & 1
            fcs = [single, 2, 4, 8][fhd >> 6]
            self._left = 5 + (0 if single else 1) + [0, 1, 2, 4][fhd & 3] + fcs
            self._checksum = bool((fhd >> 2) & 1)
            self._state = "block"
            return True
        if _is_skippable(b[p : p + 4]):
            self._left = 8 + int.from_bytes(b[p + 4 : p + 8], "little")
            self._skipping = True
            return True
        raise self._not_a_frame()

    def _cut_short(self) -> InputError:
        """The file ends within a frame's magic or first header bytes."""
        rest = self._buf[self._pos : self._pos + 4]
        skippable = rest[0] & 0xF0 == 0x50 and b"\x2a\x4d\x18".startswith(rest[1:])
        return self._owner.truncated("a frame") if ZSTD_MAGIC.startswith(rest) or skippable else self._not_a_frame()

    def _not_a_frame(self) -> InputError:
        return self._owner.error(f"corrupt zstd data at compressed byte {self.unit_at}: "
                                  "not a zstd frame (nor NUL padding after the last one)")


class _Zstd(_Decoder):
    """zstd frames through zstandard's stream reader, which bounds each read's output."""

    kind = "zstd"

    def __init__(self, raw: BinaryIO, name: str, limits: Limits, head: bytes) -> None:
        super().__init__(raw, name, limits)
        self._frames = _Frames(raw, head, self)
        self.consumed = len(head)
        decompressor = zstandard.ZstdDecompressor(max_window_size=WINDOW_MAX_BYTES)
        # The reader only calls read(size) on its source; its stubs ask for a whole IO.
        source = cast(BinaryIO, self._frames)
        self._reader = decompressor.stream_reader(source, read_size=CHUNK, read_across_frames=True, closefd=False)

    def _decode(self, n: int) -> bytes:
        try:
            out = self._reader.read(n)
        except zstandard.ZstdError as exc:
            self.consumed = self._frames.consumed
            raise self._corrupt(self._frames.unit_at, exc) from None
        self.consumed = self._frames.consumed
        return self._took(out) if out else out

    def truncated(self, inside: str = "") -> InputError:
        self.consumed = self._frames.consumed
        return super().truncated(inside)


__all__ = ["COMPRESSED_SUFFIXES", "Input", "Limits", "kind_of", "open_input", "strip_suffix"]
