"""The built-in processors: behaviour, options, and the process/process_batch contract."""

from __future__ import annotations

import inspect
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.processors import BUILTINS
from workers.processors.base import NullContext, OptionError

# The smallest valid options of each built-in.
MINIMAL: dict[str, dict] = {
    "regex_route": {"routes": {"error": "ERROR"}},
    "json_route": {"field": "level", "routes": {"error": "error"}},
    "fanout": {"to": ["a", "b"]},
    "replace": {"pattern": "x"},
    "strip": {},
    "upper": {},
    "lower": {},
    "filter": {"keep": "a"},
    "dedupe": {},
    "sample": {"every": 2},
    "count": {},
    "write": {"output": "errors"},
}
# The CSV record built-ins need a record format first: tests/test_records.py.
RECORD_BUILTINS = {"csv_route", "csv_validate", "csv_select"}


def make(name: str, **options):
    """A built-in as the engine builds it: options checked by signature, then started."""
    cls = BUILTINS[name]
    inspect.signature(cls).bind(**options)
    node = cls(**options)
    node.start(NullContext())
    return node


def run(node, lines: list[str]) -> list[tuple[str, str]]:
    return list(node.process(lines))


def one_by_one(node, lines: list[str]) -> list[list[tuple[str, str]]]:
    """The reference: each line's pairs, feeding process() one line at a time."""
    return [list(node.process([line])) for line in lines]


def expand(routes, lines: list[str]) -> list[list[tuple[str, str]]]:
    """Each input line's pairs according to a process_batch() result, checking its shape."""
    out: list[list[tuple[str, str]]] = [[] for _ in lines]
    for tag, positions, new in routes:
        assert isinstance(tag, str) and tag
        if positions is None:
            positions = list(range(len(lines)))
        assert positions == sorted(set(positions)), "positions must be ascending, no repeats"
        assert all(0 <= i < len(lines) for i in positions)
        if new is not None:
            assert len(new) == len(positions)
        for k, i in enumerate(positions):
            assert not out[i], f"input {i} appears in two entries"
            out[i].append((tag, lines[i] if new is None else new[k]))
    return out


def side_text(node) -> str:
    return node.stream.getvalue()


# --- The contract every built-in follows -------------------------------------------


def test_builtins_are_named_by_their_name():
    assert sorted(BUILTINS) == sorted([*MINIMAL, *RECORD_BUILTINS])
    for name, cls in BUILTINS.items():
        assert cls.name == name
        assert cls.__doc__


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_options_are_keyword_only_and_checked_by_signature(name):
    cls = BUILTINS[name]
    params = inspect.signature(cls).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    with pytest.raises(TypeError):
        inspect.signature(cls).bind(**MINIMAL[name], no_such_option=1)
    for key in MINIMAL[name].keys() - {"keep"}:  # the others in MINIMAL are required
        options = {k: v for k, v in MINIMAL[name].items() if k != key}
        with pytest.raises(TypeError):
            inspect.signature(cls).bind(**options)


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_process_is_a_generator_yielding_while_the_line_is_current(name):
    class Tracking(list):
        current = -1

        def __iter__(self):
            for i, item in enumerate(list.__iter__(self)):
                self.current = i
                yield item

    assert inspect.isgeneratorfunction(BUILTINS[name].process)
    lines = Tracking(["a ERROR", '{"level": "error"}', "a ERROR", "xx", "b"])
    seen: list[list[tuple[str, str]]] = [[] for _ in lines]
    for pair in make(name, **MINIMAL[name]).process(lines):
        seen[lines.current].append(pair)
    assert seen == one_by_one(make(name, **MINIMAL[name]), list(lines))


def test_fast_path_presence():
    with_batch = {name for name, cls in BUILTINS.items() if getattr(cls, "process_batch", None)}
    assert with_batch - RECORD_BUILTINS == set(MINIMAL) - {"fanout"}
    assert make("regex_route", routes={"a": "a"}, all=True).process_batch is None
    assert make("regex_route", routes={"a": "a"}).process_batch is not None


# --- Bad options: OptionError names the option --------------------------------------

BAD_OPTIONS = [
    ("regex_route", {"routes": {}}, "routes"),
    ("regex_route", {"routes": ["a"]}, "routes"),
    ("regex_route", {"routes": {"": "a"}}, "routes"),
    ("regex_route", {"routes": {"a": 1}}, "routes.a"),
    ("regex_route", {"routes": {"ok": "a", "bad": "("}}, "routes.bad"),
    ("regex_route", {"routes": {"a b": "("}}, 'routes."a b"'),
    ("regex_route", {"routes": {"a": "a"}, "default": 1}, "default"),
    ("regex_route", {"routes": {"a": "a"}, "all": 1}, "all"),
    ("regex_route", {"routes": {"a": "a"}, "all": "true"}, "all"),
    ("regex_route", {"routes": {"a": "a"}, "ignore_case": "yes"}, "ignore_case"),
    ("json_route", {"field": "", "routes": {"a": "b"}}, "field"),
    ("json_route", {"field": "a..b", "routes": {"a": "b"}}, "field"),
    ("json_route", {"field": 1, "routes": {"a": "b"}}, "field"),
    ("json_route", {"field": "a", "routes": {}}, "routes"),
    ("json_route", {"field": "a", "routes": "b"}, "routes"),
    ("json_route", {"field": "a", "routes": {"404": ""}}, "routes.404"),
    ("json_route", {"field": "a", "routes": {"x": 1}}, "routes.x"),
    ("json_route", {"field": "a", "routes": {"x": "y"}, "default": 1}, "default"),
    ("json_route", {"field": "a", "routes": {"x": "y"}, "invalid": 1}, "invalid"),
    ("fanout", {"to": []}, "to"),
    ("fanout", {"to": "a"}, "to"),
    ("fanout", {"to": ["a", ""]}, "to"),
    ("fanout", {"to": ["a", 1]}, "to"),
    ("fanout", {"to": ["a", "a"]}, "to"),
    ("replace", {"pattern": "("}, "pattern"),
    ("replace", {"pattern": 1}, "pattern"),
    ("replace", {"pattern": "x", "replacement": r"\9"}, "replacement"),
    ("replace", {"pattern": "(x)", "replacement": r"\g<name>"}, "replacement"),
    ("replace", {"pattern": "x", "replacement": "\\"}, "replacement"),
    ("replace", {"pattern": "x", "replacement": 1}, "replacement"),
    ("replace", {"pattern": "x", "count": -1}, "count"),
    ("replace", {"pattern": "x", "count": True}, "count"),
    ("replace", {"pattern": "x", "count": "1"}, "count"),
    ("replace", {"pattern": "x", "ignore_case": 0}, "ignore_case"),
    ("replace", {"pattern": "x", "next": ""}, "next"),
    ("strip", {"chars": 1}, "chars"),
    ("strip", {"side": "middle"}, "side"),
    ("strip", {"side": ["left"]}, "side"),
    ("strip", {"next": 1}, "next"),
    ("upper", {"next": ""}, "next"),
    ("lower", {"next": None}, "next"),
    ("filter", {}, "keep"),
    ("filter", {"keep": "a", "drop": "b"}, "drop"),
    ("filter", {"keep": "("}, "keep"),
    ("filter", {"drop": "("}, "drop"),
    ("filter", {"keep": 1}, "keep"),
    ("filter", {"keep": "a", "ignore_case": 1}, "ignore_case"),
    ("filter", {"keep": "a", "next": ""}, "next"),
    ("dedupe", {"max_entries": 0}, "max_entries"),
    ("dedupe", {"max_entries": True}, "max_entries"),
    ("dedupe", {"max_entries": 1.5}, "max_entries"),
    ("dedupe", {"next": ""}, "next"),
    ("sample", {"every": 0}, "every"),
    ("sample", {"every": True}, "every"),
    ("sample", {"every": "2"}, "every"),
    ("sample", {"every": 2, "offset": -1}, "offset"),
    ("sample", {"every": 2, "offset": 2}, "offset"),
    ("sample", {"every": 2, "offset": False}, "offset"),
    ("sample", {"every": 2, "rest": 1}, "rest"),
    ("sample", {"every": 2, "next": ""}, "next"),
    ("count", {"patterns": {}}, "patterns"),
    ("count", {"patterns": "error"}, "patterns"),
    ("count", {"patterns": {"error": "("}}, "patterns.error"),
    ("count", {"patterns": {"error": 1}}, "patterns.error"),
    ("count", {"patterns": {"other": "x"}}, "patterns.other"),
    ("count", {"patterns": {"total": "x"}}, "patterns.total"),
    ("count", {"patterns": {"a b": "x"}}, 'patterns."a b"'),
    ("count", {"patterns": {"a=b": "x"}}, 'patterns."a=b"'),
    ("count", {"label": ""}, "label"),
    ("count", {"label": "a\nb"}, "label"),
    ("count", {"label": 1}, "label"),
    ("count", {"summary": ""}, "summary"),
    ("count", {"next": ""}, "next"),
    ("write", {"output": ""}, "output"),
    ("write", {"output": "../x"}, "output"),
    ("write", {"output": "a/b"}, "output"),
    ("write", {"output": ".hidden"}, "output"),
    ("write", {"output": "x.tmp"}, "output"),
    ("write", {"output": 1}, "output"),
    ("write", {"output": "x", "next": 1}, "next"),
]


@pytest.mark.parametrize(("name", "options", "key"), BAD_OPTIONS)
def test_bad_option_names_its_key(name, options, key):
    with pytest.raises(OptionError) as info:
        BUILTINS[name](**options)
    assert info.value.key == key
    assert info.value.message


# --- Behaviour of each built-in -----------------------------------------------------

LOG = ["a ERROR x", "b WARN y", "c info", "d error WARN"]


def test_regex_route_first_match_and_default():
    node = make("regex_route", routes={"errors": "ERROR", "warns": "WARN"})
    assert run(node, LOG) == [("errors", LOG[0]), ("warns", LOG[1]), ("end", LOG[2]), ("warns", LOG[3])]
    assert node.emits() == {"errors": "routes.errors", "warns": "routes.warns", "end": "default"}


def test_regex_route_options():
    node = make("regex_route", routes={"errors": "ERROR"}, default="", ignore_case=True)
    assert run(node, LOG) == [("errors", LOG[0]), ("errors", LOG[3])]
    assert node.emits() == {"errors": "routes.errors"}
    node = make("regex_route", routes={"errors": "ERROR", "warns": "WARN"}, all=True, default="rest")
    assert run(node, LOG) == [("errors", LOG[0]), ("warns", LOG[1]), ("rest", LOG[2]), ("warns", LOG[3])]
    node = make("regex_route", routes={"w": "WARN", "e": "(?i)error"}, all=True)
    assert run(node, [LOG[3], LOG[2]]) == [("w", LOG[3]), ("e", LOG[3]), ("end", LOG[2])]


def test_regex_route_batch_merges_default_into_a_route_of_the_same_tag():
    node = make("regex_route", routes={"end": "a", "x": "b"}, default="end")
    assert node.process_batch(["a", "b", "c"]) == [("end", [0, 2], None), ("x", [1], None)]
    assert node.process_batch(["a", "a"]) == [("end", None, None)]
    assert node.process_batch(["c", "c"]) == [("end", None, None)]
    assert node.process_batch([]) == []


JSON_LINES = [
    '{"level": "error", "http": {"status": 404}}',
    '{"level": "warn", "http": {"status": 500}}',
    '{"level": true}',
    '{"level": null}',
    '{"level": 1e3}',
    '{"level": {"x": 1}}',
    '{"other": 1}',
    "not json",
    '["error"]',
    '{"level": NaN}',
    '{"level": "error"',
]


def test_json_route_by_field_value():
    node = make(
        "json_route",
        field="level",
        routes={"error": "e", "true": "t", "null": "n", "1e3": "k"},
        default="d",
    )
    got = [tag for tag, _ in run(node, JSON_LINES)]
    assert got == ["e", "d", "t", "n", "k", "d", "d", "d", "d", "d", "d"]
    assert [line for _, line in run(node, JSON_LINES)] == JSON_LINES
    assert node.emits() == {
        "e": "routes.error",
        "t": "routes.true",
        "n": "routes.null",
        "k": "routes.1e3",
        "d": "default",
    }


def test_json_route_dotted_field_invalid_and_drop():
    node = make("json_route", field="http.status", routes={"404": "nf"}, default="", invalid="bad")
    assert run(node, JSON_LINES) == [("nf", JSON_LINES[0])] + [("bad", line) for line in JSON_LINES[7:]]
    assert node.emits() == {"nf": "routes.404", "bad": "invalid"}
    # A JSON string "404" and the number 404 have the same text.
    node = make("json_route", field="s", routes={"404": "nf"}, default="")
    assert run(node, ['{"s": "404"}', '{"s": 404}', '{"s": 404.0}']) == [("nf", '{"s": "404"}'), ("nf", '{"s": 404}')]


def test_fanout_copies_in_order():
    node = make("fanout", to=["b", "a"])
    assert run(node, ["x", "y"]) == [("b", "x"), ("a", "x"), ("b", "y"), ("a", "y")]
    assert node.emits() == {"b": "to", "a": "to"}


def test_replace():
    node = make("replace", pattern=r"(password=)\S+", replacement=r"\1***", next="n")
    assert run(node, ["user=a password=hunter2 x", "none"]) == [("n", "user=a password=*** x"), ("n", "none")]
    assert node.emits() == {"n": "next"}
    assert run(make("replace", pattern="a"), ["banana"]) == [("end", "bnn")]
    assert run(make("replace", pattern="a", replacement="o", count=2), ["banana"]) == [("end", "bonona")]
    assert run(make("replace", pattern="A", replacement="o", ignore_case=True), ["banana"]) == [("end", "bonono")]


def test_strip():
    assert run(make("strip"), ["  a b \t"]) == [("end", "a b")]
    assert run(make("strip", side="left"), ["  a  "]) == [("end", "a  ")]
    assert run(make("strip", side="right", next="n"), ["  a  "]) == [("n", "  a")]
    assert run(make("strip", chars="x-"), ["x-a-x"]) == [("end", "a")]


def test_upper_and_lower():
    assert run(make("upper"), ["aBé"]) == [("end", "ABÉ")]
    assert run(make("lower", next="n"), ["aBÉ"]) == [("n", "abé")]
    assert make("upper", next="n").emits() == {"n": "next"}


def test_filter():
    assert run(make("filter", keep="ERROR"), LOG) == [("end", LOG[0])]
    assert run(make("filter", drop="ERROR", next="n"), LOG) == [("n", line) for line in LOG[1:]]
    assert run(make("filter", keep="ERROR", ignore_case=True), LOG) == [("end", LOG[0]), ("end", LOG[3])]
    assert make("filter", drop="x", next="n").emits() == {"n": "next"}


def test_dedupe():
    node = make("dedupe", next="n")
    assert run(node, ["a", "b", "a", "c", "b"]) == [("n", "a"), ("n", "b"), ("n", "c")]
    assert run(node, ["c", "d"]) == [("n", "d")]  # state lasts for the whole file
    # "é" and the surrogate-escaped bytes of its UTF-8 encoding are different lines.
    assert len(run(make("dedupe"), ["é", "\udcc3\udca9", "\ud800"])) == 3


def test_dedupe_forgets_the_oldest_when_full():
    node = make("dedupe", max_entries=2)
    assert [line for _, line in run(node, ["a", "b", "c", "b", "a", "b"])] == ["a", "b", "c", "a", "b"]
    assert len(node.seen) == 2


def test_sample():
    node = make("sample", every=3, offset=1, rest="r")
    got = run(node, list("abcd")) + run(node, list("efg"))
    assert got == [("r", "a"), ("end", "b"), ("r", "c"), ("r", "d"), ("end", "e"), ("r", "f"), ("r", "g")]
    assert node.emits() == {"end": "next", "r": "rest"}
    assert run(make("sample", every=2, next="n"), list("abc")) == [("n", "a"), ("n", "c")]


def test_count():
    node = make("count", patterns={"error": "ERROR", "warn": "WARN"}, next="n", summary="s")
    assert run(node, LOG) == [("n", line) for line in LOG]
    assert list(node.finish()) == [("s", "count: error=1 warn=2 other=1 total=4")]
    assert node.emits() == {"n": "next", "s": "summary"}
    node = make("count", label="lines")
    run(node, LOG)
    assert list(node.finish()) == [("end", "lines: total=4")]
    assert list(make("count").finish()) == [("end", "count: total=0")]


def test_write_consumes_or_passes_on():
    node = make("write", output="errors.log")
    assert run(node, ["a", "b"]) == []
    assert side_text(node) == "a\nb\n"
    assert node.emits() == {}
    node = make("write", output="x", next="end")
    assert run(node, ["a"]) == [("end", "a")]
    assert node.emits() == {"end": "next"}


def test_write_batch_is_one_write():
    writes: list[str] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    node = BUILTINS["write"](output="x", next="n")
    node.start(NullContext(streams={"x": Stream()}))
    assert node.process_batch(["a", "b"]) == [("n", None, None)]
    assert node.process_batch([]) == []
    assert writes == ["a\nb\n"]
    with pytest.raises(RuntimeError):
        run(BUILTINS["write"](output="x"), ["a"])


# --- process_batch is exactly process, line by line ---------------------------------

BATCH_CONFIGS: dict[str, list[dict]] = {
    "regex_route": [
        {"routes": {"a": "a", "b": "b"}},
        {"routes": {"a": "^a", "b": "b$", "c": "[AB]"}, "default": ""},
        {"routes": {"end": "a", "b": "b"}, "ignore_case": True},
        {"routes": {"x": ""}},
    ],
    "json_route": [
        {"field": "level", "routes": {"error": "e", "true": "t", "404": "n"}},
        {"field": "http.status", "routes": {"404": "end"}, "default": "", "invalid": "bad"},
    ],
    "replace": [
        {"pattern": "a+", "replacement": "<\\g<0>>"},
        {"pattern": "(b)", "replacement": "\\1\\1", "count": 1, "ignore_case": True, "next": "n"},
    ],
    "strip": [{}, {"chars": "ab", "side": "left"}, {"side": "right", "next": "n"}],
    "upper": [{}],
    "lower": [{"next": "n"}],
    "filter": [{"keep": "a"}, {"drop": "a|b"}, {"keep": "B", "ignore_case": True}],
    "dedupe": [{}, {"max_entries": 1}, {"max_entries": 3}],
    "sample": [{"every": 1}, {"every": 3, "offset": 2}, {"every": 2, "rest": "r"}, {"every": 3, "rest": "end"}],
    "count": [{}, {"patterns": {"a": "a", "b": "b"}, "summary": "s"}, {"patterns": {"x": "A"}}],
    "write": [{"output": "out"}, {"output": "out", "next": "n"}],
}

JSON_VALUES = st.one_of(
    st.sampled_from(["error", "404"]), st.integers(403, 405), st.booleans(), st.none(), st.just({"status": 404})
)
LINES = st.lists(
    st.one_of(
        st.text("abAB \t{}", max_size=6),
        st.sampled_from(["a", "b", "ab", "é", "\udcc3\udca9", "NaN", '{"level":', "[1]"]),
        st.builds(json.dumps, st.dictionaries(st.sampled_from(["level", "http"]), JSON_VALUES, max_size=2)),
    ),
    max_size=12,
)


@pytest.mark.parametrize("name", sorted(BATCH_CONFIGS))
@settings(max_examples=60, deadline=None)
@given(data=st.data(), lines=LINES)
def test_process_batch_equals_process_line_by_line(name, data, lines):
    options = data.draw(st.sampled_from(BATCH_CONFIGS[name]), label="options")
    # Several batches in a row: state must carry over exactly as in process().
    cuts = sorted(data.draw(st.lists(st.integers(0, len(lines)), max_size=3), label="cuts"))
    batched, reference = make(name, **options), make(name, **options)
    got: list[list[tuple[str, str]]] = []
    for start, stop in zip([0, *cuts], [*cuts, len(lines)], strict=True):
        got += expand(batched.process_batch(lines[start:stop]), lines[start:stop])
    expected = one_by_one(reference, lines)
    assert got == expected
    assert {tag for pairs in expected for tag, _ in pairs} <= set(reference.emits())
    assert list(batched.finish()) == list(reference.finish())
    if name == "write":
        assert side_text(batched) == side_text(reference)
