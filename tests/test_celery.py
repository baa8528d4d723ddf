"""The Celery backend with a real redis-server and two real Celery worker nodes."""

from __future__ import annotations

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

from tests.components import require
from tests.daemon import ROOT, alive, behave_config, drop, folder, journal, pace, start, wait_for
from tests.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require("redis-server"), tmp_path)
    server.start()
    yield server
    server.stop()


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
    return config


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


def test_lifecycle_with_two_celery_nodes(tmp_path: Path, daemons, redis_server, celery_nodes) -> None:
    config = celery_config(tmp_path, redis_server)
    for name in ("alpha", "beta"):
        start_node(celery_nodes, config, name)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    names = [f"c{i:02d}.log" for i in range(30)]
    for name in names:
        drop(watch, name, f"{name}\nSLEEP 0.05\n")
    wait_for(lambda: folder(watch, "processed") == names, 60, "every file processed by the celery nodes")
    for name in names:
        assert (watch / "output" / name).read_text() == f"{name.upper()}\nSLEEP 0.05\n"
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    stats = get_json(url + "stats")[1]
    assert stats["backend"] == "celery" and stats["broker"]["ok"]
    wait_for(lambda: get_json(url + "stats")[1]["broker"]["queue_depth"] == 0, 10, "an empty broker queue")
    with urllib.request.urlopen(url + "metrics", timeout=5) as response:
        assert "foldermill_broker_queue_jobs 0.0" in response.read().decode()
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
    wait_for(lambda: get_json(url + "health")[0] == 503, 20, "/health to report the outage")
    assert "broker is unreachable" in " ".join(get_json(url + "health")[1]["problems"])
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
