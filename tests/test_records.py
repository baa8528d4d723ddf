"""The CSV record built-ins (csv_route, csv_validate, csv_select) and the record
format they build on, at unit level: processors instantiated directly, records(fmt,
columns) called as the engine calls it, then process_batch and process."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from workers.processors import BUILTINS
from workers.processors.base import OptionError
from workers.processors.records import CsvRoute, CsvSelect, CsvValidate
from workers.records import RecordError, RecordFormat

COMMA = RecordFormat(header=True)
SEMI = RecordFormat(delimiter=";", quotechar="'", header=True)
HEADER = ["id", "date", "amount", "status", "note"]


def texts(fmt: RecordFormat, *rows: list[str]) -> list[str]:
    return [fmt.join(row) for row in rows]


def ready(node: Any, fmt: RecordFormat = COMMA, columns: list[str] | None = HEADER) -> Any:
    node.records(fmt, columns)
    return node


def expand(routes: Any, lines: list[str]) -> list[list[tuple[str, str]]]:
    """Each input's pairs according to a process_batch() result, checking its shape."""
    out: list[list[tuple[str, str]]] = [[] for _ in lines]
    tags = [tag for tag, _, _ in routes]
    assert len(tags) == len(set(tags)), "one entry per tag"
    for tag, positions, new in routes:
        assert isinstance(tag, str) and tag
        positions = list(range(len(lines))) if positions is None else positions
        assert positions == sorted(set(positions)) and all(0 <= i < len(lines) for i in positions)
        assert new is None or len(new) == len(positions)
        for k, i in enumerate(positions):
            assert not out[i], f"input {i} appears in two entries"
            out[i].append((tag, lines[i] if new is None else new[k]))
    return out


def by_batch(node: Any, lines: list[str]) -> list[list[tuple[str, str]]]:
    return expand(node.process_batch(lines), lines)


def by_process(node: Any, lines: list[str]) -> list[list[tuple[str, str]]]:
    return [list(node.process([line])) for line in lines]


def both(make: Any, lines: list[str], fmt: RecordFormat = COMMA, columns: list[str] | None = HEADER) -> list:
    """The pairs per input, after checking that process_batch and process agree."""
    got = by_batch(ready(make(), fmt, columns), lines)
    assert got == by_process(ready(make(), fmt, columns), lines)
    return got


# --- Registration and config-time facts -----------------------------------------------


def test_the_three_are_builtins_that_only_work_on_records() -> None:
    for cls in (CsvRoute, CsvValidate, CsvSelect):
        assert BUILTINS[cls.name] is cls
        assert cls.records_only is True
        assert cls.__doc__


def test_column_names_lists_only_the_columns_given_by_name() -> None:
    assert CsvRoute(column="status", routes={"x": "y"}).column_names() == ["status"]
    assert CsvRoute(column=3, routes={"x": "y"}).column_names() == []
    validate = CsvValidate(columns={"amount": {"type": "int"}, "0": {}, "date": {}}, invalid="bad")
    assert validate.column_names() == ["amount", "date"]
    select = CsvSelect(columns=["id", 2, "id", "note"], rename={"note": "comment"})
    assert select.column_names() == ["id", "note"]


def test_emits_names_the_option_of_each_tag() -> None:
    route = CsvRoute(column="status", routes={"paid": "done", "void": "gone", "refund": "done"}, default="other")
    assert route.emits() == {"done": "routes.paid", "gone": "routes.void", "other": "default"}
    assert CsvRoute(column=0, routes={"a": "x"}, default="").emits() == {"x": "routes.a"}
    assert CsvValidate(columns={"id": {}}, invalid="bad").emits() == {"end": "next", "bad": "invalid"}
    assert CsvValidate(columns={"id": {}}, invalid="", next="n").emits() == {"n": "next"}
    assert CsvSelect(columns=["id"], next="n").emits() == {"n": "next"}


def test_nothing_runs_before_records_is_called() -> None:
    node = CsvSelect(columns=[0])
    with pytest.raises(RuntimeError, match="records"):
        node.process_batch(["a"])
    with pytest.raises(RuntimeError, match="records"):
        list(node.process(["a"]))


# --- Quoted fields survive ----------------------------------------------------------


@pytest.mark.parametrize("fmt", [COMMA, SEMI], ids=["comma", "semicolon"])
def test_quoted_newlines_delimiters_and_quotes_survive_all_three(fmt: RecordFormat) -> None:
    tricky = f'two\nlines{fmt.delimiter} a {fmt.quotechar}quote{fmt.quotechar} and\r\nmore'
    rows = [["1", "2024-01-31", "10", "paid", tricky], ["2", "2024-02-01", "x", "paid", tricky]]
    lines = texts(fmt, *rows)
    assert "\n" in lines[0] and fmt.quotechar * 2 in lines[0]

    routed = both(lambda: CsvRoute(column="note", routes={tricky: "tricky"}), lines, fmt)
    assert routed == [[("tricky", lines[0])], [("tricky", lines[1])]]

    validated = both(lambda: CsvValidate(columns={"amount": {"type": "int"}}, invalid="bad"), lines, fmt)
    assert validated[0] == [("end", lines[0])]
    assert fmt.parse([validated[1][0][1]]) == [[*rows[1], "amount: not an int: 'x'"]]

    selected = both(lambda: CsvSelect(columns=["note", "id", "note"]), lines, fmt)
    assert fmt.parse([text for [(_, text)] in selected]) == [[tricky, "1", tricky], [tricky, "2", tricky]]


# --- csv_route ----------------------------------------------------------------------

ROUTE_ROWS = [
    ["1", "2024-01-01", "5", "paid", ""],
    ["2", "2024-01-02", "6", "PAID", ""],
    ["3", "2024-01-03", "7", "void", ""],
    ["4", "2024-01-04", "8", "open", ""],
    ["5", "2024-01-05"],  # ragged: no status column
    [],  # an empty record
]


def route_pairs(fmt: RecordFormat = COMMA, columns: list[str] | None = HEADER, **options: Any) -> list:
    lines = texts(fmt, *ROUTE_ROWS)
    return [[tag for tag, _ in pairs] for pairs in both(lambda: CsvRoute(**options), lines, fmt, columns)]


def test_csv_route_by_name_sends_other_values_and_short_records_to_default() -> None:
    assert route_pairs(column="status", routes={"paid": "done", "void": "gone"}) == [
        ["done"], ["end"], ["gone"], ["end"], ["end"], ["end"]]


def test_csv_route_by_index_works_without_a_header() -> None:
    got = route_pairs(SEMI, None, column=3, routes={"paid": "done"}, default="other")
    assert got == [["done"], ["other"], ["other"], ["other"], ["other"], ["other"]]


def test_csv_route_ignore_case_and_a_dropping_default() -> None:
    got = route_pairs(column="status", routes={"Paid": "done"}, default="", ignore_case=True)
    assert got == [["done"], ["done"], [], [], [], []]


def test_csv_route_sends_records_unchanged_and_whole_batches_at_once() -> None:
    lines = texts(COMMA, *ROUTE_ROWS[:2])
    node = ready(CsvRoute(column=0, routes={"1": "a", "2": "a"}))
    assert node.process_batch(lines) == [("a", None, None)]
    assert node.process_batch([]) == []


def test_csv_route_routes_an_empty_value_by_an_empty_key() -> None:
    assert route_pairs(column="note", routes={"": "blank"}) == [["blank"]] * 4 + [["end"], ["end"]]


# --- csv_validate -------------------------------------------------------------------

RULES: dict[str, Any] = {
    "id": {"required": True, "type": "int"},
    "date": {"type": "date"},
    "amount": {"type": "float"},
    "status": {"values": ["paid", "void"]},
    "note": {"regex": "[a-z]*"},
}


def validate(rows: list[list[str]], fmt: RecordFormat = COMMA, header: list[str] | None = HEADER,
             **options: Any) -> list[list[tuple[str, str]]]:
    options = {"columns": RULES, "invalid": "bad", **options}
    return both(lambda: CsvValidate(**options), texts(fmt, *rows), fmt, header)


def reason(pairs: list[tuple[str, str]], fmt: RecordFormat = COMMA) -> str:
    [(tag, text)] = pairs
    assert tag == "bad"
    return fmt.parse([text])[0][-1]


def test_csv_validate_passes_valid_records_unchanged_without_rewriting_them() -> None:
    rows = [["1", "2024-02-29", "1.5", "paid", "ok"], ["-2", "", "", "", ""], ["+3", "2023-12-31", "1e3", "void", ""]]
    lines = texts(COMMA, *rows)
    node = ready(CsvValidate(columns=RULES, invalid="bad"))
    assert node.process_batch(lines) == [("end", None, None)]
    assert validate(rows) == [[("end", line)] for line in lines]


@pytest.mark.parametrize(("row", "want"), [
    (["x1", "2024-01-01", "1", "paid", ""], "id: not an int: 'x1'"),
    (["", "2024-01-01", "1", "paid", ""], "id: is empty but required"),
    (["1", "2024-13-01", "1", "paid", ""], "date: '2024-13-01' is not a date like %Y-%m-%d"),
    (["1", "2023-02-29", "1", "paid", ""], "date: '2023-02-29' is not a date like %Y-%m-%d"),
    (["1", "2024-01-01", "1,5", "paid", ""], "amount: not a float: '1,5'"),
    (["1", "2024-01-01", "nan", "paid", ""], "amount: not a float: 'nan'"),
    (["1", "2024-01-01", "1", "open", ""], "status: 'open' is not one of paid, void"),
    (["1", "2024-01-01", "1", "paid", "Caps"], "note: 'Caps' does not match [a-z]*"),
    (["1 ", "1/1/2024", "1.2.3", "Paid", "no!"], "id: not an int: '1 '; date: '1/1/2024' is not a date like "
     "%Y-%m-%d; amount: not a float: '1.2.3'; status: 'Paid' is not one of paid, void; note: 'no!' does not "
     "match [a-z]*"),
    (["١٢", "2024-01-01", "1", "paid", ""], "id: not an int: '١٢'"),  # digits, but not ASCII ones
    (["²", "2024-01-01", "1", "paid", ""], "id: not an int: '²'"),
    (["1", "2024-01-01", "١.٥", "paid", ""], "amount: not a float: '١.٥'"),
    (["1", "2024-01-01", "1"], "has 3 fields, the header has 5"),
    (["x", "y", "z", "w", "v", "u"], "has 6 fields, the header has 5"),
    ([], "has 0 fields, the header has 5"),
])
def test_csv_validate_reasons_name_each_column_in_one_extra_last_field(row: list[str], want: str) -> None:
    [pairs] = validate([row])
    assert reason(pairs) == want
    assert COMMA.parse([pairs[0][1]]) == [[*row, want]]


def test_csv_validate_mixes_valid_and_invalid_records_and_rejoins_only_the_invalid() -> None:
    rows = [["1", "2024-01-01", "1", "paid", ""], ["x", "2024-01-01", "1", "paid", ""],
            ["2", "2024-01-02", "2", "void", ""], ["3", "2024-01-0", "2", "void", ""]]
    lines = texts(SEMI, *rows)
    node = ready(CsvValidate(columns=RULES, invalid="bad", next="good"), SEMI)
    good, bad = node.process_batch(lines)
    assert good == ("good", [0, 2], None)
    assert bad[:2] == ("bad", [1, 3])
    assert SEMI.parse(bad[2]) == [[*rows[1], "id: not an int: 'x'"],
                                  [*rows[3], "date: '2024-01-0' is not a date like %Y-%m-%d"]]


def test_csv_validate_finds_invalid_records_anywhere_in_a_large_batch() -> None:
    # process_batch parses and checks large batches in slices: positions must add up.
    rows = [[str(i), f"2024-01-{i % 28 + 1:02d}", "1", "paid", ""] for i in range(3000)]
    for i in (0, 1023, 1024, 2047, 2999):
        rows[i][2] = "x"
    rows[1500] = ["short"]
    lines = texts(COMMA, *rows)
    node = ready(CsvValidate(columns=RULES, invalid="bad"))
    (_, good, _), (_, bad, new) = node.process_batch(lines)
    assert bad == [0, 1023, 1024, 1500, 2047, 2999]
    assert good == [i for i in range(3000) if i not in bad]
    assert [fields[-1] for fields in COMMA.parse(new)] == ["amount: not a float: 'x'"] * 3 + [
        "has 1 field, the header has 5"] + ["amount: not a float: 'x'"] * 2
    assert by_batch(node, lines) == by_process(ready(CsvValidate(columns=RULES, invalid="bad")), lines)


def test_csv_validate_date_format_and_regex_and_values_rules_by_index() -> None:
    rules = {"1": {"type": "date", "format": "%d/%m/%Y", "required": True}, "0": {"regex": "[A-Z]{2}-\\d+"},
             "3": {"values": ["a", ""]}}
    rows = [["AB-1", "31/01/2024", "", "a"], ["ab-1", "2024-01-31", "", "b"], ["AB-2", "", "", ""]]
    got = validate(rows, SEMI, None, columns=rules)
    assert got[0] == [("end", SEMI.join(rows[0]))]
    assert reason(got[1], SEMI) == ("column 1: '2024-01-31' is not a date like %d/%m/%Y; "
                                    "column 0: 'ab-1' does not match [A-Z]{2}-\\d+; column 3: 'b' is not one of a, ")
    assert reason(got[2], SEMI) == "column 1: is empty but required"


def test_csv_validate_without_header_needs_the_fields_of_the_highest_index_only() -> None:
    rules = {"2": {"type": "int"}}
    got = validate([["a", "b", "7"], ["a", "b", "7", "extra"], ["a", "b"]], COMMA, None, columns=rules)
    assert [tag for [(tag, _)] in got] == ["end", "end", "bad"]
    assert reason(got[2]) == "has 2 fields, column 2 needs at least 3"
    assert reason(validate([["a"]], COMMA, None, columns={"1": {}})[0]) == "has 1 field, column 1 needs at least 2"


def test_csv_validate_optional_empty_values_skip_the_rules_and_required_ones_fail() -> None:
    rules = {"id": {"regex": "x+", "values": ["xx"]}, "note": {"required": True, "regex": ".*"},
             "date": {"type": "date", "required": True}}
    got = validate([["", "2024-01-01", "", "", "n"], ["", "", "", "", ""]], columns=rules)
    assert got[0][0][0] == "end"
    assert reason(got[1]) == "note: is empty but required; date: is empty but required"


def test_csv_validate_drops_invalid_records_when_invalid_is_empty() -> None:
    rows = [["1", "2024-01-01", "1", "paid", ""], ["x", "2024-01-01", "1", "paid", ""]]
    assert validate(rows, invalid="") == [[("end", COMMA.join(rows[0]))], []]
    node = ready(CsvValidate(columns=RULES, invalid=""))
    assert node.process_batch(texts(COMMA, *rows[1:])) == []


def test_csv_validate_records_adds_the_reason_column_on_the_invalid_tag_only() -> None:
    node = CsvValidate(columns={"id": {}}, invalid="bad", reason_column="why")
    assert node.records(COMMA, HEADER) == {"end": HEADER, "bad": [*HEADER, "why"]}
    assert CsvValidate(columns={"0": {}}, invalid="bad").records(COMMA, None) is None
    assert CsvValidate(columns={"id": {}}, invalid="").records(COMMA, HEADER) == HEADER
    with pytest.raises(RecordError, match="already has a column 'note'"):
        CsvValidate(columns={"id": {}}, invalid="bad", reason_column="note").records(COMMA, HEADER)


# --- csv_select ---------------------------------------------------------------------


def test_csv_select_reorders_duplicates_renames_and_pads_short_records() -> None:
    rows = [["1", "2024-01-01", "5", "paid", "n"], ["2", "2024-01-02"], []]
    make = lambda: CsvSelect(columns=["status", "id", 0, "status"], rename={"status": "state"})  # noqa: E731
    assert make().records(SEMI, HEADER) == ["state", "id", "id", "state"]
    got = both(make, texts(SEMI, *rows), SEMI)
    assert [SEMI.parse([text])[0] for [(tag, text)] in got] == [["paid", "1", "1", "paid"], ["", "2", "2", ""],
                                                                 ["", "", "", ""]]
    assert {tag for [(tag, _)] in got} == {"end"}


def test_csv_select_one_column_and_no_header() -> None:
    make = lambda: CsvSelect(columns=[1], next="n")  # noqa: E731
    assert make().records(COMMA, None) is None
    got = both(make, texts(COMMA, ["a", "b,c"], ["a", ""], ["a"]), COMMA, None)
    assert got == [[("n", '"b,c"')], [("n", '""')], [("n", '""')]]
    assert ready(make(), COMMA, None).process_batch([]) == []


# --- Header errors: RecordError at records() ----------------------------------------


@pytest.mark.parametrize("node", [
    CsvRoute(column="amount", routes={"a": "b"}),
    CsvValidate(columns={"amount": {}}, invalid="bad"),
    CsvSelect(columns=["id", "amount"]),
], ids=["route", "validate", "select"])
def test_a_header_without_a_configured_column_is_a_record_error(node: Any) -> None:
    with pytest.raises(RecordError) as info:
        node.records(COMMA, ["id", "date", "status"])
    assert str(info.value) == "header has no column 'amount' (its columns: id, date, status)"
    with pytest.raises(RecordError, match=r"no header \(header = false\).*0-based index"):
        node.records(COMMA, None)


def test_an_index_beyond_the_header_and_an_ambiguous_name_are_record_errors() -> None:
    with pytest.raises(RecordError, match=r"header has no column 3 .*it has 3 .*id, date, status"):
        CsvSelect(columns=[3]).records(COMMA, ["id", "date", "status"])
    with pytest.raises(RecordError, match="header has no column 9"):
        CsvValidate(columns={"9": {}}, invalid="bad").records(COMMA, HEADER)
    with pytest.raises(RecordError, match="2 columns named 'id'"):
        CsvRoute(column="id", routes={"a": "b"}).records(COMMA, ["id", "x", "id"])
    assert CsvRoute(column=2, routes={"a": "b"}).records(COMMA, ["id", "x", "id"]) == ["id", "x", "id"]


# --- Bad options: OptionError names the precise key ---------------------------------

BAD_OPTIONS: list[tuple[type, dict[str, Any], str]] = [
    (CsvRoute, {"column": None, "routes": {"a": "b"}}, "column"),
    (CsvRoute, {"column": -1, "routes": {"a": "b"}}, "column"),
    (CsvRoute, {"column": True, "routes": {"a": "b"}}, "column"),
    (CsvRoute, {"column": "", "routes": {"a": "b"}}, "column"),
    (CsvRoute, {"column": 1.5, "routes": {"a": "b"}}, "column"),
    (CsvRoute, {"column": "s", "routes": {}}, "routes"),
    (CsvRoute, {"column": "s", "routes": ["a"]}, "routes"),
    (CsvRoute, {"column": "s", "routes": {"a": ""}}, "routes.a"),
    (CsvRoute, {"column": "s", "routes": {"a b": 1}}, 'routes."a b"'),
    (CsvRoute, {"column": "s", "routes": {"A": "x", "a": "y"}, "ignore_case": True}, "routes.a"),
    (CsvRoute, {"column": "s", "routes": {"a": "b"}, "default": 1}, "default"),
    (CsvRoute, {"column": "s", "routes": {"a": "b"}, "ignore_case": "yes"}, "ignore_case"),
    (CsvValidate, {"columns": {}, "invalid": "bad"}, "columns"),
    (CsvValidate, {"columns": [], "invalid": "bad"}, "columns"),
    (CsvValidate, {"columns": {"amount": "int"}, "invalid": "bad"}, "columns.amount"),
    (CsvValidate, {"columns": {"amount": {"type": "integer"}}, "invalid": "bad"}, "columns.amount.type"),
    (CsvValidate, {"columns": {"amount": {"typ": "int"}}, "invalid": "bad"}, "columns.amount.typ"),
    (CsvValidate, {"columns": {"amount": {"required": 1}}, "invalid": "bad"}, "columns.amount.required"),
    (CsvValidate, {"columns": {"amount": {"format": "%Y"}}, "invalid": "bad"}, "columns.amount.format"),
    (CsvValidate, {"columns": {"d": {"type": "date", "format": "%Q"}}, "invalid": "bad"}, "columns.d.format"),
    (CsvValidate, {"columns": {"d": {"type": "date", "format": "%"}}, "invalid": "bad"}, "columns.d.format"),
    (CsvValidate, {"columns": {"d": {"type": "date", "format": ""}}, "invalid": "bad"}, "columns.d.format"),
    (CsvValidate, {"columns": {"a b": {"regex": "("}}, "invalid": "bad"}, 'columns."a b".regex'),
    (CsvValidate, {"columns": {"3": {"regex": 3}}, "invalid": "bad"}, "columns.3.regex"),
    (CsvValidate, {"columns": {"s": {"values": "paid"}}, "invalid": "bad"}, "columns.s.values"),
    (CsvValidate, {"columns": {"s": {"values": []}}, "invalid": "bad"}, "columns.s.values"),
    (CsvValidate, {"columns": {"s": {"values": ["a", 1]}}, "invalid": "bad"}, "columns.s.values"),
    (CsvValidate, {"columns": {"": {}}, "invalid": "bad"}, 'columns.""'),
    (CsvValidate, {"columns": {"s": {}}, "invalid": 1}, "invalid"),
    (CsvValidate, {"columns": {"s": {}}, "invalid": "end"}, "invalid"),
    (CsvValidate, {"columns": {"s": {}}, "invalid": "bad", "next": ""}, "next"),
    (CsvValidate, {"columns": {"s": {}}, "invalid": "bad", "reason_column": ""}, "reason_column"),
    (CsvValidate, {"columns": {"s": {}}, "invalid": "bad", "reason_column": 1}, "reason_column"),
    (CsvSelect, {"columns": []}, "columns"),
    (CsvSelect, {"columns": "id"}, "columns"),
    (CsvSelect, {"columns": ["id", -1]}, "columns"),
    (CsvSelect, {"columns": ["id"], "rename": ["id"]}, "rename"),
    (CsvSelect, {"columns": ["id", 1], "rename": {"date": "day"}}, "rename.date"),
    (CsvSelect, {"columns": ["id", 1], "rename": {"1": "day"}}, "rename.1"),
    (CsvSelect, {"columns": ["id"], "rename": {"id": ""}}, "rename.id"),
    (CsvSelect, {"columns": ["id"], "next": ""}, "next"),
]


@pytest.mark.parametrize(("cls", "options", "key"), BAD_OPTIONS)
def test_a_bad_option_is_an_option_error_naming_its_key(cls: type, options: dict[str, Any], key: str) -> None:
    with pytest.raises(OptionError) as info:
        cls(**options)
    assert info.value.key == key


# --- Properties ---------------------------------------------------------------------

PIECES = ["a", "b", "A", " ", ",", ";", '"', "'", "\n", "\r\n", "1", "-", "2024-01-0", "é"]
FIELD = st.lists(st.sampled_from(PIECES), max_size=4).map("".join)
ROWS = st.lists(st.lists(FIELD, max_size=5), max_size=12)
FORMATS = st.sampled_from([COMMA, SEMI])
NAMES = ["c0", "c1", "c2", "c3"]
COLUMN = st.one_of(st.sampled_from(NAMES), st.integers(0, 3))
prop = settings(max_examples=200, deadline=None)


@prop
@given(FORMATS, ROWS)
def test_parse_gives_back_the_rows_join_all_wrote(fmt: RecordFormat, rows: list[list[str]]) -> None:
    joined = fmt.join_all(rows)
    assert joined == [fmt.join(row) for row in rows]
    assert fmt.parse(joined) == rows


def test_a_lone_carriage_return_survives_join_and_parse() -> None:
    assert COMMA.parse(COMMA.join_all([["a\rb"], ["\r"]])) == [["a\rb"], ["\r"]]


@st.composite
def route_case(draw: Any) -> tuple:
    values = st.sampled_from(["a", "A", "b", "", "1", " a"])
    routes = draw(st.dictionaries(values, st.sampled_from(["x", "y"]), min_size=1, max_size=3))
    options = {"column": draw(COLUMN), "routes": routes, "default": draw(st.sampled_from(["end", "", "x"])),
               "ignore_case": draw(st.booleans())}
    return options, draw(st.lists(st.lists(st.sampled_from(["a", "A", "b", "", "1", " a", "a,b\n"]), max_size=5),
                                  max_size=12))


@st.composite
def validate_case(draw: Any) -> tuple:
    rules = st.fixed_dictionaries({}, optional={
        "required": st.booleans(),
        "type": st.sampled_from(["int", "float", "date", "str"]),
        "format": st.sampled_from(["%Y-%m-%d", "%d/%m/%Y", "%Y"]),
        "regex": st.sampled_from(["a*", "[0-9]+", ".*", "(?i)A"]),
        "values": st.lists(st.sampled_from(["a", "1", "", "2024-01-01"]), min_size=1, max_size=3),
    })
    keys = st.one_of(st.sampled_from(NAMES), st.sampled_from(["0", "1", "2", "3"]))
    columns = draw(st.dictionaries(keys, rules, min_size=1, max_size=4))
    for spec in columns.values():
        if spec.get("type") != "date":
            spec.pop("format", None)
    options = {"columns": columns, "invalid": draw(st.sampled_from(["bad", ""])), "next": "good"}
    field = st.sampled_from(["", "a", "A", "1", "-2", "1.5", "x1", "2024-01-01", "2024-13-01", "a,b\n", "'\"", "aa"])
    # Mostly records as wide as the header, so that the column rules get to run.
    record = st.one_of(st.lists(field, min_size=4, max_size=4), st.lists(field, max_size=6))
    return options, draw(st.lists(record, max_size=12))


@st.composite
def select_case(draw: Any) -> tuple:
    columns = draw(st.lists(COLUMN, min_size=1, max_size=5))
    names = [c for c in columns if isinstance(c, str)]
    rename = {old: old.upper() for old in names if draw(st.booleans())}
    return {"columns": columns, "rename": rename}, draw(ROWS)


@pytest.mark.parametrize(("cls", "cases"), [(CsvRoute, route_case()), (CsvValidate, validate_case()),
                                            (CsvSelect, select_case())], ids=["route", "validate", "select"])
@prop
@given(data=st.data())
def test_process_batch_agrees_with_process(cls: type, cases: Any, data: Any) -> None:
    options, rows = data.draw(cases)
    fmt = data.draw(FORMATS)
    columns = data.draw(st.sampled_from([None, NAMES]))
    make = lambda: cls(**options)  # noqa: E731
    try:
        make().records(fmt, columns)
    except OptionError:
        assume(False)  # e.g. routes "a" and "A" to different tags with ignore_case
    except RecordError:
        assume(False)  # a name without a header: tested above
    lines = [fmt.join(row) for row in rows]
    # A text processor upstream may have broken a record's quoting.
    lines += data.draw(st.lists(st.sampled_from(['"a,b', "'a;b", 'x,"y']), max_size=2))
    node = ready(make(), fmt, columns)
    got = by_batch(node, lines)
    assert got == by_process(ready(make(), fmt, columns), lines)
    # The same instance keeps agreeing on a second batch (state such as known dates).
    assert by_batch(node, lines) == got
