"""Names (workers/names.py) and the move that never replaces (workers/fs.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers import fs
from workers.names import (
    NAME_MAX,
    collision_name,
    fit,
    name_bytes,
    output_name,
    reason_files,
    reason_name,
    shown,
    unshown,
)

raw_names = st.binary(min_size=1, max_size=NAME_MAX).filter(lambda b: b"/" not in b and b"\x00" not in b)


@given(raw_names)
def test_shown_is_printable_utf8_and_maps_back_to_exactly_that_name(raw: bytes) -> None:
    name = os.fsdecode(raw)
    text = shown(name)
    assert text.isprintable()
    text.encode("utf-8")  # never a surrogate
    assert unshown(text) == name and os.fsencode(unshown(text)) == raw


@given(raw_names, st.integers(min_value=1, max_value=10**6), st.sampled_from(["", "errors", "x" * 40]))
def test_every_derived_name_fits_and_is_deterministic(raw: bytes, n: int, suffix: str) -> None:
    name = os.fsdecode(raw)
    for derived in (collision_name(name, n), output_name(name, suffix), reason_name(name)):
        assert 0 < name_bytes(derived) <= NAME_MAX and "/" not in derived
    assert output_name(name, suffix) == output_name(name, suffix)
    assert f"-{n}" in collision_name(name, n) and collision_name(name, n) != name


def test_shortened_names_keep_the_extension_and_differ_for_different_names() -> None:
    a, b = "é" * 125 + "a.log", "é" * 125 + "b.log"
    assert fit(a + ".errors").endswith(".errors") and fit(a + ".errors") != fit(b + ".errors")
    assert fit("short.log") == "short.log"
    assert reason_files([a, reason_name(a), "other.log"]) == {reason_name(a)}


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
@pytest.mark.parametrize("how", ["renameat2", "link-unlink"])
def test_move_never_replaces_an_existing_name(tmp_path: Path, kind: str, how: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    if kind == "file":
        src.write_text("new")
    elif kind == "symlink":
        src.symlink_to("/nowhere")
    else:
        src.mkdir()
    dst.write_text("existing delivery")
    move = fs.move if how == "renameat2" else lambda a, b: fs._link_then_unlink(os.fsencode(a), os.fsencode(b))
    with pytest.raises(FileExistsError):
        move(src, dst)
    assert dst.read_text() == "existing delivery" and os.path.lexists(src)
    dst.unlink()
    move(src, dst)
    assert os.path.lexists(dst) and not os.path.lexists(src)


@pytest.mark.parametrize("name", ["a." + "b" * 253, "x" * 10 + "." + "b" * 244, "h.log" + "x" * 230 + "~af662c079100"])
def test_collision_names_of_names_with_long_extensions_fit(name: str) -> None:
    for n in (1, 12, 10**6):
        assert name_bytes(collision_name(name, n)) <= NAME_MAX


def test_an_escape_past_the_last_character_stays_text() -> None:
    """``\\UFFFFFFFF`` is no character: typed into a URL or the CLI it is a name of its own."""
    assert unshown("a\\UFFFFFFFF.log") == "a\\UFFFFFFFF.log"
    assert unshown("\\U00110000") == "\\U00110000"
    assert unshown("\\U0010ffff") == "\U0010ffff"
