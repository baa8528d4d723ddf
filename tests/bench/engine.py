"""Engine throughput against a bare Python loop (a benchmark, not a test).

    .venv/bin/python tests/bench/engine.py [--lines 1000000] [--runs 5]

Prints lines/s for (1) a 3-way ``regex_route`` whose three tags are ``write`` sinks,
next to a bare loop that does the same regex routing and writing on the same file,
with the ratio engine/bare (target >= 0.8); (2) the shipped ``config.toml`` pipeline.
Runs alternate between the contenders and the medians are reported, since the machine
is shared and noisy; times are CPU seconds of the process (both contenders are
single-threaded, and CPU time is less disturbed by other load than wall time).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--verbose", action="store_true", help="print every run")
    args = parser.parse_args()
    route3 = compile_graph(parse_config(tomllib.loads(ROUTE3), ROOT / "x.toml").pipeline)
    shipped_config = load_config(ROOT / "config.toml")
    shipped = compile_graph(shipped_config.pipeline, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "input.log"
        make_input(src, args.lines)
        out = tmp_path / "out"
        out.mkdir()
        bare, eng, ship = [], [], []
        for _ in range(args.runs):
            bare.append(args.lines / timed(bare_loop, src, out))
            eng.append(args.lines / timed(engine_run, route3, src, out))
            ship.append(args.lines / timed(engine_run, shipped, src, out))
    b, e, s = (statistics.median(x) for x in (bare, eng, ship))
    if args.verbose:
        print("runs (lines/s): bare", [round(x) for x in bare], "engine", [round(x) for x in eng])
    print(f"lines: {args.lines:,}, runs: {args.runs} (medians)")
    print(f"3-way regex_route -> write sinks  engine {e:12,.0f} lines/s")
    print(f"same routing, bare Python loop           {b:12,.0f} lines/s")
    print(f"ratio engine/bare                        {e / b:12.2f}   (target >= 0.8)")
    print(f"shipped config.toml pipeline      engine {s:12,.0f} lines/s")


if __name__ == "__main__":
    main()
