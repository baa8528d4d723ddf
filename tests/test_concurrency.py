"""Several supervisors on one watch dir, and a chaos run of random SIGKILLs."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.daemon import Daemon, alive, drop, folder, journal, pace, start, wait_for, write_config
from tests.helpers import MemoryOutputs
from workers.config import load_config
from workers.engine import run_file
from workers.graph import compile_graph

SHIPPED = (Path(__file__).resolve().parents[1] / "config.toml").read_text()


def shipped_config(tmp_path: Path, workers: int = 1, max_attempts: int = 3, settle: float = 0.3) -> Path:
    """The shipped pipeline with test-friendly queue settings."""
    pipeline = SHIPPED[SHIPPED.index("# -- Pipelines and routes"):]
    return write_config(tmp_path, f"""[watch]
dir = "watch_dir"
poll_interval = 0.2
settle = {settle}

[web]
port = 0

[workers]
count = {workers}
max_attempts = {max_attempts}
retry_backoff = 0.05
batch_files = 16
shutdown_grace = 5

""" + pipeline)


def log_content(i: int) -> str:
    level = ("INFO", "WARN", "ERROR")[i % 3]
    return f"{level} request {i} password=s{i}\nINFO done {i}\n" + ("ERROR boom\n" if i % 7 == 0 else "")


def expected_output(config: Path, content: str) -> tuple[str, str]:
    """What ``run`` produces for this content: (main output, .errors side output)."""
    cfg = load_config(config)
    graph = compile_graph(cfg.pipelines["logs"], str(cfg.base_dir))
    out = MemoryOutputs("x")
    run_file(graph, "x", io.BytesIO(content.encode()), out.sink)
    return out.streams[""].getvalue(), out.streams["errors"].getvalue()


def test_two_supervisors_share_a_watch_dir_and_recover_only_a_dead_ones_files(tmp_path: Path, daemons) -> None:
    config = shipped_config(tmp_path)
    watch = tmp_path / "watch_dir"
    a = start(daemons, config, name="a")
    b = start(daemons, config, name="b")
    names = [f"f{i:04d}.log" for i in range(1000)]
    for i, name in enumerate(names):
        drop(watch, name, log_content(i))
    wait_for(lambda: folder(watch, "processed") == names, 120, "the 1,000 files processed by the pair")
    assert a.stop() == 0 and b.stop() == 0
    events = journal(watch)
    processed = [e for e in events if e["event"] == "processed"]
    assert Counter(e["file"] for e in processed) == dict.fromkeys(names, 1)  # each exactly once
    owners = Counter(e["supervisor"] for e in processed)
    assert len(owners) == 2, owners  # both took part
    claims = [e for e in events if e["event"] == "claimed"]
    assert Counter(e["file"] for e in claims) == dict.fromkeys(names, 1)  # each claimed once, by one of them
    assert {e["attempt"] for e in claims} == {1}
    assert not [e for e in events if e["event"] in ("retried", "failed", "recovered")]
    everything = sorted([*names, *(f"{n}.errors" for n in names)])
    assert sorted(os.listdir(watch / "output")) == everything  # each main and side output once, no temp files
    for i in (0, 7, 500, 999):
        want, errors = expected_output(config, log_content(i))
        assert (watch / "output" / names[i]).read_text() == want
        assert (watch / "output" / f"{names[i]}.errors").read_text() == errors

    # Phase two: slow files, so that both hold some in flight; kill a.
    (tmp_path / "slow.py").write_text("import time\ndef slow(lines):\n    for line in lines:\n"
                                      "        time.sleep(0.05)\n        yield 'end', line\n")
    slow_config = config.read_text().split("# -- Pipelines and routes")[0] + (
        '[pipeline.nodes.start]\nprocessor = "slow:slow"\n')
    config.write_text(slow_config)
    a = start(daemons, config, name="a2")
    b = start(daemons, config, name="b2")
    slow = [f"s{i:03d}.log" for i in range(40)]
    for name in slow:
        drop(watch, name, "x\n" * 4)

    def holders() -> Counter:
        last: dict[str, str] = {}
        for e in journal(watch):
            if e["file"] in slow and e["event"] in ("claimed", "processed"):
                last[e["file"]] = e["supervisor"] if e["event"] == "claimed" else "done"
        return Counter(last.values())

    wait_for(lambda: len([k for k in holders() if k != "done"]) == 2, 30, "both supervisors holding slow files")
    a.kill()
    stranded = set(folder(watch, "underprocess"))
    wait_for(lambda: folder(watch, "processed") == sorted([*names, *slow]), 90, "b to recover a's files and finish all")
    assert b.stop() == 0
    host = os.uname().nodename
    a_owner, b_owner = f"{host}:{a.pid}", f"{host}:{b.pid}"
    events = [e for e in journal(watch) if e["file"] in slow]
    assert not [e for e in events if e["event"] in ("retried", "failed")]  # a's death cost nobody an attempt
    claimed_by = {f: [e["supervisor"] for e in events if e["event"] == "claimed" and e["file"] == f] for f in slow}
    done_by = {f: [e["supervisor"] for e in events if e["event"] == "processed" and e["file"] == f] for f in slow}
    recovered = {e["file"]: i for i, e in enumerate(events) if e["event"] == "recovered"}
    held_by_a = {f for f in stranded if a_owner in claimed_by[f] and a_owner not in done_by[f]}
    assert held_by_a and set(recovered) >= held_by_a  # a's files came back
    for f, i in recovered.items():  # ... and b never took back one of its own
        assert events[i]["supervisor"] == b_owner
        before = [e["supervisor"] for e in events[:i] if e["event"] == "claimed" and e["file"] == f]
        # a's claim, or none journaled: the SIGKILL fell between a's claiming move and its
        # journal line (b journals every claim before its next step, so none of b's is missing)
        assert before in ([a_owner], []), (f, before)
        after = [e for e in events[i:] if e["event"] == "claimed" and e["file"] == f]
        assert [(e["supervisor"], e["attempt"]) for e in after] == [(b_owner, 1)], (f, after)  # at no cost
    for f in slow:
        assert claimed_by[f] in ([a_owner], [b_owner], [a_owner, b_owner]), (f, claimed_by[f])
        if b_owner in claimed_by[f]:  # b stopped cleanly: it journaled all it did
            assert done_by[f] == [b_owner], (f, done_by[f])
        else:  # a's: processed before it died, its line lost only if the SIGKILL fell between move and journal
            assert done_by[f] in ([a_owner], []) and f not in recovered, (f, done_by[f])
    assert {e["attempt"] for e in events if e["event"] == "claimed"} == {1}
    assert sorted(os.listdir(watch / "output")) == sorted([*everything, *slow])  # no temp files of a's either


@pytest.mark.slow
def test_chaos_random_sigkills_of_workers_and_supervisors(tmp_path: Path, daemons) -> None:
    """2 supervisors, 2,000 files, SIGKILLs every fraction of a second, restarts. Short
    in the suite; FOLDERMILL_CHAOS_SECONDS=300 makes it longer."""
    seconds = float(os.environ.get("FOLDERMILL_CHAOS_SECONDS", "25"))
    files = int(os.environ.get("FOLDERMILL_CHAOS_FILES", "2000"))
    config = shipped_config(tmp_path, workers=1, max_attempts=1000, settle=0.1)
    # Each file costs its worker ~4 ms more, so that the run lasts long enough for chaos.
    (tmp_path / "dawdle.py").write_text(textwrap.dedent("""
        import threading

        class Dawdle:
            emits = ["end"]

            def process(self, lines):
                for line in lines:
                    yield "end", line

            def finish(self):
                threading.Event().wait(0.004)
                return ()
    """))
    triage = "routes = { errors = 'ERROR|FATAL|CRITICAL' }\ndefault = "
    config.write_text(config.read_text().replace(triage + '"end"', triage + '"dawdle"').replace(
        'output = "errors"\nnext = "end"', 'output = "errors"\nnext = "dawdle"')
        + '\n[pipelines.logs.nodes.dawdle]\nprocessor = "dawdle:Dawdle"\n')
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    names = [f"c{i:05d}.log" for i in range(files)]
    for i, name in enumerate(names):
        drop(watch, name, log_content(i))
    rng = random.Random(int(os.environ.get("FOLDERMILL_CHAOS_SEED", "7")))
    running: list[Daemon] = [start(daemons, config, name=f"s{k}") for k in range(2)]
    kills = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(folder(watch, "processed")) < files:
        pace(rng.uniform(0.1, 0.4))
        victim = rng.choice(running)
        workers = victim.workers()
        if workers and rng.random() < 0.6:
            with contextlib.suppress(ProcessLookupError):  # it may have died since we listed it
                os.kill(rng.choice(workers).pid, signal.SIGKILL)
            kills["worker"] += 1
            continue
        children = [c.pid for c in victim.children()]
        victim.kill()
        kills["supervisor"] += 1
        wait_for(lambda dead=children: not alive(dead), 10, "a killed supervisor's children to die with it")
        running.remove(victim)
        running.append(start(daemons, config, name=f"s{sum(kills.values())}"))
    wait_for(lambda: len(folder(watch, "processed")) == files, 180, "every file processed after the chaos")
    for d in running:
        assert d.stop() == 0
    assert folder(watch, "processed") == names
    assert folder(watch, "unprocessed") == [] and folder(watch, "underprocess") == [] and folder(watch, "failed") == []
    outputs = sorted(n for n in os.listdir(watch / "output"))
    assert not [n for n in outputs if n.startswith(".")], "temporary files left behind"
    assert len(outputs) == 2 * files  # one main and one .errors output per file, none twice
    for i, name in enumerate(names):
        if i < 100 or i % 37 == 0:  # a sample: computing every expected output is slow
            want, errors = expected_output(config, log_content(i))
            assert (watch / "output" / name).read_text() == want, name
            assert (watch / "output" / f"{name}.errors").read_text() == errors, name
    assert kills["supervisor"] >= 3 and kills["worker"] >= 3, kills
