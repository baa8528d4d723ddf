"""The console's actions and reads against a real supervisor on a real port, and the
same rules from the CLI: discard (never deleted, journalled), replay (new names by the
collision rule, the earlier outputs kept, ``replayed`` with both names, not a duplicate
of itself under dedupe), retry all, search, timelines, output heads, raw-byte names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.daemon import behave_config, drop, folder, journal, start, wait_for

ROOT = Path(__file__).resolve().parents[1]
RAW = b"caf\xe9 \x01.log".decode("utf-8", "surrogateescape")  # not UTF-8, and a control character


def call(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            kind = response.headers.get_content_type()
            return response.status, json.loads(raw) if kind == "application/json" else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "supervisor.py"), "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def dashboard(d: Any) -> str:
    return re.search(r"dashboard at (http://\S+)", d.log()).group(1)


def test_discard_retry_all_search_and_timeline_on_a_real_port(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    (tmp_path / "flags" / "broken").touch()
    d = start(daemons, config)
    url = dashboard(d)
    for name in ("a.log", "b.log", "c.log", RAW):
        drop(watch, name, "FAILIF broken\n")
    wait_for(lambda: len(folder(watch, "failed")) == 4, 30, "four files in failed/")
    status, page = call(url + "failed?limit=2")
    assert status == 200 and page["total"] == 4 and len(page["files"]) == 2
    assert all("flag broken is set" in f["reason"] and f["attempts"] == 2 for f in page["files"])
    raw = next(f for f in call(url + "failed")[1]["files"] if f["name"] == "caf\\xe9 \\x01.log")
    # Discard one by its exact bytes in the URL: it moves to discarded/, reason beside it.
    assert call(url + f"failed/{raw['ref']}/discard", "POST")[0] == 202
    wait_for(lambda: os.path.lexists(watch / "discarded" / RAW), 20, "the raw-named file in discarded/")
    assert (watch / "discarded" / (RAW + ".reason")).exists()
    wait_for(lambda: any(e["event"] == "discarded" for e in journal(watch)), 10, "the discard journalled")
    assert next(e for e in journal(watch) if e["event"] == "discarded")["to"] == "discarded/caf\\xe9 \\x01.log"
    # The CLI discards by the same rule.
    result = cli(config, "discard", "c.log")
    assert result.returncode == 0 and "c.log -> discarded/c.log" in result.stdout, result.stderr
    assert sorted(os.listdir(watch / "discarded")) == sorted(["c.log", "c.log.reason", RAW, RAW + ".reason"])
    assert [e["by"] for e in journal(watch) if e["event"] == "discarded"] == ["dashboard", "cli"]
    # Retry all: refused if the count changed, done when it matches.
    assert call(url + "failed/retry-all", "POST", {"count": 5})[0] == 409
    assert folder(watch, "failed") == ["a.log", "b.log"]
    (tmp_path / "flags" / "broken").unlink()
    assert call(url + "failed/retry-all", "POST", {"count": 2}) == (202, {"accepted": True, "action": "retry-all",
                                                                         "count": 2})
    wait_for(lambda: {"a.log", "b.log"} <= set(folder(watch, "processed")), 30, "both retried and processed")
    # Search, then the timeline with the outputs and their heads.
    found = wait_for(lambda: call(url + "files?q=a.lo")[1]["files"], 10, "a.log found by search")
    assert found[0]["name"] == "a.log" and found[0]["status"] == "processed"
    t = wait_for(lambda: (t := call(url + "files/a.log")[1]) and t["entries"][-1]["event"] == "processed" and t,
                 10, "a.log's timeline to end in processed")
    events = [e["event"] for e in t["entries"]]
    assert events[:3] == ["claimed", "retried", "failed"] and "retry-requested" in events
    assert t["entries"][1]["worker"] > 0 and t["entries"][1]["seconds"] >= 0  # each attempt: worker, duration
    assert t["outputs"] == [{"name": "a.log", "ref": "a.log", "bytes": len("FAILIF BROKEN\n")}]
    assert call(url + "files/a.log/outputs/a.log") == (200, "FAILIF BROKEN\n")
    status, audit = call(url + "audit")
    actions = [(e["action"], e["outcome"].split(":")[0]) for e in audit["entries"]]
    assert actions[:3] == [("retry-all", "accepted"), ("retry-all", "refused"), ("discard", "accepted")]


def test_replay_gives_new_names_keeps_the_old_outputs_and_is_no_duplicate(tmp_path: Path, daemons) -> None:
    config = behave_config(tmp_path)
    text = config.read_text().replace("[watch]\n", '[watch]\ndedupe = "content"\n')
    config.write_text(text)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    url = dashboard(d)
    drop(watch, "r.log", "one\n")
    drop(watch, RAW, "two\n")
    wait_for(lambda: len(folder(watch, "processed")) == 2, 30, "both processed")
    assert call(url + "processed/r.log/replay", "POST")[0] == 202
    wait_for(lambda: folder(watch, "processed") == sorted(["r-1.log", RAW]), 30, "r.log processed again as r-1.log")
    assert (watch / "output" / "r.log").read_text() == "ONE\n"  # the earlier output stays
    assert (watch / "output" / "r-1.log").read_text() == "ONE\n"  # processed again: not a duplicate
    replayed = wait_for(lambda: [e for e in journal(watch) if e["event"] == "replayed"], 10, "replayed journalled")
    assert replayed[0]["file"] == "r.log" and replayed[0]["final"] == "r-1.log" and replayed[0]["previous"] == "r.log"
    # The CLI replays a raw-byte name by the same rule.
    result = cli(config, "replay", "caf\\xe9 \\x01.log")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: os.path.lexists(watch / "output" / b"caf\xe9 \x01-1.log".decode("utf-8", "surrogateescape")),
             30, "the raw-named file's new output")
    assert call(url + "processed/missing.log/replay", "POST")[0] == 404
    assert d.stop() == 0


def test_a_replay_stays_a_replay_across_a_supervisor_sigkill(tmp_path: Path, daemons) -> None:
    """Claimed as a replay, then its supervisor dies: the next supervisor's claim still
    knows it for one (never a duplicate of itself), and "replayed" is journalled once."""
    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace("[watch]\n", '[watch]\ndedupe = "content"\n'))
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    drop(watch, "slow.log", "PID slow.pid\nSLEEP 3\n")
    wait_for(lambda: folder(watch, "processed") == ["slow.log"], 30, "slow.log processed")
    pid_file = tmp_path / "flags" / "slow.pid"
    pid_file.unlink()
    assert cli(config, "replay", "slow.log").returncode == 0
    wait_for(lambda: pid_file.exists(), 30, "the replay to reach a worker")
    d.kill()
    d = start(daemons, config, name="second")
    wait_for(lambda: folder(watch, "processed") == ["slow-1.log"], 40, "the replay processed by the next supervisor")
    assert (watch / "output" / "slow-1.log").read_text() == "PID SLOW.PID\nSLEEP 3\n"
    events = [e for e in journal(watch) if e["file"] == "slow.log"]
    assert [e["event"] for e in events].count("replayed") == 1
    assert "duplicate" not in [e["event"] for e in events]
