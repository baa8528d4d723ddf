"""Many power-cut cycles against the real daemon, and a summary of what they found (the
long run of ``tests/test_powercut.py``; not part of ``make test``). Needs root.

    .venv/bin/python tests/bench/powercut.py [--cycles 40] [--aims claim+failing,moves,...]
        [--seed N] [--dir DIR] [--json FILE] [--verbose]

Each cycle (``tests/powercut_cycle.py``): a fresh ext4 on a loop device in /dev/shm,
the real supervisor (2 workers, ``durable = true``) and a producer on it, a power cut
aimed at one phase (or at a random time), the daemon restarted on what the disk held,
the invariants checked. Cycles take the aims in turn (default: every phase, then
random, with and without failing files, then on trees: ``+tree``, ``recursive = true``
with every burst delivered into new directories). Printed: one line per cycle as it
ends, then a table per aim (how often the cut landed in the phase aimed at, violations
by kind), the per-cycle timings, and the first violations of each kind with their
evidence.
A cycle takes about 3-5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.daemon import Daemon  # noqa: E402
from tests.powercut_cycle import TABLE_HEAD, Aim, CycleReport, run_cycle, table, table_row  # noqa: E402

DEFAULT_AIMS = ("claim", "claim+failing", "worker_sync/growing", "worker_sync/complete", "group_commit",
                "group_commit+failing", "group_commit/large", "moves", "moves+failing", "random", "random+failing",
                "random/quiet", "claim+failing+tree", "group_commit+tree", "group_commit/large+tree",
                "moves+failing+tree", "moves/reason+failing+tree", "random+failing+tree", "random/quiet+tree")


def parse_aim(text: str) -> Aim:
    """``phase[/variant][+failing][+tree]``, e.g. ``worker_sync/complete`` or
    ``moves+failing+tree`` (as ``str(Aim)`` writes it)."""
    tree = text.endswith("+tree")
    text = text.removesuffix("+tree")
    failing = text.endswith("+failing")
    phase, _, variant = text.removesuffix("+failing").partition("/")
    return Aim(phase, variant, failing, tree)


def summary(reports: list[CycleReport]) -> str:
    """Per aim: cycles, landed, cycles with violations, violations by kind."""
    lines = [f"{'aimed at':<26} {'cycles':>6} {'landed':>7} {'broken':>7}  violations by kind (cycles with it)"]
    for aim in dict.fromkeys(str(r.aim) for r in reports):
        mine = [r for r in reports if str(r.aim) == aim]
        kinds: dict[str, int] = {}
        for r in mine:
            for kind in {v.kind for v in r.violations}:
                kinds[kind] = kinds.get(kind, 0) + 1
        landed = "-" if aim.startswith("random") else str(sum(r.landed for r in mine))
        lines.append(f"{aim:<26} {len(mine):>6} {landed:>7} {sum(bool(r.violations) for r in mine):>7}  "
                     + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"))
    return "\n".join(lines)


def timings(reports: list[CycleReport]) -> str:
    keys = list(dict.fromkeys(k for r in reports for k in r.timings))
    lines = [f"{'step':<10} {'median':>8} {'max':>8}"]
    for key in keys:
        values = [r.timings[key] for r in reports if key in r.timings]
        lines.append(f"{key:<10} {statistics.median(values):>7.2f}s {max(values):>7.2f}s")
    stops = [r.cut.frozen.stopped_s * 1000 for r in reports if r.cut]
    if stops:
        lines.append(f"{'freeze':<10} {statistics.median(stops):>6.1f}ms {max(stops):>6.1f}ms  "
                     "(from the order to every thread stopped)")
    return "\n".join(lines)


def examples(reports: list[CycleReport], per_kind: int = 3) -> str:
    shown: dict[str, int] = {}
    lines = []
    for i, r in enumerate(reports, 1):
        for v in r.violations:
            if shown.get(v.kind, 0) < per_kind:
                shown[v.kind] = shown.get(v.kind, 0) + 1
                lines.append(f"cycle {i} ({r.aim}, landed in {sorted(r.landed_in) or 'no phase'}): {v}")
    return "\n".join(lines) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=len(DEFAULT_AIMS))
    parser.add_argument("--aims", default=",".join(DEFAULT_AIMS), help="comma-separated, taken in turn")
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(3), "big"))
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temporary one, removed after)")
    parser.add_argument("--json", type=Path, help="write every cycle's report here (JSON lines)")
    parser.add_argument("--verbose", action="store_true", help="print every cycle's full report")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (loop devices, mount)", file=sys.stderr)
        return 2
    aims = [parse_aim(a) for a in args.aims.split(",") if a]
    work = args.dir or Path(tempfile.mkdtemp(prefix="fm-powercut-"))
    daemons: list[Daemon] = []
    reports: list[CycleReport] = []
    print(f"seed {args.seed}, {args.cycles} cycles, work dir {work}\n{TABLE_HEAD}", flush=True)
    try:
        for i in range(args.cycles):
            aim = aims[i % len(aims)]
            report = run_cycle(work / f"cycle-{i:04d}", daemons, aim, args.seed + i)
            reports.append(report)
            print(report.describe() if args.verbose else table_row(i + 1, report), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"aim": str(aim), "seed": report.seed, "landed": report.landed,
                                        "landed_in": report.landed_in, "trigger": report.trigger,
                                        "unsynced": report.unsynced,
                                        "acked": len(report.acked), "timings": report.timings,
                                        "stopped_ms": report.cut.frozen.stopped_s * 1000 if report.cut else None,
                                        "notes": report.notes,
                                        "violations": [str(v) for v in report.violations]}) + "\n")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(reports) + "\n\n" + summary(reports) + "\n\n" + timings(reports) + "\n\nexamples:\n"
          + examples(reports))
    return 1 if any(r.violations for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
