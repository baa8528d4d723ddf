"""Each daemon part on its own, with real folders, a real state database, real worker
processes and (for the Celery backend) a real redis-server and Celery node."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import subprocess
import time
from collections import Counter
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

from supervisor import open_shared
from tests.daemon import behave_config, journal, wait_for
from workers.config import Config, load_config, pipeline_version, reloaded
from workers.daemon.backend import Backend
from workers.daemon.celery_pool import CeleryPool
from workers.daemon.commit import Commit
from workers.daemon.faults import Faults
from workers.daemon.flights import IllegalTransition, State
from workers.daemon.intake import Intake
from workers.daemon.ledger import Ledger
from workers.daemon.local_pool import LocalPool
from workers.daemon.reconcile import Reconcile
from workers.daemon.types import Delivery, Returned, Tally
from workers.graph import compile_graph
from workers.messages import JobDone
from workers.queue import FolderQueue
from workers.state import Stats
from workers.store import Journal, Store
from workers.worker import ItemResult, Job, JobItem, JobResult


class Nothing:
    """Records of a ledger that holds nothing (the intake's view of it)."""

    def in_flight(self, name: str) -> bool:
        return False

    def backing_off(self) -> dict[tuple[str, int], float]:
        return {}

    def seen_before(self) -> set[tuple[str, int]]:
        return set()


def make_queue(root: Path) -> FolderQueue:
    q = FolderQueue(root, ("*",), (".*", "*.tmp"), "")
    q.prepare()
    return q


def renamed_in(q: FolderQueue, name: str, text: str, mtime: float) -> None:
    tmp = q.root / f".in-{name}"
    tmp.write_text(text)
    os.utime(tmp, (mtime, mtime))
    os.rename(tmp, q.unprocessed / name)


# -- intake ------------------------------------------------------------------------------------


def test_intake_claims_oldest_first_up_to_the_limit_and_rejects_what_is_not_a_file(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    for i, name in enumerate(["c.log", "a.log", "b.log"]):
        renamed_in(q, name, "x\n", 1_000_000 + i)  # c oldest, then a, then b
    os.symlink("/etc/passwd", q.unprocessed / "link.log")
    os.utime(q.unprocessed / "link.log", (900_000, 900_000), follow_symlinks=False)
    intake = Intake(q, settle_s=0.0, poll_interval_s=60, once=False)
    claims = intake.claim(1.0, 2, Nothing(), True, True)
    assert [c.name for c in claims.files] == ["c.log", "a.log"]
    assert [(c.name, "a symlink" in why) for c, why in claims.rejects] == [("link.log", True)]
    assert sorted(os.listdir(q.underprocess)) == ["a.log", "c.log", "link.log"]
    assert intake.backlog_size() == (1, 2)  # b.log waits for the next round
    assert [c.name for c in intake.claim(1.1, 10, Nothing(), False, False).files] == ["b.log"]


def test_intake_does_not_claim_a_file_still_open_for_writing(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    intake = Intake(q, settle_s=0.0, poll_interval_s=60, once=False)
    with open(q.unprocessed / "busy.log", "w") as writer:
        writer.write("half")
        writer.flush()
        assert intake.claim(1.0, 10, Nothing(), True, True).files == []
    intake.wake()
    assert [c.name for c in intake.claim(2.0, 10, Nothing(), True, True).files] == ["busy.log"]


def test_intake_recovers_a_dead_owners_file_and_leaves_its_own(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    renamed_in(q, "mine.log", "x\n", 1_000_000)
    intake = Intake(q, settle_s=0.0, poll_interval_s=60, once=False)
    assert intake.claim(1.0, 10, Nothing(), True, True).files
    (q.underprocess / "orphan.log").write_text("left by a dead supervisor\n")  # nobody holds its lock
    reconcile = Reconcile(q, Store(q.state_dir / "state.db"), "host:1", "host:1:test")
    assert reconcile.recover_due(2.0)
    found = reconcile.recover(2.0, {"mine.log"})
    assert not reconcile.recover_due(3.0)
    assert found.requeued == ["orphan.log"] and not found.adopted
    assert sorted(os.listdir(q.unprocessed)) == ["orphan.log"] and os.listdir(q.underprocess) == ["mine.log"]


# -- ledger and commit -------------------------------------------------------------------------


def book(tmp_path: Path) -> tuple[FolderQueue, Store, Ledger, Commit, Config]:
    config = load_config(behave_config(tmp_path))
    q = make_queue(config.watch.dir)
    store = Store(q.state_dir / "state.db")
    journal = Journal(config.watch.dir / "input.log", 1 << 20, 2, q.locks_dir / "journal.lock")
    graph = compile_graph(config.pipelines["default"], str(config.base_dir))
    faults = Faults([q.output, q.state_dir])
    ledger = Ledger(q, store, journal, graph, "host:1", "host:1:test", False, lambda name: None, faults, 0.3)
    commit = Commit(ledger, store, q, config.workers, Stats(0.0, {}), Tally(), faults)
    return q, store, ledger, commit, config


def test_the_commit_order_outputs_then_input_then_journal_then_state(tmp_path: Path) -> None:
    """staged -> state "committing" -> outputs in place -> input in processed/ -> journal
    -> state "processed": what each write saw of the folders, in the order it came."""
    q, store, ledger, commit, _ = book(tmp_path)
    renamed_in(q, "a.log", "x\n", 1_000_000)
    intake = Intake(q, 0.0, 60, False)
    flights = commit.admitted(ledger.admit(intake.claim(1.0, 10, ledger, True, True).files, "claimed"))
    job = ledger.assign(flights, "v1")
    temp = f".fm-{job.items[0].file_id}.cafe.0.tmp"
    (q.output / temp).write_text("X\n")
    seen: list[tuple[str, bool, bool, bool]] = []

    def trace(sql: str) -> None:
        if sql.lstrip().upper().startswith("UPDATE FILES SET STATUS"):
            journal = (q.root / "input.log").read_text() if (q.root / "input.log").exists() else ""
            seen.append(("committing" if "committing" in sql else "finished", (q.output / "a.log").exists(),
                         (q.processed / "a.log").exists(), '"processed"' in journal))

    store.db.set_trace_callback(trace)
    commit.deliver(Delivery(job.seq, 7, True, [ItemResult(job.items[0].file_id, True, [(temp, "a.log")], 1, 1)]))
    commit.run()
    store.db.set_trace_callback(None)
    assert seen == [("committing", False, False, False), ("finished", True, True, True)]
    assert (q.output / "a.log").read_text() == "X\n" and not ledger.count()


def test_a_job_given_back_after_its_result_came_in_keeps_the_result(tmp_path: Path) -> None:
    """A worker dies right after sending its result: the backend gives the job back,
    but its file is STAGED now, not the job's to give back: its staged output stays and
    is committed, and it is not sent out again (nor anything charged)."""
    q, _, ledger, commit, _ = book(tmp_path)
    renamed_in(q, "a.log", "x\n", 1_000_000)
    flights = commit.admitted(ledger.admit(Intake(q, 0.0, 60, False).claim(1.0, 10, ledger, True, True).files,
                                           "claimed"))
    job = ledger.assign(flights, "v1")
    temp = f".fm-{job.items[0].file_id}.cafe.0.tmp"
    (q.output / temp).write_text("X\n")
    commit.deliver(Delivery(job.seq, 7, True, [ItemResult(job.items[0].file_id, True, [(temp, "a.log")], 1, 1)]))
    assert flights[0].state is State.STAGED
    commit.settle(Returned(job.seq, job.items))  # its worker's death, seen after the result
    assert flights[0].state is State.STAGED and (q.output / temp).exists()
    assert ledger.take_pending(float("inf")) == []
    commit.run()
    assert (q.output / "a.log").read_text() == "X\n" and (q.processed / "a.log").exists() and not ledger.count()


def test_a_transition_the_diagram_lacks_is_refused(tmp_path: Path) -> None:
    q, _, ledger, _, _ = book(tmp_path)
    renamed_in(q, "a.log", "x\n", 1_000_000)
    flight = ledger.admit(Intake(q, 0.0, 60, False).claim(1.0, 10, ledger, True, True).files, "claimed")[0]
    with pytest.raises(IllegalTransition, match="waiting -> committing"):
        ledger.flights.to(flight, State.COMMITTING)
    assert flight.state is State.WAITING and ledger.flights.in_state(State.WAITING) == [flight]


def test_a_bug_of_the_state_machine_is_never_charged_to_the_file(tmp_path: Path) -> None:
    """A step that asks for a transition the table lacks stops the step (the service
    logs it, and stops after repeated failures): the file costs no attempt."""
    q, store, ledger, commit, _ = book(tmp_path)
    renamed_in(q, "a.log", "x\n", 1_000_000)
    flight = ledger.admit(Intake(q, 0.0, 60, False).claim(1.0, 10, ledger, True, True).files, "claimed")[0]
    with pytest.raises(IllegalTransition):
        commit.outcomes.per_file(flight, "a step", ledger.flights.to, flight, State.COMMITTING)
    attempts = store.db.execute("SELECT attempts FROM files WHERE id = ?", (flight.record.id,)).fetchone()[0]
    assert flight.state is State.WAITING and attempts == 0


def test_a_commit_cut_short_is_rolled_forward_at_the_next_claim(tmp_path: Path) -> None:
    """The owner died after marking the file committing and renaming one output: the
    next claim finishes the commit without processing the file again."""
    q, store, ledger, _, _ = book(tmp_path)
    renamed_in(q, "a.log", "x\n", 1_000_000)
    intake = Intake(q, 0.0, 60, False)
    flights = ledger.admit(intake.claim(1.0, 10, ledger, True, True).files, "claimed")
    ledger.flush()
    file_id = flights[0].record.id
    (q.output / f".fm-{file_id}.cafe.0.tmp").write_text("X\n")
    store.committing([(file_id, [(f".fm-{file_id}.cafe.0.tmp", "a.log")])])
    q.put_back("a.log")  # as recovery does after its owner's death
    q2, _, ledger2, commit2, _ = book(tmp_path)
    again = ledger2.admit(Intake(q2, 0.0, 60, False).claim(2.0, 10, ledger2, True, True).files, "claimed")
    assert again[0].record.committed
    assert commit2.admitted(again) == []  # nothing left to process
    ledger2.flush()
    assert (q2.processed / "a.log").exists() and (q2.output / "a.log").read_text() == "X\n"
    events = [e["event"] for e in journal(q2.root) if e["file"] == "a.log"]
    assert events == ["claimed", "claimed", "processed"]


def test_a_failed_attempt_parks_the_file_and_the_last_one_fails_it(tmp_path: Path) -> None:
    q, _, ledger, commit, _ = book(tmp_path)  # max_attempts = 2
    renamed_in(q, "bad.log", "x\n", 1_000_000)
    flights = ledger.admit(Intake(q, 0.0, 60, False).claim(1.0, 10, ledger, True, True).files, "claimed")
    for attempt in (1, 2):
        job = ledger.assign(flights, "v1")
        commit.deliver(Delivery(job.seq, 7, True, [ItemResult(flights[0].record.id, False, reason="boom")]))
        if attempt == 1:
            assert ledger.take_pending(float("inf")) == flights  # its backoff is over: it goes out again
    ledger.flush()
    assert os.listdir(q.failed) == ["bad.log", "bad.log.reason"] and not ledger.count()


# -- the backend protocol, both implementations ------------------------------------------------


def round_trip(backend: Backend, results: queue.SimpleQueue | None, shared_results: object, job: Job) -> JobResult:
    wait_for(lambda: backend.room() > 0, 60, "room for a job")
    assert backend.submit(job)

    def arrived() -> JobResult | None:
        try:
            if results is not None:
                item = results.get(timeout=0.2)
                return item.result if isinstance(item, JobDone) else None
            return shared_results.get(timeout=0.2)  # type: ignore[attr-defined]
        except queue.Empty:
            return None

    return wait_for(arrived, 60, f"the result of job {job.seq}")


def claimed_job(config: Config, seq: int, name: str, text: str, pipeline: str = "") -> Job:
    q = make_queue(config.watch.dir)
    renamed_in(q, name, text, 1_000_000)
    assert q.claim(name)
    return Job(seq, (JobItem(seq, name, name, len(text)),), pipeline)


def test_the_local_pool_runs_a_job_and_names_the_file_a_dead_worker_was_on(tmp_path: Path) -> None:
    config = load_config(behave_config(tmp_path))
    shared = open_shared(mp.get_context("fork"))
    pool = LocalPool(mp.get_context("spawn"), shared, config, 1, False, tmp_path / "state.db", Counter())
    try:
        pool.start(queue.SimpleQueue())
        pool.check(0.0, False)  # starts the worker
        result = round_trip(pool, None, shared.results, claimed_job(config, 1, "ok.log", "fine\n"))
        delivery = pool.collect(result)
        assert delivery is not None and delivery.accepted and delivery.items[0].ok
        temp, final = delivery.items[0].staged[0]
        assert final == "ok.log" and (config.output_dir / temp).read_text() == "FINE\n"
        assert pool.collect(result) is None  # the same result again is stale
        assert pool.submit(claimed_job(config, 2, "crash.log", "EXIT\n"))
        returned = wait_for(lambda: pool.check(1.0, False), 60, "the worker's death")
        assert [(r.seq, r.culprit.name if r.culprit else None, r.failure.cause if r.failure else "")
                for r in returned] == [(2, "crash.log", "crash")]
        assert "exited with status 3 while processing it" in returned[0].failure.reason
    finally:
        pool.stop()
        shared.shutdown()
        # The spawn context started multiprocessing's resource tracker for this process
        # (the daemon's own runs in the supervisor process): stop it, as its exit would.
        resource_tracker._resource_tracker._stop()


def test_the_celery_pool_runs_jobs_of_the_pipeline_version_they_need(tmp_path: Path, redis_server) -> None:
    from tests.test_celery import celery_config, start_node

    config = load_config(celery_config(tmp_path, redis_server))
    nodes: list[subprocess.Popen] = []
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    pool = CeleryPool(config, "host:1", False, pipeline_version(config.raw))
    try:
        start_node(nodes, config.path, "alpha")
        pool.start(inbox)
        result = round_trip(pool, inbox, None, claimed_job(config, 1, "a.log", "Mixed\n"))
        delivery = pool.collect(result)
        assert delivery is not None and delivery.accepted and not delivery.resend
        assert (config.output_dir / delivery.items[0].staged[0][0]).read_text() == "MIXED\n"
        late = pool.collect(result)  # a second execution's result of the same job is never accepted
        assert late is not None and not late.accepted
        # A reload: the node started with the old pipeline and reloads it from the job.
        text = config.path.read_text()
        lower = text[:text.index("[pipeline.nodes.start]")] + '[pipeline.nodes.start]\nprocessor = "lower"\n'
        config.path.with_name("new.toml").write_text(lower)
        new, _ = reloaded(config, load_config(config.path.with_name("new.toml")))
        pool.reload(new, pipeline_version(new.raw))
        second = pool.collect(round_trip(pool, inbox, None, claimed_job(config, 2, "b.log", "Mixed\n",
                                                                         pipeline_version(new.raw))))
        assert second is not None and (config.output_dir / second.items[0].staged[0][0]).read_text() == "mixed\n"
    finally:
        pool.stop()
        for node in nodes:
            node.terminate()
            node.wait(timeout=15)


# -- faults of the machine -----------------------------------------------------------------------


def test_a_fault_pauses_until_its_probe_passes_and_one_that_comes_back_is_looked_at_less_often(
        tmp_path: Path) -> None:
    from workers.faults import DATABASE_BUSY, Fault

    faults = Faults([tmp_path])
    assert not faults.paused() and faults.describe() is None
    faults.hit(Fault(DATABASE_BUSY, str(tmp_path / "state.db"), "database is locked"), now=100.0)
    assert faults.paused() and faults.describe()["kind"] == DATABASE_BUSY
    faults.hit(Fault("disk_full", "x", "another"), now=100.1)  # the first one met is the one shown
    assert faults.describe()["kind"] == DATABASE_BUSY and faults.counts()["episodes"]["disk_full"] == 0
    assert not faults.cleared(100.5)  # not due yet
    assert faults.cleared(101.0) and not faults.paused()
    faults.hit(Fault(DATABASE_BUSY, "", "database is locked"), now=105.0)  # back soon: looked at in 2 s
    assert not faults.cleared(106.0) and faults.cleared(107.0)
    faults.hit(Fault(DATABASE_BUSY, "", "database is locked"), now=108.0)  # and again: 4 s
    assert not faults.cleared(111.0) and faults.cleared(112.0)
    assert faults.counts() == {"active": None, "episodes": {**dict.fromkeys(
        ("disk_full", "quota", "descriptors", "memory", "read_only"), 0), DATABASE_BUSY: 3}}
    faults.hit(Fault(DATABASE_BUSY, "", "database is locked"), now=200.0)  # long after: 1 s again
    assert faults.cleared(201.0)


def test_a_full_disk_is_over_only_when_every_folder_takes_a_probe_write(tmp_path: Path) -> None:
    from workers.faults import DISK_FULL, Fault

    writable, gone = tmp_path / "a", tmp_path / "missing"
    writable.mkdir()
    faults = Faults([writable, gone])
    faults.hit(Fault(DISK_FULL, str(writable), "No space left on device"), now=0.0)
    assert not faults.cleared(1.0)  # a folder where nothing can be written
    gone.mkdir()
    assert faults.cleared(2.0)
    assert not [p for p in (*writable.iterdir(), *gone.iterdir())]  # the probes went


def test_an_open_counted_just_before_our_claim_does_not_hold_the_next_delivery(tmp_path: Path) -> None:
    """An open of a.log that came in while the loop was busy, then our claim: its close
    happens in underprocess/, where nothing watches. The name is free for what comes next."""
    from workers.daemon.events import GONE, MOVED_IN, OPENED

    q = make_queue(tmp_path / "w")
    renamed_in(q, "a.log", "first\n", 1_000_000)
    intake = Intake(q, settle_s=0.0, poll_interval_s=60, once=False)
    assert [c.name for c in intake.claim(1.0, 10, Nothing(), True, True).files] == ["a.log"]
    intake.note_event(OPENED, "a.log")  # before our claim, read after it
    intake.note_event(GONE, "a.log")  # our claim's move out
    q.finish("a.log", "a.log", "processed")
    renamed_in(q, "a.log", "second\n", 1_000_001)
    intake.note_event(MOVED_IN, "a.log")
    assert [c.name for c in intake.claim(2.0, 10, Nothing(), True, True).files] == ["a.log"]


def test_a_count_left_open_by_a_merged_close_goes_stale() -> None:
    """inotify merges two identical closes in a row: one open stays counted. A file that
    looks the same for stale_open_s is taken for closed."""
    from workers.queue import Candidate
    from workers.readiness import Readiness

    r = Readiness(settle_s=0.5)
    c = Candidate("a.log", 10, 1_000, 7, 0o100644)
    r.note_opened("a.log")
    r.note_opened("a.log")
    r.note_closed("a.log")  # the second close was merged away
    assert not r.ready(c, set(), now=1000.0)
    assert not r.ready(c, set(), now=1000.0 + r.stale_open_s - 1)
    grown = Candidate("a.log", 20, 2_000, 7, 0o100644)
    assert not r.ready(grown, set(), now=1000.0 + r.stale_open_s + 1)  # it changed: its time starts again
    assert not r.ready(grown, set(), now=1000.0 + 2 * r.stale_open_s)
    assert r.ready(grown, set(), now=1002.0 + 2 * r.stale_open_s) and not r.is_open("a.log")


def test_a_file_caught_changing_waits_twice_as_long_each_time(tmp_path: Path) -> None:
    q, _, ledger, _, _ = book(tmp_path)  # settle 0.3
    renamed_in(q, "w.log", "x\n", 1_000_000)
    flights = ledger.admit(Intake(q, 0.0, 60, False).claim(1.0, 10, ledger, True, True).files, "claimed")
    flight = flights[0]
    waits = []
    for size in (3, 4, 5):
        ledger.assign([flight], "v1")  # its result is in, waiting for the commit, when it is caught
        ledger.flights.to(flight, State.STAGED, result=ItemResult(flight.record.id, True), pid=1)
        (q.underprocess / "w.log").write_text("x" * size)
        seen = ledger.changed_since_claim(flight)
        assert seen is not None
        ledger.unstable(flight, seen)
        waits.append(ledger.flights.named("w.log").stable_s)
        assert ledger.take_pending(time.monotonic() + 100) == [flight]  # stable meanwhile: out again
    assert waits == [0.6, 1.2, 2.4]
    ledger.flush()
    assert [e["event"] for e in journal(q.root)].count("changed") == 3


def test_a_fault_a_worker_meets_on_one_file_alone_is_charged_after_three(tmp_path: Path) -> None:
    """No descriptors left in a worker, three times in a row on the same file: a leaking
    processor, not the machine; the file is charged like any failure. A full disk never is."""
    q, _, ledger, commit, _ = book(tmp_path)
    renamed_in(q, "leak.log", "x\n", 1_000_000)
    renamed_in(q, "big.log", "x\n", 1_000_001)
    flights = ledger.admit(Intake(q, 0.0, 60, False).claim(1.0, 10, ledger, True, True).files, "claimed")
    for round_ in range(1, 5):
        job = ledger.assign([f for f in flights if ledger.in_flight(f.record.name)], "v1")
        commit.deliver(Delivery(job.seq, 7, True, [
            ItemResult(f.record.id, False, reason="Too many open files", fault="descriptors" if
                       f.record.name == "leak.log" else "disk_full") for f in flights]))
        commit.faults.cleared(float("inf"))  # the probe passes: the supervisor has descriptors
        pending = ledger.take_pending(float("inf"))
        if round_ < 3:
            assert sorted(f.record.name for f in pending) == ["big.log", "leak.log"]
    ledger.flush()
    retried = [e for e in journal(q.root) if e["event"] in ("retried", "failed")]
    assert [e["file"] for e in retried] == ["leak.log"] and "3 times in a row" in retried[0]["reason"]
    assert ledger.in_flight("big.log")  # a full disk: held, never charged


def test_a_stop_keeps_a_file_being_committed_for_its_roll_forward(tmp_path: Path) -> None:
    q, store, ledger, _, _ = book(tmp_path)
    renamed_in(q, "c.log", "x\n", 1_000_000)
    flights = ledger.admit(Intake(q, 0.0, 60, False).claim(1.0, 10, ledger, True, True).files, "claimed")
    file_id = flights[0].record.id
    temp = f".fm-{file_id}.cafe.0.tmp"
    (q.output / temp).write_text("X\n")
    store.committing([(file_id, [(temp, "c.log")])])
    ledger.return_all("stopping", frozenset({file_id}))
    assert (q.output / temp).exists() and (q.unprocessed / "c.log").exists()
    assert store.file_row(file_id)[1] == "committing"
    q2, _, ledger2, commit2, _ = book(tmp_path)
    again = ledger2.admit(Intake(q2, 0.0, 60, False).claim(2.0, 10, ledger2, True, True).files, "claimed")
    assert commit2.admitted(again) == []  # rolled forward, not processed again
    assert (q2.processed / "c.log").exists() and (q2.output / "c.log").read_text() == "X\n"


def test_a_reason_written_by_a_try_whose_move_failed_is_replaced(tmp_path: Path) -> None:
    q = make_queue(tmp_path / "w")
    renamed_in(q, "r.log", "x\n", 1_000_000)
    assert q.claim("r.log")
    (q.failed / "r.log.reason").write_text("an earlier try\n")  # its move to failed/ failed (a full disk)
    assert q.finish("r.log", "r.log", "failed", reason="it broke") == "r.log"
    assert (q.failed / "r.log.reason").read_text() == "it broke\n"
