"""The Celery backend with a real redis-server and two real Celery worker nodes."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import unavailable
from tests.daemon import ROOT, alive, behave_config, drop, folder, journal, pace, start, wait_for
from tests.redis_server import RedisServer


@pytest.fixture
def celery_nodes() -> Iterator[list[subprocess.Popen]]:
    nodes: list[subprocess.Popen] = []
    yield nodes
    for node in nodes:
        if node.poll() is None:
            node.terminate()
    for node in nodes:
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def journalled(watch: Path, name: str) -> list[str]:
    """The file's journal events once its "processed" line is there: it is written at
    the end of the loop step that moved the file, a moment after the move."""
    return wait_for(lambda: (events := [e["event"] for e in journal(watch) if e["file"] == name])
                    and events[-1] in ("processed", "failed") and events, 10, f"the journal line after {name}'s move")


def celery_config(tmp_path: Path, redis: RedisServer) -> Path:
    config = behave_config(tmp_path, f"""
        [celery]
        broker_url = "{redis.url}"
        queue = "fm-test"
        visibility_timeout = 90
        prefetch_jobs = 4
    """)
    config.write_text(config.read_text().replace("max_attempts = 2", "max_attempts = 3\nbackend = \"celery\"\n"
                                                 "file_timeout = 10\nbatch_files = 4"))
    behave = tmp_path / "behave.py"
    behave.write_text(behave.read_text().replace('            if word == "PID":', MARK))
    return config


MARK = '''            if word == "MARK":  # one line per execution of the file
                with open(self.flags / arg, "a") as f:
                    f.write(f"{os.getpid()}\\n")
            if word == "PID":'''


def executions(tmp_path: Path, mark: str) -> int:
    """How many times a file that says ``MARK <mark>`` was run, by any execution."""
    path = tmp_path / "flags" / mark
    return len(path.read_text().splitlines()) if path.exists() else 0


def queued_payloads(redis: RedisServer, queue: str = "fm-test") -> list[dict]:
    """The job payloads waiting in the broker's queue (Celery protocol 2 messages)."""
    import redis as redis_py

    payloads = []
    for raw in redis_py.Redis.from_url(redis.url).lrange(queue, 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        payloads.append(args[0])
    return payloads


def start_node(nodes: list[subprocess.Popen], config: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "FOLDERMILL_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    log = open(config.parent / f"celery-{name}.log", "w")  # noqa: SIM115 - lives as long as the node
    node = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-c", "1",
                             "-n", f"{name}@%h", "-Q", "fm-test", "--without-gossip", "--without-mingle",
                             "--without-heartbeat", "--loglevel", "INFO"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    nodes.append(node)
    wait_for(lambda: "ready." in (config.parent / f"celery-{name}.log").read_text(), 60, f"celery node {name}")
    return node


def staged_files(watch: Path) -> list[str]:
    return sorted(n for n in os.listdir(watch / "output") if n.startswith("."))


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(url: str, name: str) -> float | None:
    with urllib.request.urlopen(url + "metrics", timeout=5) as response:
        found = re.search(rf"^{name} (\S+)$", response.read().decode(), re.M)
    return float(found.group(1)) if found else None


def queue_depth(url: str) -> int | None:
    """The broker's queue depth in /stats (None until the first snapshot with a broker)."""
    return (get_json(url + "stats")[1].get("broker") or {}).get("queue_depth")


def test_lifecycle_with_two_celery_nodes(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    config = celery_config(tmp_path, redis_server)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    names = [f"c{i:02d}.log" for i in range(30)]
    for name in names:
        drop(watch, name, f"{name}\nSLEEP 0.05\n")
    # No node yet: the jobs wait on the broker, prefetch_jobs (4) of them.
    wait_for(lambda: queue_depth(url) == 4, 30, "4 jobs waiting on the broker")
    assert len(queued_payloads(redis_server)) == 4
    assert metric(url, "foldermill_broker_queue_jobs") == 4
    for name in ("alpha", "beta"):
        start_node(celery_nodes, config, name)
    wait_for(lambda: folder(watch, "processed") == names, 60, "every file processed by the celery nodes")
    for name in names:
        assert (watch / "output" / name).read_text() == f"{name.upper()}\nSLEEP 0.05\n"
    stats = get_json(url + "stats")[1]
    assert stats["backend"] == "celery" and stats["broker"]["ok"]
    wait_for(lambda: queue_depth(url) == 0, 10, "an empty broker queue")
    assert metric(url, "foldermill_broker_queue_jobs") == 0
    hosts = wait_for(lambda: {w["hostname"] for w in get_json(url + "stats")[1]["workers"]}, 20,
                     "the remote workers in /stats")
    assert {h.split("@")[0] for h in hosts} == {"alpha", "beta"}
    assert get_json(url + "health")[0] == 200
    workers = {e["worker"] for e in journal(watch) if e["event"] == "processed"}
    assert len(workers) == 2  # both nodes took part
    assert d.stop() == 0


def test_sigkill_of_a_celery_worker_costs_one_attempt(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    config = celery_config(tmp_path, redis_server)
    for name in ("alpha", "beta"):
        start_node(celery_nodes, config, name)
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    drop(watch, "busy.log", "PID busy.pid\nSLEEP 3\nafter\n")
    pid_file = tmp_path / "flags" / "busy.pid"
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "a celery worker on busy.log"))
    pid_file.unlink()
    os.kill(pid, signal.SIGKILL)
    drop(watch, "other.log", "fine\n")
    wait_for(lambda: folder(watch, "processed") == ["busy.log", "other.log"], 60, "both files processed")
    retried = [e for e in journal(watch) if e["event"] == "retried"]
    assert len(retried) == 1 and retried[0]["file"] == "busy.log" and "celery worker died" in retried[0]["reason"]
    assert (watch / "output" / "busy.log").read_text() == "PID BUSY.PID\nSLEEP 3\nAFTER\n"


def test_a_broker_outage_is_reported_and_nothing_is_lost(tmp_path: Path, daemons, redis_server,
                                                         celery_nodes) -> None:
    config = celery_config(tmp_path, redis_server)
    for name in ("alpha", "beta"):
        start_node(celery_nodes, config, name)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    names = [f"o{i:02d}.log" for i in range(20)]
    for name in names[:10]:
        drop(watch, name, f"{name}\nSLEEP 0.2\n")
    wait_for(lambda: len(folder(watch, "processed")) >= 2, 60, "some files processed")
    redis_server.stop()
    # The workers' heartbeats (read through the broker) may go quiet a moment before
    # the broker's own state is published: wait for the broker's problem itself.
    def broker_reported() -> bool:
        code, body = get_json(url + "health")
        return code == 503 and "broker is unreachable" in " ".join(body["problems"])

    wait_for(broker_reported, 20, "/health to report the broker's outage")
    for name in names[10:]:
        drop(watch, name, f"{name}\nSLEEP 0.05\n")
    redis_server.start()
    wait_for(lambda: folder(watch, "processed") == names, 120, "every file processed after the outage")
    assert "the broker is unreachable" in d.log() and "the broker is back" in d.log()
    assert folder(watch, "underprocess") == [] and folder(watch, "failed") == []


def test_sigkill_of_the_supervisor_with_celery(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    config = celery_config(tmp_path, redis_server)
    for name in ("alpha", "beta"):
        start_node(celery_nodes, config, name)
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    names = [f"k{i:03d}.log" for i in range(60)]
    for name in names:
        drop(watch, name, f"{name}\nSLEEP 0.05\n")
    d = start(daemons, config)
    wait_for(lambda: len(folder(watch, "processed")) >= 8, 60, "some files processed")
    children = [c.pid for c in d.children()]
    d.kill()
    wait_for(lambda: not alive(children), 10, "the supervisor's children to die with it")
    d2 = start(daemons, config, "--once")
    assert d2.wait(120) == 0, d2.log()
    assert folder(watch, "processed") == names
    assert folder(watch, "underprocess") == [] and folder(watch, "failed") == []
    for name in names:
        assert (watch / "output" / name).read_text() == f"{name.upper()}\nSLEEP 0.05\n"
    # Jobs the dead supervisor sent may finish after it died: nobody commits them, and a
    # live supervisor removes what they staged once the dead one's keepalive expired.
    d3 = start(daemons, config, name="sup3")
    wait_for(lambda: not staged_files(watch), 60, "the dead supervisor's late results to be reaped")
    assert d3.stop() == 0


@pytest.mark.slow
def test_chaos_with_celery(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    """Celery nodes and the supervisor SIGKILLed at random and restarted; every file ends
    processed once with the output `run` gives."""
    config = celery_config(tmp_path, redis_server)
    config.write_text(config.read_text().replace("max_attempts = 3", "max_attempts = 1000"))
    node_names = ["alpha", "beta"]
    nodes = {n: start_node(celery_nodes, config, n) for n in node_names}
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    names = [f"z{i:04d}.log" for i in range(400)]
    for name in names:
        drop(watch, name, f"{name}\nSLEEP 0.03\n")
    sup = start(daemons, config)
    rng = random.Random(11)
    kills = {"node": 0, "supervisor": 0}
    deadline = time.monotonic() + float(os.environ.get("FOLDERMILL_CHAOS_SECONDS", "20"))
    while time.monotonic() < deadline and len(folder(watch, "processed")) < len(names):
        pace(rng.uniform(0.6, 1.5))
        if rng.random() < 0.5:
            name = rng.choice(node_names)
            nodes[name].kill()
            nodes[name].wait()
            kills["node"] += 1
            nodes[name] = start_node(celery_nodes, config, f"{name}{kills['node']}")
        else:
            children = [c.pid for c in sup.children()]
            sup.kill()
            wait_for(lambda dead=children: not alive(dead), 10, "the supervisor's children to die")
            kills["supervisor"] += 1
            sup = start(daemons, config, name=f"sup{kills['supervisor']}")
    wait_for(lambda: folder(watch, "processed") == names, 180, "every file processed after the chaos")
    assert sup.stop() == 0
    assert folder(watch, "failed") == [] and folder(watch, "underprocess") == []
    for name in names:
        assert (watch / "output" / name).read_text() == f"{name.upper()}\nSLEEP 0.03\n"
    assert kills["node"] + kills["supervisor"] >= 3, kills


def test_file_timeout_on_a_celery_node(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    config = celery_config(tmp_path, redis_server)
    config.write_text(config.read_text().replace("file_timeout = 10", "file_timeout = 1").replace(
        "max_attempts = 3", "max_attempts = 2"))
    start_node(celery_nodes, config, "alpha")
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    drop(watch, "sleepy.log", "SLEEP 30\n")
    drop(watch, "fine.log", "fine\n")
    wait_for(lambda: folder(watch, "failed") == ["sleepy.log"] and folder(watch, "processed") == ["fine.log"], 60,
             "sleepy.log failed after its attempts, fine.log processed")
    assert "took longer than file_timeout = 1s" in (watch / "failed" / "sleepy.log.reason").read_text()
    assert celery_nodes[0].poll() is None  # the node lives on


def test_a_missing_module_is_a_start_up_error(tmp_path: Path, daemons, redis_server, monkeypatch) -> None:
    """kombu's Redis transport imports ``packaging``: without it the supervisor stops at
    start-up (exit 3, naming the package), not "broker unreachable" every second."""
    shadow = tmp_path / "shadow" / "packaging"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ModuleNotFoundError("No module named packaging", name="packaging")\n')
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    config = celery_config(tmp_path, redis_server)
    d = start(daemons, config, "--once")
    assert d.wait(60) == 3, d.log()
    assert "'packaging'" in d.log() and "requirements.txt" in d.log()
    assert "broker is unreachable" not in d.log()


def test_visibility_timeout_must_outlast_a_whole_job(tmp_path: Path, redis_server) -> None:
    """A job carries up to batch_files files: 10 s x 4 + 30 = 70 s; 60 s would hand a
    job that still runs to a second node."""
    config = celery_config(tmp_path, redis_server)
    config.write_text(config.read_text().replace("visibility_timeout = 90", "visibility_timeout = 60"))
    done = subprocess.run([sys.executable, str(ROOT / "supervisor.py"), "-c", str(config), "check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "celery.visibility_timeout" in done.stderr and "70s" in done.stderr


def test_a_copy_of_a_running_job_costs_nothing(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    """A job delivered twice (as Redis does past visibility_timeout, or after a restore)
    while its first execution runs: the copy waits for that execution's heartbeat and
    finds the job done. Nothing is charged, the file runs once, nothing is left staged."""
    import redis as redis_py

    config = celery_config(tmp_path, redis_server)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "slow.log", "MARK slow\nSLEEP 3\nafter\n")
    raw = wait_for(lambda: redis_py.Redis.from_url(redis_server.url).lrange("fm-test", 0, -1), 30, "the job queued")
    assert len(raw) == 1
    redis_py.Redis.from_url(redis_server.url).rpush("fm-test", raw[0])  # the same message again
    for name in ("alpha", "beta"):
        start_node(celery_nodes, config, name)
    wait_for(lambda: folder(watch, "processed") == ["slow.log"], 60, "slow.log processed")
    logs = " ".join((tmp_path / f"celery-{n}.log").read_text() for n in ("alpha", "beta"))
    assert "is running elsewhere" in logs  # the copy did reach the second node
    assert executions(tmp_path, "slow") == 1
    assert journalled(watch, "slow.log") == ["claimed", "processed"]
    assert (watch / "output" / "slow.log").read_text() == "MARK SLOW\nSLEEP 3\nAFTER\n"
    wait_for(lambda: not queued_payloads(redis_server), 10, "both copies taken")
    assert staged_files(watch) == [] and d.alive()


def test_a_late_result_is_never_committed_and_a_missing_staged_file_costs_nothing(
        tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    """A result whose staged output is gone must not kill the supervisor in
    rename_staged: the file goes out again. The late result of the job it replaced is
    never committed, and its staged files go."""
    import redis as redis_py

    config = celery_config(tmp_path, redis_server)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "a.log", "MARK a\nline\n")
    payload = wait_for(lambda: queued_payloads(redis_server), 30, "the job queued")[0]
    file_id, _, final, *_ = payload["items"][0]
    missing = f".fm-{file_id}.feedface0001.0.tmp"
    forged = {"slot": -1, "pid": 1, "seq": payload["seq"], "nodes": {}, "rss_bytes": 0, "items": [
        {"file_id": file_id, "ok": True, "staged": [[missing, final]], "lines_in": 2, "lines_out": 2,
         "bytes_in": 12, "seconds": 0.1, "reason": "", "permanent": False, "error_node": "", "error_line": None,
         "skipped": [], "routes": [], "digest": "", "duplicate_of": ""}]}
    redis_py.Redis.from_url(redis_server.url).rpush(payload["reply"], json.dumps(forged))
    wait_for(lambda: len(queued_payloads(redis_server)) == 2 or not d.alive(), 30, "a.log sent again in a new job")
    assert d.alive(), d.log()
    start_node(celery_nodes, config, "alpha")
    wait_for(lambda: folder(watch, "processed") == ["a.log"], 60, "a.log processed")
    wait_for(lambda: executions(tmp_path, "a") == 2 and not queued_payloads(redis_server), 30, "both jobs run")
    wait_for(lambda: staged_files(watch) == [], 30, "the late execution's staged files removed")
    assert d.alive(), d.log()
    assert journalled(watch, "a.log") == ["claimed", "processed"]
    assert (watch / "output" / "a.log").read_text() == "MARK A\nLINE\n"
    assert d.stop() == 0


def test_a_broker_restart_resends_only_the_jobs_it_lost(tmp_path: Path, daemons, redis_server,
                                                        celery_nodes) -> None:
    """Redis restarts (no persistence) while two jobs run and two wait in its queue: the
    running ones are kept (their results arrive and are committed), only the two it
    forgot go out again. Every file runs exactly once."""
    config = celery_config(tmp_path, redis_server)
    for name in ("alpha", "beta"):
        start_node(celery_nodes, config, name)
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    names = [f"r{i:02d}.log" for i in range(16)]
    for name in names:
        drop(watch, name, f"MARK {name}\nSLEEP 1\n")
    d = start(daemons, config)
    wait_for(lambda: sum(executions(tmp_path, n) for n in names) >= 2, 30, "both nodes running a job")
    assert len(queued_payloads(redis_server)) == 2
    redis_server.restart()
    wait_for(lambda: folder(watch, "processed") == names, 120, "every file processed after the restart")
    assert {n: executions(tmp_path, n) for n in names} == dict.fromkeys(names, 1)
    assert "the broker is back" in d.log() and d.log().count("was lost by the broker") == 2
    assert not [e for e in journal(watch) if e["event"] in ("retried", "failed")]
    wait_for(lambda: staged_files(watch) == [], 30, "no staged file left")
    assert d.stop() == 0


def test_redis_down_when_a_job_finishes_loses_nothing(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    """Redis is away when a node pushes its result: the task waits it out (it does not
    raise, which would drop the message), and the result is committed once Redis is back."""
    config = celery_config(tmp_path, redis_server)
    start_node(celery_nodes, config, "alpha")
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "late.log", "MARK late\nSLEEP 2\nafter\n")
    wait_for(lambda: executions(tmp_path, "late") == 1, 30, "a node on late.log")
    redis_server.stop()
    log = tmp_path / "celery-alpha.log"
    wait_for(lambda: "cannot reach Redis to push the result" in log.read_text(), 60, "the node waiting for Redis")
    redis_server.start()
    wait_for(lambda: folder(watch, "processed") == ["late.log"], 60, "late.log processed")
    assert executions(tmp_path, "late") == 1
    assert journalled(watch, "late.log") == ["claimed", "processed"]
    assert (watch / "output" / "late.log").read_text() == "MARK LATE\nSLEEP 2\nAFTER\n"
    assert d.stop() == 0


def test_a_restart_with_the_same_pid_gets_new_job_keys(tmp_path: Path, redis_server, celery_nodes) -> None:
    """A container's supervisor is pid 1 at every start: its jobs must not be taken for
    the previous run's (which a node would skip as done)."""
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0:
        unavailable("unshare --pid (root) to run the supervisor as pid 1")
    config = celery_config(tmp_path, redis_server)
    start_node(celery_nodes, config, "alpha")
    watch = tmp_path / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True)
    for run in (1, 2):
        names = [f"p{run}-{i}.log" for i in range(3)]
        for name in names:
            drop(watch, name, f"{name}\n")
        log = tmp_path / f"pid1-{run}.log"
        with open(log, "w") as out:
            done = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", sys.executable,
                                   str(ROOT / "supervisor.py"), "-c", str(config), "--once"],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, timeout=60)
        assert done.returncode == 0, log.read_text()
        assert set(names) <= set(folder(watch, "processed")), log.read_text()
    owners = {e["supervisor"] for e in journal(watch) if e["event"] == "processed"}
    assert len(owners) == 1 and next(iter(owners)).endswith(":1")  # the same owner both times


def test_content_dedupe_with_celery(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    """[watch] dedupe = "content" with the Celery backend, as with the local pool: a
    file whose content was processed before is a duplicate (no output, journalled as
    such), and the node skips it without running the pipeline on it; across a restart."""
    config = celery_config(tmp_path, redis_server)
    config.write_text(config.read_text().replace("settle = 0.3", 'settle = 0.3\ndedupe = "content"'))
    start_node(celery_nodes, config, "alpha")
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "first.log", "MARK same\n")
    wait_for(lambda: folder(watch, "processed") == ["first.log"], 60, "first.log processed")
    drop(watch, "second.log", "MARK same\n")
    drop(watch, "other.log", "MARK other\n")
    wait_for(lambda: folder(watch, "processed") == ["first.log", "other.log", "second.log"], 60,
             "the duplicate and the other file")
    assert d.stop() == 0
    d2 = start(daemons, config)
    drop(watch, "third.log", "MARK same\n")
    wait_for(lambda: "third.log" in folder(watch, "processed"), 60, "third.log after a restart")
    assert d2.stop() == 0
    events = {e["file"]: e for e in journal(watch) if e["event"] in ("processed", "duplicate")}
    assert events["first.log"]["event"] == "processed" and events["other.log"]["event"] == "processed"
    for dup in ("second.log", "third.log"):
        assert events[dup]["event"] == "duplicate" and events[dup]["of"] == "first.log"
    assert sorted(os.listdir(watch / "output")) == ["first.log", "other.log"]  # no output for duplicates
    assert executions(tmp_path, "same") == 1  # the node skipped the duplicates by their digest
    assert executions(tmp_path, "other") == 1


def test_sighup_reaches_celery_nodes_through_the_jobs(tmp_path: Path, daemons, redis_server,
                                                      celery_nodes) -> None:
    """A SIGHUP's new pipeline and limits apply on a Celery node that started with the
    old ones: each job says which pipeline version it needs (and carries it), and the
    node reloads it before running the job. Its config.toml is not read again."""
    config = celery_config(tmp_path, redis_server)
    node_config = tmp_path / "node" / "config.toml"  # the node's own copy: it never changes
    node_config.parent.mkdir()
    watch = tmp_path / "watch_dir"
    node_config.write_text(config.read_text().replace('dir = "watch_dir"', f'dir = "{watch}"'))
    (node_config.parent / "behave.py").write_text((tmp_path / "behave.py").read_text())
    start_node(celery_nodes, node_config, "alpha")
    d = start(daemons, config)
    drop(watch, "a.log", "Mixed Case\n")
    wait_for(lambda: folder(watch, "processed") == ["a.log"], 60, "a.log with the first pipeline")
    assert (watch / "output" / "a.log").read_text() == "MIXED CASE\n"
    # New limits: file_timeout 10 -> 1 and a single attempt.
    config.write_text(config.read_text().replace("file_timeout = 10", "file_timeout = 1").replace(
        "max_attempts = 3", "max_attempts = 1"))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.log().count("configuration reloaded") == 1, 10, "the first reload")
    drop(watch, "sleepy.log", "SLEEP 5\n")
    wait_for(lambda: folder(watch, "failed") == ["sleepy.log"], 60, "sleepy.log failed under the new limit")
    assert "took longer than file_timeout = 1s" in (watch / "failed" / "sleepy.log.reason").read_text()
    # A new pipeline: lower-case instead of the node's own upper-casing processor.
    text = config.read_text()
    config.write_text(text[:text.index("[pipeline.nodes.start]")] + '[pipeline.nodes.start]\nprocessor = "lower"\n')
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.log().count("configuration reloaded") == 2, 10, "the second reload")
    drop(watch, "b.log", "Mixed Case\n")
    wait_for(lambda: "b.log" in folder(watch, "processed"), 60, "b.log with the new pipeline")
    assert (watch / "output" / "b.log").read_text() == "mixed case\n"
    assert (node_config.parent / "celery-alpha.log").read_text().count("reloaded from the job") == 2
    # A pipeline the node cannot build (its processor is beside the supervisor's config, not
    # the node's): the file fails with that reason, an attempt each, and reaches failed/
    # rather than being sent again and again.
    (tmp_path / "onlyhere.py").write_text("def tag(lines):\n    for line in lines:\n        yield 'end', line\n")
    config.write_text(text[:text.index("[pipeline.nodes.start]")] +
                      '[pipeline.nodes.start]\nprocessor = "onlyhere:tag"\n')
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.log().count("configuration reloaded") == 3, 10, "the third reload")
    drop(watch, "c.log", "x\n")
    wait_for(lambda: "c.log" in folder(watch, "failed"), 60, "c.log failed: the node cannot build that pipeline")
    assert "cannot load pipeline version" in (watch / "failed" / "c.log.reason").read_text()
    assert celery_nodes[0].poll() is None
    assert d.stop() == 0


def test_a_tree_with_celery_nodes_keeps_relative_paths(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    """With ``recursive = true`` the nodes get and keep relative paths: they read
    ``underprocess/<rel>`` and stage outputs that take ``output/<rel>`` at commit."""
    config = celery_config(tmp_path, redis_server)
    config.write_text(config.read_text().replace("[watch]\n", "[watch]\nrecursive = true\n"))
    watch = tmp_path / "watch_dir"
    start(daemons, config)
    start_node(celery_nodes, config, "alpha")
    names = [f"region-{i % 3}/day-{i % 2}/t{i:02d}.log" for i in range(12)] + ["region-0/t00.log"]
    for name in names:
        path = watch / "stage" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\n")
    for top in sorted({n.split("/")[0] for n in names}):
        os.rename(watch / "stage" / top, watch / "unprocessed" / top)
    for name in names:
        assert journalled(watch, name) == ["claimed", "processed"], name
        assert (watch / "output" / name).read_text() == f"{name.upper()}\n"
        assert (watch / "processed" / name).read_text() == f"{name}\n"
