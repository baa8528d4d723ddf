"""The dashboard under load while files are processed at full speed (a benchmark).

    TMPDIR=/dev/shm/fm .venv/bin/python tests/bench/web.py [--files 10000] [--lines 20] [--runs 3] [--rate 50]

For each run, a fresh watch dir with the small-file workload of tests/bench/throughput.py
is processed by ``supervisor.py --once --workers 2`` twice: once with nobody looking,
once while this process requests ``/stats`` and ``/metrics`` in turn at ``--rate``
requests/s. Reports the latency of each endpoint (median, p99) and the throughput
cost: files/s from the first claim to the last commit (from the journal), with and
without the load. Targets: p99 < 50 ms, cost < 5 %.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from throughput import (
    BenchError,
    build_workload,
    check_done,
    fresh_watch_dir,
    parse_ts,
    percentile,
    run_supervisor_once,
    write_config,
)

from tests.daemon import journal


class Load(threading.Thread):
    """GET /stats and /metrics in turn at a fixed rate until stopped; keep latencies."""

    def __init__(self, log_path: Path, rate: float) -> None:
        super().__init__(daemon=True)
        self.log_path = log_path
        self.interval = 1.0 / rate
        self.stop = threading.Event()
        self.latencies: dict[str, list[float]] = {"stats": [], "metrics": []}
        self.errors: list[tuple[float, str]] = []

    def _url(self) -> str | None:
        while not self.stop.is_set():
            try:
                text = self.log_path.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            match = re.search(r"dashboard at (http://\S+)", text)
            if match:
                return match.group(1)
            self.stop.wait(0.01)
        return None

    def run(self) -> None:
        base = self._url()
        n = 0
        next_at = time.perf_counter()
        while base and not self.stop.is_set():
            endpoint = ("stats", "metrics")[n % 2]
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(base + endpoint, timeout=5) as response:
                    response.read()
                self.latencies[endpoint].append(time.perf_counter() - started)
            except OSError as exc:
                self.errors.append((time.time(), f"{endpoint}: {exc}"))
            n += 1
            next_at += self.interval
            self.stop.wait(max(0.0, next_at - time.perf_counter()))


def processing_rate(watch: Path) -> float:
    """files/s from the first claim to the last commit, from the journal."""
    entries = journal(watch)
    claimed = [parse_ts(e["ts"]) for e in entries if e["event"] == "claimed"]
    done = [parse_ts(e["ts"]) for e in entries if e["event"] == "processed"]
    return len(done) / max(1e-6, max(done) - min(claimed))


def one_run(run_dir: Path, workload, loaded: bool, rate: float) -> tuple[float, Load | None]:
    config = write_config(run_dir, workers=2, durable=True)
    watch = run_dir / "watch_dir"
    fresh_watch_dir(watch, workload)
    load = Load(run_dir / f"{config.stem}.log", rate) if loaded else None
    if load:
        load.start()
    try:
        _, _, _, log = run_supervisor_once(config, 2)
    finally:
        if load:
            load.stop.set()
            load.join(timeout=10)
    check_done(watch, workload, "foldermill", log)
    return processing_rate(watch), load


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fm-web-bench-") as tmp:
        base = Path(tmp)
        workload = build_workload(base, "small", args.files, args.lines)
        quiet, busy, lat = [], [], {"stats": [], "metrics": []}
        failures = 0
        for run in range(args.runs):
            rate, _ = one_run(base / f"run-{run}-quiet", workload, False, args.rate)
            quiet.append(rate)
            rate, load = one_run(base / f"run-{run}-load", workload, True, args.rate)
            busy.append(rate)
            for k in lat:
                lat[k] += load.latencies[k]
            # Requests refused while a --once supervisor shuts down (after its last commit)
            # are not failures of the dashboard.
            last = max(parse_ts(e["ts"]) for e in journal(base / f"run-{run}-load" / "watch_dir")
                       if e["event"] == "processed")
            during = [msg for t, msg in load.errors if t <= last]
            failures += len(during)
            if during:
                print("   failed requests:", during[:3])
            print(f"run {run + 1}: {quiet[-1]:,.0f} files/s quiet, {busy[-1]:,.0f} files/s under load "
                  f"({sum(len(v) for v in load.latencies.values())} requests)")
    if not all(lat.values()):
        raise BenchError("no request was answered")
    q, b = statistics.median(quiet), statistics.median(busy)
    print(f"\n{args.files:,} files x {args.lines} lines, {args.runs} runs (medians), load {args.rate:g} req/s")
    for k, values in lat.items():
        median, p99 = statistics.median(values) * 1000, percentile(values, 99) * 1000
        print(f"  /{k:8s} median {median:6.1f} ms   p99 {p99:6.1f} ms   ({len(values)} requests)")
    print(f"  throughput quiet {q:,.0f} files/s, under load {b:,.0f} files/s: cost {100 * (1 - b / q):+.1f} %"
          f"   (target < 5 %)")
    print(f"  failed requests while processing: {failures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
