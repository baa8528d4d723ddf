"""Engine throughput against a bare Python loop (a benchmark, not a test).

    .venv/bin/python tests/bench/engine.py [--lines 1000000] [--runs 5]

Prints lines/s, each engine case next to a hand-written loop that does the same work on
the same file and writes the same bytes (checked once before timing), with the ratio:

1. a 3-way ``regex_route`` whose three tags are ``write`` sinks (built-in fast paths);
2. the shipped ``config.toml`` pipeline (engine only);
3. ``user generator``: one plain user generator (a regex per line, one pair per line,
   ``start`` -> ``end``), against a loop doing the same regex and write (target >= 0.9);
4. ``user graph``: small user generators with fan-out (a node emitting two copies),
   fan-in (four nodes into ``end``), a cycle (a node sending a line back to itself until
   it is short enough) and a ``finish()`` summary, against a loop doing the same
   transformations inline (target >= 0.5);
5. ``gzip``: case 3's pipeline on the input gzipped (level 6) against the same file
   plain, both through the engine: the decompression's cost, in the same run;
6. ``zstd``: the same with zstd (level 3);
7. ``csv_validate``: a CSV batch (a header, 6 columns, 1 record in 100 invalid, a few
   quoted fields with commas or newlines) through ``csv_validate`` (valid records to the
   output, invalid ones with their reasons to a side output), against a hand-written
   ``csv.reader`` loop doing the same checks and writing the same bytes.

Runs alternate between the contenders and the medians are reported, since the machine
is shared and noisy; times are CPU seconds of the process (both contenders are
single-threaded, and CPU time is less disturbed by other load than wall time).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import re
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import zstandard  # noqa: E402

from workers.config import load_config, parse_config  # noqa: E402
from workers.engine import run_file  # noqa: E402
from workers.graph import compile_graph  # noqa: E402
from workers.outputs import StagedOutputs  # noqa: E402

ROUTE3 = """
[pipeline.nodes.start]
processor = "regex_route"
routes = { error = "ERROR", warn = "WARN" }
default = "info"
[pipeline.nodes.error]
processor = "write"
output = "error"
[pipeline.nodes.warn]
processor = "write"
output = "warn"
[pipeline.nodes.info]
processor = "write"
output = "info"
"""


def make_input(path: Path, lines: int) -> None:
    rng = random.Random(42)
    levels = ["INFO"] * 7 + ["WARN"] * 2 + ["ERROR"]
    with open(path, "w") as f:
        for i in range(lines):
            level = rng.choice(levels)
            secret = f" password=hunter{i % 7}" if i % 50 == 0 else ""  # 2% of lines leak one
            f.write(f"2026-11-28T12:{i % 60:02d}:{i % 59:02d} {level} worker-{i % 8} request {i} "
                    f"took {rng.randint(1, 999)}ms user=u{i % 1000}{secret}\n")


# -- the user processors (named as tests.bench.engine:NAME in the graphs below) --------

LEVEL = re.compile(r" (ERROR|WARN|INFO) ")


def tag_level(lines):
    """Case 3: tag each line by its level, as a user would write it."""
    search = LEVEL.search
    for line in lines:
        m = search(line)
        yield "end", f"{m[1] if m else 'OTHER'}\t{line}"


def tag_level_loop(src: Path, out: Path) -> None:
    """Case 3 by hand: the same regex and the same output, one pass."""
    search = LEVEL.search
    with open(src, encoding="utf-8") as f, open(out / "x", "w", encoding="utf-8") as w:
        write = w.write
        for line in f:
            m = search(line)
            write(f"{m[1] if m else 'OTHER'}\t{line}")


SHORT = 60  # the cycle drops a line's last word until it is at most this long


class Classify:
    """Case 4's start: route by level and count; finish() writes the counts."""

    emits = ("dup", "trim", "mask", "info")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.emits, 0)

    def process(self, lines):
        counts = self.counts
        for line in lines:
            if "ERROR" in line:
                tag = "dup"
            elif "WARN" in line:
                tag = "trim"
            elif "password=" in line:
                tag = "mask"
            else:
                tag = "info"
            counts[tag] += 1
            yield tag, line

    def finish(self):
        yield "end", "summary " + " ".join(f"{k}={v}" for k, v in self.counts.items())


def dup(lines):  # fan-out: two copies of each line
    for line in lines:
        yield "end", line
        yield "end", "+ " + line


def trim(lines):  # a cycle: back to itself until short enough
    for line in lines:
        if len(line) > SHORT:
            yield "trim", line.rpartition(" ")[0]
        else:
            yield "end", line


def info(lines):
    for line in lines:
        yield "end", line[20:]


def mask(lines):
    for line in lines:
        yield "end", line[: line.index("password=") + 9] + "***"


def graph_loop(src: Path, out: Path) -> None:
    """Case 4 by hand, the fastest way found: the same transformations inline, writing
    lines as they come (the read lines keep their newline where the text allows)."""
    counts = dict.fromkeys(Classify.emits, 0)
    with open(src, encoding="utf-8") as f, open(out / "x", "w", encoding="utf-8") as w:
        write = w.write
        for line in f:
            if "ERROR" in line:
                counts["dup"] += 1
                write(line)
                write("+ " + line)
            elif "WARN" in line:
                counts["trim"] += 1
                line = line[:-1]
                while len(line) > SHORT:
                    line = line.rpartition(" ")[0]
                write(line + "\n")
            elif "password=" in line:
                counts["mask"] += 1
                write(line[: line.index("password=") + 9] + "***\n")
            else:
                counts["info"] += 1
                write(line[20:])
        write("summary " + " ".join(f"{k}={v}" for k, v in counts.items()) + "\n")


USER_GENERATOR = """
[pipeline.nodes.start]
processor = "tests.bench.engine:tag_level"
"""

USER_GRAPH = """
[pipeline.nodes.start]
processor = "tests.bench.engine:Classify"
[pipeline.nodes.dup]
processor = "tests.bench.engine:dup"
[pipeline.nodes.trim]
processor = "tests.bench.engine:trim"
[pipeline.nodes.mask]
processor = "tests.bench.engine:mask"
[pipeline.nodes.info]
processor = "tests.bench.engine:info"
"""


def bare_loop(src: Path, out: Path) -> None:
    """What a user would write by hand: one pass, first matching regex, write."""
    error, warn = re.compile("ERROR").search, re.compile("WARN").search
    with (open(src, encoding="utf-8") as f, open(out / "x.error", "w") as e,
          open(out / "x.warn", "w") as w, open(out / "x.info", "w") as i):
        for line in f:
            if error(line):
                e.write(line)
            elif warn(line):
                w.write(line)
            else:
                i.write(line)


def engine_run(graph, src: Path, out: Path) -> None:
    staged = StagedOutputs(out, "x", "utf-8")
    with open(src, "rb") as f:
        run_file(graph, "x", f, staged.sink)
    staged.commit(durable=False)


def timed(fn, *args) -> float:
    """CPU seconds of this (single-threaded) process: steadier than wall time on a
    shared machine, and what both contenders spend."""
    started = time.process_time()
    fn(*args)
    return time.process_time() - started


def compile_toml(text: str):
    return compile_graph(parse_config(tomllib.loads(text), ROOT / "x.toml").pipelines["default"], str(ROOT))


def check_same(tmp: Path, src: Path, graph, loop, sides: tuple[str, ...] = ()) -> None:
    """Both contenders must write the same main output (and side outputs), byte for byte."""
    a, b = tmp / f"check-{loop.__name__}-engine", tmp / f"check-{loop.__name__}"
    a.mkdir()
    b.mkdir()
    engine_run(graph, src, a)
    loop(src, b)
    for name in ("x", *(f"x.{s}" for s in sides)):
        if (a / name).read_bytes() != (b / name).read_bytes():
            raise SystemExit(f"{loop.__name__}: the engine and the loop wrote different bytes to {name}")


# -- case 7: csv_validate against a hand-written csv.reader loop -------------------------

CSV_VALIDATE = """
[pipeline]
format = "csv"
header = true
[pipeline.nodes.start]
processor = "csv_validate"
invalid = "bad"
columns.id = { required = true, type = "int" }
columns.date = { required = true, type = "date", format = "%Y-%m-%d" }
columns.amount = { required = true, type = "float" }
columns.currency = { values = ["EUR", "USD", "GBP"] }
columns.status = { required = true, values = ["paid", "open", "void"] }
columns.ref = { regex = '[A-Z]{3}-[0-9]+' }
[pipeline.nodes.bad]
processor = "write"
output = "invalid"
"""
CSV_HEADER = ["id", "date", "amount", "currency", "status", "ref"]


def make_csv(path: Path, records: int) -> None:
    rng = random.Random(7)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_HEADER)
        for i in range(records):
            row = [str(i), f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", f"{rng.random() * 1000:.2f}",
                   rng.choice(["EUR", "USD", "GBP"]), rng.choice(["paid", "open", "void"]),
                   f"ABC-{rng.randint(1, 99999)}"]
            if i % 100 == 7:  # 1 % invalid, one rule or another
                row[rng.randint(0, 5)] = rng.choice(["x1", "2026-13-01", "", "JPY", "pending", "abc"])
            if i % 50 == 3:
                row[5] = f"ABC-{i}, see\nnote"  # a quoted field with a comma and a newline (invalid ref)
            w.writerow(row)


INT = re.compile(r"[+-]?[0-9]+").fullmatch
FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?").fullmatch
REF = re.compile(r"[A-Z]{3}-[0-9]+").fullmatch


def csv_loop(src: Path, out: Path) -> None:
    """Case 7 by hand, as a careful user writes it: csv.reader, the checks inline (a memo
    of valid dates, as strptime is slow), csv.writer for both outputs."""
    from datetime import datetime

    dates: dict[str, bool] = {}
    currencies, statuses = {"EUR", "USD", "GBP"}, {"paid", "open", "void"}
    with (open(src, newline="", encoding="utf-8") as f, open(out / "x", "w", newline="") as good,
          open(out / "x.invalid", "w", newline="") as bad):
        rows = csv.reader(f, strict=True)
        ok = csv.writer(good, lineterminator="\n")
        ko = csv.writer(bad, lineterminator="\n")
        header = next(rows)
        ok.writerow(header)
        ko.writerow([*header, "errors"])
        width = len(header)
        for row in rows:
            if len(row) != width:
                ko.writerow([*row, f"has {len(row)} fields, the header has {width}"])
                continue
            id_, date, amount, currency, status, ref = row
            why = []
            if not id_:
                why.append("id: is empty but required")
            elif not INT(id_):
                why.append(f"id: not an int: {id_!r}")
            if not date:
                why.append("date: is empty but required")
            else:
                valid = dates.get(date)
                if valid is None:
                    try:
                        datetime.strptime(date, "%Y-%m-%d")
                        valid = True
                    except ValueError:
                        valid = False
                    dates[date] = valid
                if not valid:
                    why.append(f"date: {date!r} is not a date like %Y-%m-%d")
            if not amount:
                why.append("amount: is empty but required")
            elif not FLOAT(amount):
                why.append(f"amount: not a float: {amount!r}")
            if currency and currency not in currencies:
                why.append(f"currency: {currency!r} is not one of EUR, USD, GBP")
            if not status:
                why.append("status: is empty but required")
            elif status not in statuses:
                why.append(f"status: {status!r} is not one of paid, open, void")
            if ref and not REF(ref):
                why.append(f"ref: {ref!r} does not match [A-Z]{{3}}-[0-9]+")
            if why:
                ko.writerow([*row, "; ".join(why)])
            else:
                ok.writerow(row)


CASES = ["route3", "shipped", "generator", "graph", "gzip", "zstd", "csv_validate"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", choices=CASES, action="append", help="run only these cases")
    parser.add_argument("--verbose", action="store_true", help="print every run")
    args = parser.parse_args()
    cases = args.only or CASES
    route3 = compile_toml(ROUTE3)
    shipped = compile_graph(load_config(ROOT / "config.toml").pipelines["logs"], str(ROOT))
    generator, graph = compile_toml(USER_GENERATOR), compile_toml(USER_GRAPH)
    validate = compile_toml(CSV_VALIDATE)
    # (case, contender) -> what one run calls; alternated within each run.
    contenders = {
        ("route3", "engine"): (engine_run, route3), ("route3", "loop"): (bare_loop, None),
        ("shipped", "engine"): (engine_run, shipped),
        ("generator", "engine"): (engine_run, generator), ("generator", "loop"): (tag_level_loop, None),
        ("graph", "engine"): (engine_run, graph), ("graph", "loop"): (graph_loop, None),
        ("gzip", "engine"): (engine_run, generator), ("gzip", "loop"): (engine_run, generator),
        ("zstd", "engine"): (engine_run, generator), ("zstd", "loop"): (engine_run, generator),
        ("csv_validate", "engine"): (engine_run, validate), ("csv_validate", "loop"): (csv_loop, None),
    }
    contenders = {k: v for k, v in contenders.items() if k[0] in cases}
    speeds: dict[tuple[str, str], list[float]] = {k: [] for k in contenders}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "input.log"
        make_input(src, args.lines)
        # The same file compressed (cases 5, 6: "engine" reads it, "loop" the plain one).
        sources = {("gzip", "engine"): tmp_path / "input.log.gz", ("zstd", "engine"): tmp_path / "input.log.zst",
                   ("csv_validate", "engine"): tmp_path / "input.csv", ("csv_validate", "loop"): tmp_path / "input.csv"}
        sources[("gzip", "engine")].write_bytes(gzip.compress(src.read_bytes(), 6))
        sources[("zstd", "engine")].write_bytes(zstandard.ZstdCompressor(level=3).compress(src.read_bytes()))
        records = args.lines // 5
        make_csv(sources[("csv_validate", "loop")], records)
        out = tmp_path / "out"
        out.mkdir()
        if "generator" in cases:
            check_same(tmp_path, src, generator, tag_level_loop)
        if "graph" in cases:
            check_same(tmp_path, src, graph, graph_loop)
        if "csv_validate" in cases:
            check_same(tmp_path, sources[("csv_validate", "loop")], validate, csv_loop, sides=("invalid",))
        for _ in range(args.runs):
            for key, (fn, g) in contenders.items():
                path = sources.get(key, src)
                args_ = (g, path, out) if g is not None else (path, out)
                units = records if key[0] == "csv_validate" else args.lines
                speeds[key].append(units / timed(fn, *args_))
    report(args, speeds)


TITLES = {
    "route3": ("3-way regex_route -> write sinks", 0.8),
    "shipped": ("shipped config.toml pipeline", None),
    "generator": ("user generator, start -> end", 0.9),
    "graph": ("user graph: fan-out, fan-in, cycle, finish", 0.5),
    "gzip": ("case 3 on a gzip input vs plain", None),
    "zstd": ("case 3 on a zstd input vs plain", None),
    "csv_validate": ("csv_validate (records/s) vs csv.reader loop", None),
}


def report(args: argparse.Namespace, speeds: dict[tuple[str, str], list[float]]) -> None:
    print(f"lines: {args.lines:,}, runs: {args.runs} (medians, lines/s of CPU time)")
    for case, (title, target) in TITLES.items():
        if (case, "engine") not in speeds:
            continue
        e = statistics.median(speeds[case, "engine"])
        if args.verbose:
            for who in ("engine", "loop"):
                if (case, who) in speeds:
                    print(f"  {case} {who} runs:", [round(x) for x in speeds[case, who]])
        if (case, "loop") not in speeds:
            print(f"{title:44} engine {e:12,.0f}")
            continue
        b = statistics.median(speeds[case, "loop"])
        names = ("packed", "plain") if case in ("gzip", "zstd") else ("engine", "loop")
        goal = f"  (target >= {target})" if target else ""
        print(f"{title:44} {names[0]} {e:12,.0f}  {names[1]} {b:12,.0f}  ratio {e / b:5.2f}{goal}")


if __name__ == "__main__":
    main()
