"""The intake against a backlog: the window of oldest files on its own (a real folder),
then the real daemon draining 20,000 files through a window of 2,000, and losing its
file events to an inotify queue overflow."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

from tests.daemon import PeakRSS, aged_files, event_time, folder, journal, start, wait_for, write_config
from tests.test_parts import Nothing, make_queue
from workers.daemon.backlog import Backlog
from workers.daemon.census import Census
from workers.daemon.events import GONE, MOVED_IN
from workers.daemon.intake import Intake
from workers.queue import FolderQueue

DAY = 86400.0


def rename_all(src: Path, dst: Path, names: list[str]) -> None:
    for name in names:
        os.rename(src / name, dst / name)


# -- the window on its own -----------------------------------------------------------------------


def test_the_window_holds_the_oldest_files_and_admits_only_arrivals_older_than_its_horizon(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    names = aged_files(q.unprocessed, 10, "a", time.time() - DAY)
    backlog = Backlog(window=3)
    backlog.refill(q.waiting())
    assert backlog.total == 10 and not backlog.complete
    assert [name for _, name in backlog.order] == names[:3]
    assert backlog.horizon == (os.stat(q.unprocessed / names[3]).st_mtime_ns, names[3])
    old = os.stat(q.unprocessed / names[0]).st_mtime_ns - 1
    assert backlog.admits(old, "older.log") and not backlog.admits(old + 10**12, "newer.log")
    backlog.put("older.log", old)
    assert backlog.holds("older.log", old) and backlog.oldest_mtime_ns() == old
    # The window keeps its size: its newest file is left out and becomes the horizon.
    assert backlog.horizon == (os.stat(q.unprocessed / names[2]).st_mtime_ns, names[2])
    taken = [backlog.take() for _ in range(4)]
    assert [k[1] if k else None for k in taken] == ["older.log", *names[:2], None]
    everything = Backlog(window=100)
    everything.refill(q.waiting())
    assert everything.complete and everything.total == 10 and everything.admits(2**62, "any")


def test_claims_stay_oldest_first_across_refills_of_a_small_window(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    names = aged_files(tmp_path / "staging", 23, "a", time.time() - DAY)
    rename_all(tmp_path / "staging", q.unprocessed, names[::-1])  # directory order is not age order
    intake = Intake(q, settle_s=0.0, poll_interval_s=60, once=False, window=5)
    claimed: list[str] = []
    now = 1.0
    while len(claimed) < 23:
        got = intake.claim(now, 4, Nothing(), True, True).files
        assert got, f"stuck after {claimed}"
        claimed += [c.name for c in got]
        assert intake.counts()["unprocessed"] == 23 - len(claimed)
        now += 0.1
    assert claimed == names
    assert intake.counts() == {"unprocessed": 0, "underprocess": 23, "processed": 0, "failed": 0}


def test_an_older_file_that_arrives_is_claimed_before_the_rest_and_counts_follow_events(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    base = time.time() - DAY
    names = aged_files(tmp_path / "staging", 12, "b", base)
    rename_all(tmp_path / "staging", q.unprocessed, names)
    intake = Intake(q, settle_s=0.0, poll_interval_s=60, once=False, window=4)
    assert [c.name for c in intake.claim(1.0, 2, Nothing(), True, True).files] == names[:2]
    late = aged_files(tmp_path / "late", 1, "a", base - DAY)[0]  # older than everything waiting
    os.rename(tmp_path / "late" / late, q.unprocessed / late)
    intake.note_event(MOVED_IN, late)
    assert intake.counts()["unprocessed"] == 11
    assert intake.oldest_waiting_mtime() == os.stat(q.unprocessed / late).st_mtime_ns / 1e9
    os.unlink(q.unprocessed / names[5])  # taken away by hand
    intake.note_event(GONE, names[5])
    assert intake.counts()["unprocessed"] == 10
    # It arrived after the last look at /proc: at once if a look is due, else at the next
    # (looks take at most a tenth of the time), and nothing younger is claimed before it.
    claimed = [c.name for c in intake.claim(1.001, 20, Nothing(), True, True).files]
    claimed += [c.name for c in intake.claim(100.0, 20, Nothing(), True, True).files]
    claimed += [c.name for c in intake.claim(200.0, 20, Nothing(), True, True).files]  # one refill a round
    assert claimed == [late, *names[2:5], *names[6:]]


class Flaky(Nothing):
    """Records whose first question fails (a busy state database, say)."""

    def __init__(self) -> None:
        self.calls = 0

    def in_flight(self, name: str) -> bool:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("database is locked")
        return False


def test_a_round_that_fails_half_way_leaves_no_file_out_of_the_window(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    names = aged_files(q.unprocessed, 6, "c", time.time() - DAY)
    intake = Intake(q, settle_s=0.0, poll_interval_s=60, once=False, window=10)
    records = Flaky()
    try:
        intake.claim(1.0, 4, records, True, True)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the round should have failed")
    assert [c.name for c in intake.claim(1.1, 10, records, True, True).files] == names


def test_files_that_never_get_ready_do_not_hold_back_the_files_behind_them(tmp_path: Path) -> None:
    q = FolderQueue(tmp_path / "w", ("*.log",), (".*",), "{name}.ready")
    q.prepare()
    base = time.time() - DAY
    unmarked = aged_files(q.unprocessed, 5, "a", base)  # the oldest, whose markers never come
    marked = aged_files(q.unprocessed, 3, "b", base + 100)
    for name in marked:
        (q.unprocessed / f"{name}.ready").touch()
    intake = Intake(q, settle_s=0.0, poll_interval_s=0.1, once=False, window=3)
    claimed: list[str] = []
    now = 1.0
    for _ in range(10):
        claimed += [c.name for c in intake.claim(now, 10, Nothing(), True, True).files]
        now += 0.2
    assert claimed == marked
    assert intake.counts()["unprocessed"] == len(unmarked)


def test_a_claim_refused_now_is_tried_again_later_not_in_a_busy_loop(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    names = aged_files(q.unprocessed, 2, "d", time.time() - DAY)
    rival = make_queue(tmp_path / "w")  # another supervisor on the folder holds one lock
    assert rival.locks.try_acquire(q.lock_index(names[0]))
    intake = Intake(q, settle_s=0.0, poll_interval_s=5.0, once=True, window=10)
    assert [c.name for c in intake.claim(1.0, 10, Nothing(), True, True).files] == [names[1]]
    assert intake.next_look >= 1.0 + 5.0 - 1e-6, "the refused file waits a poll interval"
    assert not intake.once_idle, "--once is not done while a file waits for its lock"
    rival.locks.release(q.lock_index(names[0]))
    assert [c.name for c in intake.claim(6.5, 10, Nothing(), False, False).files] == [names[0]]


def test_the_census_follows_our_moves_and_a_recount_puts_right_what_was_done_by_hand(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    for i in range(3):
        (q.unprocessed / f"f{i}.log").write_text("x\n")
    census = Census(q)
    assert census.counts(0.0, 3) == {"unprocessed": 3, "underprocess": 0, "processed": 0, "failed": 0}
    for i in range(3):
        assert q.claim(f"f{i}.log")
    q.finish("f0.log", "f0.log", "processed")
    q.finish("f1.log", "f1.log", "failed", "it broke")
    assert census.counts(1.0, 0) == {"unprocessed": 0, "underprocess": 1, "processed": 1, "failed": 1}
    os.unlink(q.processed / "f0.log")  # archived by hand: seen at the next recount
    assert census.counts(2.0, 0)["processed"] == 1
    assert census.counts(1000.0, 0)["processed"] == 0


# -- the real daemon ------------------------------------------------------------------------------

CONFIG = """
[watch]
dir = "watch_dir"
poll_interval = 0.5
settle = 0.3
backlog_window = {window}

[web]
port = 0

[workers]
count = 2

[pipeline.nodes.start]
processor = "upper"
"""
BACKLOG = 20_000  # ten times the window
LATE = 50
RSS_BOUND = 80 * 2**20


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "stats", timeout=10) as response:
        return json.loads(response.read())


def post(url: str) -> int:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as response:
        return response.status


def waiting_now(watch: Path) -> int:
    return sum(1 for n in os.listdir(watch / "unprocessed") if not n.startswith("."))


def test_a_backlog_of_20000_drains_once_each_oldest_first_in_bounded_memory(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path, CONFIG.format(window=2000))
    watch = tmp_path / "watch_dir"
    base = time.time() - 3 * DAY
    names = aged_files(tmp_path / "staging", BACKLOG, "b", base)
    late = aged_files(tmp_path / "late", LATE, "a", base - DAY)  # older than the whole backlog
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    rss = PeakRSS(d.pid, every_s=0.1)
    rss.start()
    rename_all(tmp_path / "staging", watch / "unprocessed", names)
    wait_for(lambda: len(os.listdir(watch / "processed")) >= 5_000, 300, "5,000 of the backlog processed",
             interval_s=0.2)
    assert post(url + "intake/pause") == 202
    wait_for(lambda: (s := stats(url))["intake_paused"] and s["in_flight"] == 0 and s, 60,
             "the intake paused with nothing in flight")
    # While paused, the counts and the oldest age are those of the folder.
    left = waiting_now(watch)
    oldest = min(os.stat(watch / "unprocessed" / n).st_mtime for n in os.listdir(watch / "unprocessed"))
    s = wait_for(lambda: (s := stats(url))["folders"]["unprocessed"] == left and s, 10,
                 f"/stats to count the {left} files waiting")
    assert abs(s["oldest_unprocessed_age_s"] - (s["time"] - oldest)) < 2.0
    assert s["folders"]["processed"] == len(os.listdir(watch / "processed"))
    # Files older than the whole backlog arrive: they are next, whatever waits beyond the window.
    rename_all(tmp_path / "late", watch / "unprocessed", late)
    wait_for(lambda: (s := stats(url))["folders"]["unprocessed"] == left + LATE
             and s["oldest_unprocessed_age_s"] > 3.9 * DAY, 20, "/stats to see the late, older files")
    resumed_at = time.time()
    assert post(url + "intake/resume") == 202
    wait_for(lambda: len(os.listdir(watch / "processed")) == BACKLOG + LATE, 400, "the whole backlog processed",
             interval_s=0.5)
    wait_for(lambda: stats(url)["folders"]["unprocessed"] == 0, 10, "/stats to count nothing waiting")
    rss.done.set()
    assert d.stop(timeout_s=60) == 0
    entries = journal(watch)
    done = Counter(e["file"] for e in entries if e["event"] == "processed")
    assert set(done) == set(names) | set(late) and set(done.values()) == {1}
    claims = [e["file"] for e in entries if e["event"] == "claimed"]
    assert len(claims) == BACKLOG + LATE
    after = [e["file"] for e in entries if e["event"] == "claimed" and event_time(e) >= resumed_at - 0.01]
    assert sorted(after[:LATE]) == late, "the older files came in after the pause and are claimed first"
    rest = [n for n in claims if not n.startswith("a-")]
    assert rest == sorted(rest), "the backlog is claimed oldest first"
    assert folder(watch, "failed") == [] and folder(watch, "unprocessed") == []
    assert rss.peak < RSS_BOUND, f"supervisor peak RSS {rss.peak / 2**20:.1f} MB"


def test_events_lost_to_an_inotify_overflow_cost_latency_never_a_file(tmp_path: Path, daemons) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    assert limit <= 1 << 17, f"fs.inotify.max_queued_events is {limit}: too many files to overflow it here"
    count = limit + 2000
    config = write_config(tmp_path, CONFIG.format(window=100_000))
    watch = tmp_path / "watch_dir"
    names = aged_files(tmp_path / "staging", count, "o", time.time() - DAY)
    d = start(daemons, config)
    os.kill(d.pid, signal.SIGSTOP)  # nobody reads the inotify queue: it overflows
    try:
        rename_all(tmp_path / "staging", watch / "unprocessed", names)
    finally:
        os.kill(d.pid, signal.SIGCONT)
    wait_for(lambda: "inotify queue overflow" in d.log(), 30, "the supervisor to notice the overflow")
    wait_for(lambda: len(os.listdir(watch / "processed")) == count, 300, f"all {count:,} files processed",
             interval_s=0.5)
    assert d.stop(timeout_s=60) == 0
    done = Counter(e["file"] for e in journal(watch) if e["event"] == "processed")
    assert set(done) == set(names) and set(done.values()) == {1}
