"""The dashboard app: every endpoint and refusal through the Flask test client, then a
real supervisor serving it on a real port while files flow and a worker is killed."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import (
    BASE_CONFIG,
    behave_config,
    dashboard_url,
    drop,
    folder,
    http_json,
    journal,
    metric_value,
    start,
    wait_for,
    write_config,
)
from web import create_app
from workers.config import load_config
from workers.messages import Command

SNAPSHOT: dict[str, Any] = {
    "time": 0.0, "owner": "host:1", "loop_tick": 0.0, "intake_paused": False, "in_flight": 1,
    "folders": {"unprocessed": 3, "underprocess": 1, "processed": 10, "failed": 1},
    "oldest_unprocessed_age_s": 4.5,
    "totals_since_start": {"files_processed": 10, "lines_processed": 200, "files_failed": 1},
    "totals_since_journal_began": {"files_processed": 110, "lines_processed": 2200, "files_failed": 2},
    "throughput": {"1m": {"files_per_s": 1.5, "lines_per_s": 30.0}},
    "history": [[100, 2, 40]],
    "workers": [{"slot": 0, "pid": 42, "alive": True, "state": "busy", "file": "<img src=x onerror=alert(1)>.log",
                 "progress_percent": 50.0, "lines_done": 10, "rss": 1000, "cpu_percent": 5.0, "files_done": 9,
                 "restarts": 1, "uptime_s": 3.0}],
    "restarts": {"crashed": 1}, "attempts_failed": {"crash": 1, "input": 1},
    "nodes": {"start": {"lines_in": 200, "lines_out": 200, "errors": 0, "seconds": 0.01, "mean_us_per_line": 50.0}},
    "histogram": {"buckets": [0.1, 1.0], "counts": [8, 2, 0], "sum": 1.5},
    "recent_files": [{"time": 1.0, "file": "a.log", "lines": 20, "seconds": 0.01, "outcome": "processed",
                      "worker": 42}],
    "recent_errors": [{"time": 2.0, "file": "b.log", "attempt": 1, "node": "start", "line": 3, "message": "boom",
                       "cause": "error"}],
    "routes": [{"file": "a.log", "line": 1, "route": ["start", "end"]}], "tracing": True,
    "graph": ["start -> upper -> end"],
}


@pytest.fixture
def app_setup(tmp_path: Path):
    def build(token: str = "", snapshot: dict[str, Any] | None = None):
        text = BASE_CONFIG + (f'\n[web]\ntoken = "{token}"\n' if token else "")
        config = load_config(write_config(tmp_path, text.replace("[web]\nport = 0\n", "")))
        (tmp_path / "watch_dir" / "failed").mkdir(parents=True, exist_ok=True)
        snap = dict(SNAPSHOT if snapshot is None else snapshot)
        snap.update(time=time.time(), loop_tick=time.time())
        actions: list[tuple] = []
        app = create_app({"snapshot": snap}, config, actions.append)
        return app.test_client(), actions, tmp_path / "watch_dir" / "failed"
    return build


def test_json_endpoints_serve_the_snapshot(app_setup) -> None:
    client, _, _ = app_setup()
    stats = client.get("/stats").get_json()
    assert stats["folders"]["processed"] == 10 and stats["oldest_unprocessed_age_s"] == 4.5
    assert stats["totals_since_journal_began"]["files_processed"] == 110
    assert stats["throughput"]["1m"]["files_per_s"] == 1.5
    assert stats["workers"][0]["progress_percent"] == 50.0 and stats["nodes"]["start"]["mean_us_per_line"] == 50.0
    trace = client.get("/trace").get_json()
    assert trace["current"][0]["file"].startswith("<img") and trace["recent"][0]["file"] == "a.log"
    assert trace["routes"][0]["route"] == ["start", "end"]
    assert client.get("/errors").get_json()["errors"][0]["message"] == "boom"
    assert client.get("/health").status_code == 200


def test_health_is_503_with_a_reason(app_setup) -> None:
    client, _, _ = app_setup(snapshot={**SNAPSHOT, "workers": []})
    response = client.get("/health")
    assert response.status_code == 503 and "no worker is alive" in response.get_json()["problems"]
    backoff = [{"slot": 0, "alive": False, "state": "backoff"}]  # a crash loop: an outage
    client, _, _ = app_setup(snapshot={**SNAPSHOT, "workers": backoff})
    assert client.get("/health").status_code == 503
    recycled = [{"slot": 0, "alive": False, "state": "starting"}]  # between two workers: none
    client, _, _ = app_setup(snapshot={**SNAPSHOT, "workers": recycled})
    assert client.get("/health").status_code == 200
    client, _, _ = app_setup(snapshot={})
    assert client.get("/health").status_code == 503


def test_metrics_parse_and_carry_every_family(app_setup) -> None:
    client, _, _ = app_setup()
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    # One charset, as prometheus_client names it (Flask's mimetype= would append a second).
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert response.headers["Content-Type"].count("charset") == 1
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    for name in ("foldermill_files_processed", "foldermill_files_failed", "foldermill_file_attempts_failed",
                 "foldermill_lines_processed", "foldermill_node_lines", "foldermill_node_errors",
                 "foldermill_worker_restarts", "foldermill_queue_files", "foldermill_oldest_unprocessed_age_seconds",
                 "foldermill_workers", "foldermill_worker_rss_bytes", "foldermill_file_processing_seconds"):
        assert name in families, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("foldermill_files_processed_total", ())] == 10
    assert samples[("foldermill_file_processing_seconds_bucket", (("le", "+Inf"),))] == 10
    assert samples[("foldermill_file_processing_seconds_bucket", (("le", "0.1"),))] == 8
    assert not any("file" in dict(labels) for _, labels in samples)  # no file name as a label


def test_the_page_and_its_assets_are_served_locally(app_setup) -> None:
    client, _, _ = app_setup()
    page = client.get("/").get_data(as_text=True)
    assert '<script src="/static/app.js">' in page and "http" not in page.replace("http-equiv", "")
    for asset in ("app.js", "console.js"):
        script = client.get(f"/static/{asset}").get_data(as_text=True)
        assert "textContent" in script and "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert client.get("/static/style.css").status_code == 200


def test_actions_from_loopback_without_a_token(app_setup) -> None:
    client, actions, failed = app_setup()
    (failed / "bad.log").write_text("x")
    (failed / "bad.log.reason").write_text("why")
    assert client.post("/failed/bad.log/retry").status_code == 202
    assert client.post("/intake/pause").status_code == 202
    assert client.post("/intake/resume").status_code == 202
    assert actions == [Command("retry", "bad.log"), Command("pause"), Command("resume")]
    other = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.post("/intake/pause", environ_base=other).status_code == 403
    assert client.post("/failed/bad.log/retry", environ_base=other).status_code == 403
    assert len(actions) == 3


def test_actions_with_a_token(app_setup) -> None:
    client, actions, failed = app_setup(token="s3cret")
    (failed / "bad.log").write_text("x")
    assert client.post("/intake/pause").status_code == 401
    assert client.post("/intake/pause", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/intake/pause", headers={"Authorization": "s3cret"}).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/intake/pause", headers=good, environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 202
    assert client.post("/failed/bad.log/retry", headers=good).status_code == 202
    assert actions == [Command("pause"), Command("retry", "bad.log")]


@pytest.mark.parametrize("path, status", [
    ("/failed/../retry", 400), ("/failed/..%2Fconfig.toml/retry", 400), ("/failed/%2e%2e/retry", 400),
    ("/failed/.hidden/retry", 400), ("/failed/nope.log/retry", 404), ("/failed/bad.log.reason/retry", 400),
    ("/failed/a%5Cb/retry", 404),
])
def test_retry_refuses_anything_but_a_plain_name_in_failed(app_setup, path: str, status: int) -> None:
    client, actions, failed = app_setup()
    (failed / "bad.log").write_text("x")
    (failed / "bad.log.reason").write_text("why")
    assert client.post(path).status_code == status
    assert actions == []


def test_wrong_methods_are_refused(app_setup) -> None:
    client, actions, _ = app_setup()
    assert client.get("/intake/pause").status_code == 405
    assert client.get("/failed/x/retry").status_code == 405
    assert client.post("/stats").status_code == 405
    assert actions == []


# -- a real port ---------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def counters(url: str) -> dict[tuple, float]:
    _, text = get(url + "metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) if f.type == "counter" for s in f.samples}


def test_served_on_a_real_port_while_files_flow_and_a_worker_dies(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    wait_for(lambda: get(url + "health")[0] == 200, 20, "/health to answer 200")
    first = json.loads(get(url + "stats")[1])
    for i in range(30):
        drop(watch, f"f{i}.log", f"line {i}\n")
    wait_for(lambda: json.loads(get(url + "stats")[1])["folders"].get("processed") == 30, 30,
             "/stats to count 30 processed files")
    after = json.loads(get(url + "stats")[1])
    assert after["totals_since_start"]["files_processed"] - first["totals_since_start"].get("files_processed", 0) == 30
    before_kill = counters(url)
    pid_file = tmp_path / "flags" / "busy.pid"
    drop(watch, "busy.log", "PID busy.pid\nSLEEP 5\n")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20, "the worker to take busy.log"))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: counters(url).get(("foldermill_worker_restarts_total", (("cause", "crashed"),)), 0) >= 1,
             20, "the restart to show in /metrics")
    after_kill = counters(url)
    for key, value in before_kill.items():
        assert after_kill.get(key, 0) >= value, key  # counters never go backwards
    status, page = get(url)
    assert status == 200 and "foldermill" in page
    assert folder(watch, "failed") == []


def post(url: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_errors_survive_a_restart_and_a_dead_dashboard_comes_back(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    assert "max_attempts = 2" in config.read_text()
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    broken = tmp_path / "flags" / "broken"
    broken.touch()
    # Fails while the flag is set (two attempts: failed); once it is cleared the ONCE line
    # kills one attempt more: only fresh attempts get it processed.
    drop(watch, "flaky.log", "FAILIF broken\nONCE flaky\nfine\n")
    wait_for(lambda: folder(watch, "failed") == ["flaky.log"], 20, "flaky.log in failed/")
    assert d.stop() == 0
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    errors = wait_for(lambda: json.loads(get(url + "errors")[1])["errors"], 20, "/errors after the restart")
    assert errors[0]["file"] == "flaky.log" and "flag broken is set" in errors[0]["message"]
    # The retry action, end to end: the supervisor moves it back and takes it again, with
    # fresh attempts (it had spent both of its two).
    broken.unlink()
    assert post(url + "failed/flaky.log/retry") == (202, {"accepted": True, "action": "retry", "file": "flaky.log"})
    wait_for(lambda: folder(watch, "processed") == ["flaky.log"], 20, "flaky.log retried from the dashboard")
    events = wait_for(lambda: (es := [e for e in journal(watch) if e["file"] == "flaky.log"])[-1]["event"]
                      == "processed" and es, 10, "the journal line that follows the move to processed/")
    asked = [e["event"] for e in events].index("retry-requested")
    assert [(e["event"], e.get("attempt")) for e in events[:asked] if e["event"] in ("retried", "failed")] \
        == [("retried", 1), ("failed", 2)]
    after = [(e["event"], e.get("attempt")) for e in events[asked:]]
    assert after[:2] == [("retry-requested", None), ("claimed", 1)]
    assert [x for x in after if x[0] in ("retried", "failed", "processed")] == [("retried", 1), ("processed", None)]
    assert (watch / "output" / "flaky.log").read_text() == "FAILIF BROKEN\nONCE FLAKY\nFINE\n"
    web = wait_for(lambda: [c for c in d.children() if c.name() == "fm-web"], 10, "the dashboard process")
    web[0].kill()
    wait_for(lambda: "dashboard process died" in d.log(), 20, "the supervisor to notice")
    wait_for(lambda: _status(url + "health") == 200, 20, "the dashboard to answer again")


def test_pause_and_resume_intake_from_the_dashboard(tmp_path: Path, daemons) -> None:
    config = write_config(tmp_path)
    assert "poll_interval = 0.2" in config.read_text()
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    wait_for(lambda: get(url + "health")[0] == 200, 20, "/health to answer 200")
    assert post(url + "intake/pause") == (202, {"accepted": True, "intake": "paused"})
    wait_for(lambda: json.loads(get(url + "stats")[1])["intake_paused"], 10, "/stats to show the intake paused")
    drop(watch, "held.log", "held\n")
    dropped_at = time.time()
    left_early = []

    def loop_ran_on() -> bool:
        """The file stays while the loop publishes snapshots for 5 poll intervals."""
        s = json.loads(get(url + "stats")[1])
        if folder(watch, "unprocessed") != ["held.log"]:
            left_early.append((folder(watch, "unprocessed"), folder(watch, "underprocess")))
        return bool(left_early) or (s["time"] >= dropped_at + 1.0 and s["folders"].get("unprocessed") == 1
                                    and s["intake_paused"])

    wait_for(loop_ran_on, 20, "the loop to run on for 1 s while paused")
    assert not left_early, "claimed while the intake was paused"
    assert not [e for e in journal(watch) if e["file"] == "held.log"]
    assert "intake paused from the dashboard" in d.log()
    assert post(url + "intake/resume") == (202, {"accepted": True, "intake": "running"})
    wait_for(lambda: folder(watch, "processed") == ["held.log"], 20, "held.log processed after the resume")
    assert (watch / "output" / "held.log").read_text() == "HELD\n"
    wait_for(lambda: json.loads(get(url + "stats")[1])["intake_paused"] is False, 10, "/stats to show it running")
    assert d.stop() == 0


def _status(url: str) -> int:
    try:
        return get(url)[0]
    except OSError:
        return 0


def test_a_port_in_use_is_a_clear_start_up_error(tmp_path: Path, daemons) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, BASE_CONFIG.replace("[web]\nport = 0", f"[web]\nport = {port}"))
        d = start(daemons, config, "--once")
        assert d.wait(30) == 3
        assert f"the dashboard cannot listen on 127.0.0.1:{port}" in d.log()


def test_a_stuck_loop_shows_in_metrics_while_scrapes_succeed(tmp_path: Path, daemons) -> None:
    """The dashboard's process answers from the last published state: a supervisor that
    stops stepping (SIGSTOP here) leaves /metrics answering, and only the loop's last-step
    time, standing still, says so (deploy/alerts.yml, FoldermillStalled)."""
    d = start(daemons, behave_config(tmp_path))
    url = dashboard_url(d)
    name = "foldermill_loop_last_step_timestamp_seconds"
    wait_for(lambda: (metric_value(url, name) or 0) > time.time() - 5, 20, f"{name} to be within 5 s of now")
    os.kill(d.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: http_json(url + "health")[0] == 503, 20, "/health to say the loop has not ticked")
        stopped_at = metric_value(url, name)
        assert stopped_at is not None and time.time() - stopped_at >= 5, stopped_at
        assert metric_value(url, "foldermill_workers", state="idle") is not None  # the rest still answers
    finally:
        os.kill(d.pid, signal.SIGCONT)
    wait_for(lambda: (metric_value(url, name) or 0) > time.time() - 5, 20, f"{name} to move again after SIGCONT")
    assert "the supervisor loop has not ticked" not in json.dumps(http_json(url + "health")[1])
