"""Compressed inputs (workers/compressed.py), read from archives the real tools make:
gzip, bzip2, xz and zstd, called as an operator would."""

from __future__ import annotations

import io
import random
import re
import struct
import subprocess
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import TypeVar

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.components import require, unavailable
from workers.compressed import COMPRESSED_SUFFIXES, MIB, Input, Limits, open_input, strip_suffix
from workers.errors import InputError

pytestmark = pytest.mark.timeout(60)

KINDS = ["gzip", "bzip2", "xz", "zstd"]
# -n: no name or time in the gzip header, so it is 10 bytes; -T1: one thread (shared cores).
TOOLS = {"gzip": ["gzip", "-c", "-n"], "bzip2": ["bzip2", "-c"], "xz": ["xz", "-c", "-T1"],
         "zstd": ["zstd", "-q", "-c", "-T1"]}
MAGICS = {"gzip": b"\x1f\x8b", "bzip2": b"BZh9", "xz": b"\xfd7zXZ\x00", "zstd": b"\x28\xb5\x2f\xfd",
          "skippable zstd": b"\x5a\x2a\x4d\x18"}
# Zeros in the bombs: past the limits at once, small enough to make in a fraction of a second.
BOMB_BYTES = {"gzip": 64 * MIB, "bzip2": 64 * MIB, "xz": 32 * MIB, "zstd": 200 * MIB}
TOOL_TIMEOUT_S = 60
T = TypeVar("T")
NO_LIMITS = Limits()


def compress(kind: str, data: bytes) -> bytes:
    tool = TOOLS[kind]
    done = subprocess.run([require(tool[0]), *tool[1:]], input=data, capture_output=True, check=True,
                          timeout=TOOL_TIMEOUT_S)
    return done.stdout


def compress_zeros(kind: str, n: int) -> bytes:
    """``head -c n /dev/zero | tool``: the zeros never pass through this process."""
    tool = TOOLS[kind]
    with subprocess.Popen(["head", "-c", str(n), "/dev/zero"], stdout=subprocess.PIPE) as head, \
            subprocess.Popen([require(tool[0]), *tool[1:]], stdin=head.stdout, stdout=subprocess.PIPE) as proc:
        assert head.stdout is not None
        head.stdout.close()  # the tool holds the pipe now
        out, _ = proc.communicate(timeout=TOOL_TIMEOUT_S)
        assert head.wait(timeout=TOOL_TIMEOUT_S) == 0 and proc.returncode == 0
    return out


def varied_text(n_lines: int, seed: int) -> bytes:
    """Log-like lines: words, numbers, some non-ASCII, lengths from 0 to a few hundred."""
    r = random.Random(seed)
    words = ["".join(r.choice("abcdefghijklmnopqrstuvwxyzé€") for _ in range(r.randint(1, 12))) for _ in range(3000)]
    lines = [f"{i} {r.random():.6f} " + " ".join(r.choices(words, k=r.randint(0, 40))) for i in range(n_lines)]
    return ("\n".join(lines) + "\n").encode()


def read_all(inp: Input, sizes: list[int] | None = None) -> bytes:
    sizes = sizes or [65536]
    out = []
    for i in count():
        n = sizes[i % len(sizes)]
        chunk = inp.read(n)
        if not chunk:
            return b"".join(out)
        assert len(chunk) <= n
        out.append(chunk)
    raise AssertionError("unreachable")


def drain(inp: Input) -> int:
    """Read to the end keeping nothing: what the memory tests measure is the reader's."""
    return sum(len(chunk) for chunk in iter(lambda: inp.read(65536), b""))


def decode(data: bytes, limits: Limits = NO_LIMITS, name: str = "f") -> tuple[bytes, Input]:
    inp = open_input(io.BytesIO(data), name, limits)
    return read_all(inp), inp


def refusal(data: bytes, limits: Limits = NO_LIMITS, name: str = "f") -> str:
    with pytest.raises(InputError) as caught:
        decode(data, limits, name)
    return str(caught.value)


@pytest.fixture(scope="module")
def text() -> bytes:
    return varied_text(20_000, seed=1)  # about 2 MB


@pytest.fixture(scope="module")
def archives(text: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The text compressed by each tool, in files with no suffix (the magic decides)."""
    folder = tmp_path_factory.mktemp("archives")
    paths = {}
    for kind in KINDS:
        paths[kind] = folder / f"text-{kind}"
        paths[kind].write_bytes(compress(kind, text))
    return paths


class Bombs(dict[str, bytes]):
    """Each kind's bomb, made the first time a test asks for it."""

    def __missing__(self, kind: str) -> bytes:
        self[kind] = compress_zeros(kind, BOMB_BYTES[kind])
        return self[kind]


@pytest.fixture(scope="module")
def bombs() -> Bombs:
    return Bombs()


def peak_growth(action: Callable[[], T]) -> tuple[int, T]:
    """Run ``action()``; the peak RSS above the RSS before it, in bytes (Linux: VmHWM,
    reset through /proc/self/clear_refs)."""
    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError as exc:
        unavailable(f"a resettable peak RSS (/proc/self/clear_refs: {exc})")
    before = status("VmRSS")
    result = action()
    return status("VmHWM") - before, result


# Round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.one_of(st.integers(1, 300), st.integers(1, 300_000)), max_size=40))
def test_a_round_trip_with_any_read_sizes_gives_the_text_and_consumed_is_the_file_size(
        kind: str, sizes: list[int], text: bytes, archives: dict[str, Path]) -> None:
    with archives[kind].open("rb") as raw:
        inp = open_input(raw, archives[kind].name, Limits(max_expansion=100, max_decompressed_bytes=64 * MIB))
        assert inp.kind == kind
        assert read_all(inp, [*sizes, 300_000]) == text  # one big read a round keeps it fast
        assert inp.consumed == archives[kind].stat().st_size and inp.produced == len(text)


def test_a_plain_file_is_its_own_bytes_whatever_its_name(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "caf\udce9.log.gz"
    path.write_bytes(text)
    with path.open("rb") as raw:
        inp = open_input(raw, path.name, Limits(max_expansion=1, max_decompressed_bytes=10))
        assert inp.kind == "plain"
        first = inp.read(1000)
        assert first == text[:1000] and inp.consumed == inp.produced == 1000
        assert first + read_all(inp) == text and inp.consumed == inp.produced == len(text)


@pytest.mark.parametrize("kind", ["plain", *KINDS])
def test_reading_on_after_the_end_gives_b_empty_again(kind: str, text: bytes) -> None:
    data = text[:100_000] if kind == "plain" else compress(kind, text[:50_000]) + compress(kind, text[50_000:100_000])
    read = open_input(io.BytesIO(data), "f", Limits()).read  # kept, as a hot loop keeps it
    assert b"".join(iter(lambda: read(65536), b"")) == text[:100_000]
    assert read(65536) == read(1) == b""


@pytest.mark.parametrize("kind", KINDS)
def test_read_needs_a_positive_size(kind: str) -> None:
    inp = open_input(io.BytesIO(compress(kind, b"text\n")), "f", Limits())
    for n in (0, -1):
        with pytest.raises(ValueError, match="read\\(n\\) needs n >= 1"):
            inp.read(n)
    assert inp.read(65536) == b"text\n"


def test_a_gzip_file_without_a_suffix_is_decompressed(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "data"
    path.write_bytes(compress("gzip", text[:50_000]))
    with path.open("rb") as raw:
        inp = open_input(raw, path.name, Limits())
        assert inp.kind == "gzip" and read_all(inp) == text[:50_000]


@pytest.mark.parametrize("data", [b"", b"\x1f", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f", b"BZh0 not bzip2"])
def test_a_file_shorter_than_a_magic_or_unlike_any_is_plain(data: bytes) -> None:
    out, inp = decode(data)
    assert inp.kind == "plain" and out == data and inp.consumed == len(data)


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd"])
def test_a_pipe_is_read_like_a_file(tmp_path: Path, text: bytes, kind: str) -> None:
    data = text[:300_000] if kind == "plain" else compress(kind, text[:300_000])
    path = tmp_path / "in"
    path.write_bytes(data)
    with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None and not cat.stdout.seekable()
        inp = open_input(cat.stdout, "in", Limits())
        assert inp.kind == kind and read_all(inp, [3, 70_000]) == text[:300_000]
        assert inp.consumed == len(data)
        assert cat.wait(timeout=TOOL_TIMEOUT_S) == 0


# Members, streams, frames -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_concatenated_members_streams_and_frames_give_every_content(kind: str, text: bytes) -> None:
    a, b = text[:200_000], text[200_000:300_000]
    data = compress(kind, a) + compress(kind, b)  # cat a.gz b.gz; pbzip2 writes bzip2 streams so
    out, inp = decode(data)
    assert out == a + b and inp.consumed == len(data)


@pytest.mark.parametrize("kind", KINDS)
def test_many_small_members_one_after_the_other(kind: str) -> None:
    member = compress(kind, b"one line\n")
    out, inp = decode(member * 500)
    assert out == b"one line\n" * 500 and inp.consumed == len(member) * 500


def test_zstd_of_two_files_and_skippable_frames(tmp_path: Path, text: bytes) -> None:
    (tmp_path / "a").write_bytes(text[:100_000])
    (tmp_path / "b").write_bytes(text[100_000:150_000])
    both = subprocess.run([require("zstd"), "-q", "-c", str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, check=True, timeout=TOOL_TIMEOUT_S).stdout
    assert decode(both)[0] == text[:150_000]
    no_check = subprocess.run([require("zstd"), "-q", "-c", "--no-check"], input=text[:70_000], capture_output=True,
                              check=True, timeout=TOOL_TIMEOUT_S).stdout
    assert decode(both + no_check + both)[0] == text[:150_000] + text[:70_000] + text[:150_000]

    def skippable(payload: bytes, n: int = 0) -> bytes:
        return struct.pack("<II", 0x184D2A50 + n, len(payload)) + payload

    a, b = compress("zstd", text[:1000]), compress("zstd", text[1000:2000])
    data = skippable(b"metadata", 15) + a + skippable(b"x" * 200_000) + skippable(b"") + b + skippable(b"end", 3)
    out, inp = decode(data)
    assert inp.kind == "zstd" and out == text[:2000] and inp.consumed == len(data)
    assert decode(skippable(b"only this"))[0] == b""
    assert "truncated zstd data" in refusal(a + skippable(b"x" * 100)[:50])


# Truncated, corrupt, padded ---------------------------------------------------------


def header_size(kind: str, data: bytes) -> int:
    return {"gzip": 10, "bzip2": 4, "xz": 12}.get(kind) or zstandard.frame_header_size(data)


@pytest.mark.parametrize("kind", KINDS)
def test_a_truncated_file_is_refused_and_says_where_it_ends(kind: str, text: bytes, archives: dict[str, Path]) -> None:
    data = archives[kind].read_bytes()
    inside = {"gzip": "member", "bzip2": "stream", "xz": "stream", "zstd": "frame"}[kind]
    for cut in (len(data) // 2, len(data) - 1, header_size(kind, data), len(MAGICS[kind])):
        message = refusal(data[:cut], name="cut.log")
        assert message == f"cut.log: truncated {kind} data: the file ends at compressed byte {cut}, inside a {inside}"
    second = compress(kind, b"second\n")
    for cut in (1, len(second) // 2):  # cut inside a second member
        assert f"truncated {kind} data" in refusal(data + second[:cut])


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_data_is_refused_with_its_compressed_offset(kind: str, archives: dict[str, Path]) -> None:
    data = bytearray(archives[kind].read_bytes())
    flip = len(data) // 2
    data[flip : flip + 8] = bytes(b ^ 0xFF for b in data[flip : flip + 8])
    message = refusal(bytes(data), name="bad.log")
    found = re.fullmatch(rf"bad\.log: corrupt {kind} data at compressed byte (\d+): \S.*", message)
    assert found, message
    at = int(found.group(1))
    # Not before the damage by more than a piece (bzip2, xz: 4 KiB) or a zstd block (128 KiB at most);
    # zlib is followed to the byte, so gzip names a byte at or after it.
    assert (flip if kind == "gzip" else flip - 128 * 1024) <= at < len(data)


def test_a_gzip_error_is_placed_to_the_byte(text: bytes) -> None:
    first = compress("gzip", text[:300_000])  # more than one 64 KiB chunk
    header = compress("gzip", b"")[:10]
    # A second member whose first deflate block has the reserved block type (BTYPE = 11).
    message = refusal(first + header + b"\x07" + bytes(20))
    assert f"corrupt gzip data at compressed byte {len(first) + 10}: invalid block type" in message


@pytest.mark.parametrize("kind", KINDS)
def test_trailing_nul_padding_is_accepted_and_other_bytes_are_not(kind: str, text: bytes) -> None:
    data = compress(kind, text[:100_000])
    for padding in (b"\0", b"\0" * 3, b"\0" * 200_000):
        out, inp = decode(data + padding)
        assert out == text[:100_000] and inp.consumed == len(data) + len(padding)
    for nuls, garbage in ((0, b"garbage\n"), (5, b"x"), (70_000, b"\x01")):
        message = refusal(data + b"\0" * nuls + garbage)
        assert f"corrupt {kind} data at compressed byte {len(data) + nuls}: " in message, message


# Bombs ------------------------------------------------------------------------------


def drained_refusal(data: bytes, limits: Limits) -> str:
    with pytest.raises(InputError) as caught:
        drain(open_input(io.BytesIO(data), "bomb", limits))
    return str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_bomb_is_refused_past_max_decompressed_mb_with_flat_memory(kind: str, bombs: Bombs) -> None:
    data = bombs[kind]
    growth, message = peak_growth(lambda: drained_refusal(data, Limits(max_decompressed_bytes=16 * MIB)))
    assert message == (f"bomb: decompression refused: more than max_decompressed_mb = 16 ({16 * MIB + 1} bytes) "
                       f"from {len(data)} compressed bytes (a decompression bomb?); "
                       "raise max_decompressed_mb if the file is genuine")
    assert growth < 12 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"


@pytest.mark.parametrize("kind", KINDS)
def test_a_bomb_is_refused_past_max_expansion_with_flat_memory(kind: str, bombs: Bombs) -> None:
    growth, message = peak_growth(lambda: drained_refusal(bombs[kind], Limits(max_expansion=100)))
    found = re.fullmatch(r"bomb: decompression refused: (\d+) bytes from (\d+) compressed bytes is more than "
                         r"max_expansion = 100 times \(a decompression bomb\?\); raise max_expansion if the file "
                         r"is genuine", message)
    assert found, message
    produced, consumed = int(found.group(1)), int(found.group(2))
    assert produced > 100 * consumed and produced > MIB and consumed <= len(bombs[kind])
    assert growth < 12 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"


@pytest.mark.parametrize("kind", KINDS)
def test_a_bomb_read_without_limits_keeps_memory_flat(kind: str, bombs: Bombs) -> None:
    growth, produced = peak_growth(lambda: drain(open_input(io.BytesIO(bombs[kind]), "bomb", Limits())))
    assert produced == BOMB_BYTES[kind]
    assert growth < 16 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"  # xz -6: an 8 MiB dictionary


def test_the_limits_are_exact_at_their_edges() -> None:
    zeros = compress("zstd", bytes(MIB))
    assert decode(zeros, Limits(max_expansion=1))[0] == bytes(MIB)  # the first MiB is exempt
    assert "max_expansion = 1 times" in refusal(compress("zstd", bytes(MIB + 1)), Limits(max_expansion=1))
    assert decode(compress("gzip", b"x" * 1000), Limits(max_decompressed_bytes=1000))[0] == b"x" * 1000
    message = refusal(compress("gzip", b"x" * 1001), Limits(max_decompressed_bytes=1000))
    assert "more than max_decompressed_mb = 0.000953674 (1001 bytes)" in message


# Whatever the bytes -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(magic=st.sampled_from(sorted(MAGICS.values())), garbage=st.binary(max_size=400))
def test_random_bytes_after_a_magic_decode_or_raise_input_error(magic: bytes, garbage: bytes) -> None:
    try:
        decode(magic + garbage)
    except InputError as exc:
        assert str(exc).startswith("f: ")


@pytest.fixture(scope="module")
def small_archives() -> dict[str, bytes]:
    line = varied_text(200, seed=2)
    return {kind: compress(kind, line) + compress(kind, line[:300]) for kind in KINDS}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
       cut=st.floats(0, 1), cut_it=st.booleans())
def test_damaged_archives_decode_or_raise_input_error(small_archives: dict[str, bytes], kind: str,
                                                      edits: list[tuple[float, int]], cut: float, cut_it: bool) -> None:
    data = bytearray(small_archives[kind])
    for where, value in edits:
        data[int(where * (len(data) - 1))] = value
    if cut_it:
        data = data[: int(cut * len(data))]
    try:
        _, inp = decode(bytes(data))
    except InputError as exc:
        assert str(exc).startswith("f: ")
    else:
        assert inp.consumed == len(data)


# Names ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "stripped"), [
    ("a.log.gz", "a.log"), ("x.GZ", "x"), ("a.tar.gz", "a.tar"), ("b.bz2", "b"), ("c.Xz", "c"), ("d.zst", "d"),
    (".gz", ".gz"), ("..gz", "..gz"), ("gz", "gz"), ("a.gz.gz", "a.gz"), ("a.tgz", "a.tgz"), ("a.zstd", "a.zstd"),
    ("caf\udce9.log.gz", "caf\udce9.log"), ("\udcff.xz", "\udcff"), ("a.g\udce9", "a.g\udce9"), ("", ""),
])
def test_strip_suffix(name: str, stripped: str) -> None:
    assert strip_suffix(name) == stripped


def test_the_suffixes() -> None:
    assert COMPRESSED_SUFFIXES == (".gz", ".bz2", ".xz", ".zst")
