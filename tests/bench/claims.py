"""The state database's part of a claim, per file (a benchmark, not a test): what
``Store.claim`` costs the supervisor for a batch of new files, with the daemon's name
rules over real, empty folders (each name checked on disk, as the daemon checks it).

    .venv/bin/python tests/bench/claims.py [--files 5000] [--batch 128] [--reps 5] [--dir /dev/shm]

CPU µs per file (the process's own time), the median of ``--reps`` fresh databases.
To compare two commits, run it from a worktree of each, alternating: the machine's
noise is larger than a few µs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workers.names import output_name, reason_name  # noqa: E402
from workers.queue import FOLDERS, Candidate, FolderQueue  # noqa: E402
from workers.store import Store  # noqa: E402


class Rules:
    """The daemon's name rules (``workers/daemon/ledger.py``), with no side outputs."""

    def __init__(self, queue: FolderQueue) -> None:
        self.queue = queue

    def taken(self, name: str) -> bool:
        return self.queue.taken(name, ())

    def derived(self, final: str) -> list[str]:
        return [f"processed/{final}", f"failed/{final}", f"failed/{reason_name(final)}",
                f"output/{output_name(final, '')}"]

    def left_failed(self, final: str) -> None:
        pass


def one_run(base: Path, files: int, batch: int) -> float:
    shutil.rmtree(base, ignore_errors=True)
    for folder in FOLDERS:
        (base / folder).mkdir(parents=True)
    queue = FolderQueue(base, ("*",), (), "")
    store = Store(base / "state.db")
    rules = Rules(queue)
    claims = [Candidate(f"small-{i:06d}.log", 1900, 1, 1000 + i, 0o100644) for i in range(files)]
    started = time.process_time()
    for i in range(0, files, batch):
        store.claim(claims[i:i + batch], "bench", rules)
    return (time.process_time() - started) / files * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-claims-") as tmp:
        runs = [one_run(Path(tmp) / "watch", args.files, args.batch) for _ in range(args.reps)]
    print(f"Store.claim: {statistics.median(runs):.0f} CPU µs per file (batches of {args.batch}, "
          f"{args.files:,} files, in {args.dir}; runs: {', '.join(f'{r:.0f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
