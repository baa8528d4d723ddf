"""The dashboard's safety rules through the Flask test client: the Host allow-list, the
refusal of cross-origin actions, the token, protect_reads, the headers, the audit log;
and for every refusal, that nothing was handed to the supervisor and nothing moved."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import BASE_CONFIG, write_config
from tests.test_web import SNAPSHOT
from web import create_app
from workers.config import load_config
from workers.messages import Command

OWN = "http://127.0.0.1:8000"
PAGE = {"Host": "127.0.0.1:8000", "Sec-Fetch-Site": "same-origin", "Origin": OWN, "X-Foldermill-Action": "1"}


class Setup:
    def __init__(self, tmp_path: Path, web: str = "") -> None:
        text = BASE_CONFIG.replace("[web]\nport = 0\n", "[web]\nport = 8000\n" + web)
        self.config = load_config(write_config(tmp_path, text))
        self.watch = tmp_path / "watch_dir"
        for folder in ("failed", "processed", "output", "unprocessed"):
            (self.watch / folder).mkdir(parents=True, exist_ok=True)
        (self.watch / "failed" / "bad.log").write_text("x\n")
        (self.watch / "failed" / "bad.log.reason").write_text("boom (attempt 2 of 2; giving up)\n")
        self.actions: list[tuple] = []
        snap = dict(SNAPSHOT, time=time.time(), loop_tick=time.time())
        self.client = create_app({"snapshot": snap}, self.config, self.actions.append).test_client()

    def post(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.client.post(path, headers={"Host": "127.0.0.1:8000", **(headers or {})}, **kw)

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        return self.client.get(path, headers={"Host": "127.0.0.1:8000", **(headers or {})}, **kw)

    def unchanged(self) -> None:
        assert self.actions == []
        assert sorted(p.name for p in (self.watch / "failed").iterdir()) == ["bad.log", "bad.log.reason"]
        assert list((self.watch / "unprocessed").iterdir()) == []

    def audit(self) -> list[dict[str, Any]]:
        path = self.watch / "audit.log"
        # A line with no line end yet is one being written: not an entry yet.
        return [json.loads(line) for line in path.read_text().splitlines(keepends=True)
                if line.endswith("\n")] if path.exists() else []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "", ":8000", "127.0.0.1.evil.example",
                                  "[::2]:8000", "localhost.:8000", "[::1]:99999", "127.0.0.1:0"])
def test_a_foreign_host_reads_nothing(tmp_path: Path, host: str) -> None:
    s = Setup(tmp_path)
    for path in ("/stats", "/metrics", "/", "/failed", "/files?q=bad", "/audit", "/trace", "/health"):
        response = s.client.get(path, headers={"Host": host})
        body = response.get_data(as_text=True)
        assert response.status_code == 400, (path, host)
        assert "folders" not in body and "bad.log" not in body and "foldermill_" not in body
    response = s.client.post("/failed/bad.log/retry", headers={"Host": host})
    assert response.status_code == 400
    s.unchanged()


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]:8000",
                                  "[::1]", "[0:0::1]:8000", "dash.example:8000"])
def test_loopback_and_allowed_hosts_are_answered(tmp_path: Path, host: str) -> None:
    s = Setup(tmp_path, 'allowed_hosts = ["dash.example"]\n')
    assert s.client.get("/stats", headers={"Host": host}).get_json()["folders"]["processed"] == 10


def test_the_configured_host_is_answered(tmp_path: Path) -> None:
    s = Setup(tmp_path, 'host = "::1"\n')
    assert s.client.get("/stats", headers={"Host": "[::1]:8000"}).status_code == 200
    assert s.client.get("/stats", headers={"Host": "[::2]:8000"}).status_code == 400


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example", "X-Foldermill-Action": "1"},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://other.localhost:8000"},
    {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/x-www-form-urlencoded"},
    {"Origin": "http://evil.example"},  # an older browser: no Sec-Fetch-Site
    {"Origin": "http://127.0.0.1:9999", "X-Foldermill-Action": "1"},  # another loopback port is another origin
    {"Origin": "null", "X-Foldermill-Action": "1"},
    {"Sec-Fetch-Site": "same-origin"},  # the page's own request always carries the action header
    {"Origin": OWN},
])
def test_actions_from_another_origin_are_refused_and_change_nothing(tmp_path: Path, headers: dict[str, str]) -> None:
    s = Setup(tmp_path)
    for path in ("/failed/bad.log/retry", "/failed/bad.log/discard", "/intake/pause", "/failed/retry-all"):
        response = s.post(path, headers, data={"count": "1"})
        assert response.status_code == 403, (path, response.get_json())
        assert "Access-Control-Allow-Origin" not in response.headers
    s.unchanged()
    entries = s.audit()
    assert len(entries) == 4 and all(e["outcome"].startswith("refused") and e["status"] == 403 for e in entries)
    assert entries[0]["remote"] == "127.0.0.1" and entries[0]["auth"] == "none"


def test_the_pages_own_requests_and_scripts_may_act(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    assert s.post("/intake/pause", PAGE).status_code == 202
    assert s.post("/intake/resume", {"Sec-Fetch-Site": "same-origin", "X-Foldermill-Action": "1"}).status_code == 202
    assert s.post("/intake/pause", {"Origin": OWN, "X-Foldermill-Action": "1"}).status_code == 202
    assert s.post("/failed/bad.log/retry").status_code == 202  # curl, a script: no browser headers
    assert s.actions == [Command("pause"), Command("resume"), Command("pause"), Command("retry", "bad.log")]
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    assert s.post("/intake/pause", environ_base=remote).status_code == 403  # no token: loopback only
    assert len(s.actions) == 4
    auths = [e["auth"] for e in s.audit()]
    assert auths == ["loopback, same origin"] * 3 + ["loopback", "none"]


def test_a_token_is_needed_from_the_page_and_from_scripts(tmp_path: Path) -> None:
    s = Setup(tmp_path, 'token = "s3cret"\n')
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, PAGE):
        assert s.post("/intake/pause", headers).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert s.post("/intake/pause", {**PAGE, **good}).status_code == 202
    assert s.post("/intake/pause", good, environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 202
    cross = {"Sec-Fetch-Site": "cross-site", "X-Foldermill-Action": "1", **good}
    assert s.post("/intake/pause", cross).status_code == 403  # even with the token: not from another page
    assert s.actions == [Command("pause"), Command("pause")]
    assert s.get("/stats").status_code == 200  # reads stay open without protect_reads


def test_protect_reads_puts_the_api_and_metrics_behind_the_token(tmp_path: Path) -> None:
    s = Setup(tmp_path, 'token = "s3cret"\nprotect_reads = true\n')
    good = {"Authorization": "Bearer s3cret"}
    for path in ("/stats", "/trace", "/errors", "/metrics", "/failed", "/files?q=bad", "/files/bad.log", "/audit"):
        assert s.get(path).status_code == 401, path
        assert s.get(path, {"Authorization": "Bearer nope"}).status_code == 401, path
        assert s.get(path, good).status_code in (200, 404), path
    for path in ("/", "/static/app.js", "/health"):  # the page loads to ask for the token
        assert s.get(path).status_code == 200, path


def test_mutations_are_post_only_and_no_response_allows_other_origins(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    for path in ("/intake/pause", "/failed/bad.log/retry", "/failed/bad.log/discard", "/failed/retry-all",
                 "/processed/x.log/replay"):
        assert s.get(path).status_code == 405, path
        preflight = s.client.options(path, headers={"Host": "127.0.0.1:8000", "Origin": "http://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
        assert "Access-Control-Allow-Origin" not in preflight.headers
    s.unchanged()
    response = s.get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "<script>" not in response.get_data(as_text=True)  # no inline script for the CSP to allow


def test_retry_all_needs_the_confirmed_count_and_set(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    seen = s.get("/failed").get_json()["set"]
    (s.watch / "failed" / "worse.log").write_text("y\n")
    assert s.post("/failed/retry-all").status_code == 400
    response = s.post("/failed/retry-all", json={"count": 1})
    assert response.status_code == 409 and response.get_json()["count"] == 2
    (s.watch / "failed" / "bad.log").rename(s.watch / "bad.log")  # one left, another came: the same count
    assert s.post("/failed/retry-all", json={"count": 1, "set": seen}).status_code == 409
    (s.watch / "bad.log").rename(s.watch / "failed" / "bad.log")
    assert s.actions == []
    now = s.get("/failed").get_json()["set"]
    assert s.post("/failed/retry-all", json={"count": 2, "set": now}).status_code == 202
    assert s.actions == [Command("retry", "bad.log"), Command("retry", "worse.log")]
    last = s.audit()[-1]
    assert last["action"] == "retry-all" and last["targets"] == ["bad.log", "worse.log"]
    assert s.get("/audit").get_json()["entries"][0] == last  # newest first


def test_a_page_posting_in_a_loop_cannot_push_actions_out_of_the_audit_log(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    hostile = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}
    for _ in range(100):
        assert s.post("/intake/pause", hostile).status_code == 403
    assert s.post("/intake/resume", PAGE).status_code == 202
    entries = s.audit()
    refused = [e for e in entries if e["outcome"].startswith("refused")]
    assert len(refused) == 30 and entries[-1]["action"] == "intake-resume"
    assert s.actions == [Command("resume")]


@pytest.mark.parametrize("path, status", [
    ("/failed/%5CUFFFFFFFF/retry", 404), ("/files/%5CUFFFFFFFF", 404), ("/files/x/outputs/%5CUFFFFFFFF", 404),
    ("/failed/..%2F..%2Fconfig.toml/discard", 400), ("/failed/.hidden/discard", 400),
    ("/failed/bad.log.reason/discard", 400), ("/processed/..%2Fconfig.toml/replay", 400),
    ("/processed/.x/replay", 400), ("/processed/missing.log/replay", 404),
])
def test_discard_and_replay_refuse_anything_but_a_plain_name(tmp_path: Path, path: str, status: int) -> None:
    s = Setup(tmp_path)
    response = s.get(path) if path.startswith("/files") else s.post(path)
    assert response.status_code == status
    s.unchanged()


def test_reads_stay_inside_the_watch_dir_and_follow_no_symlink(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET\n")
    (s.watch / "output" / "a.log").write_text("A\n")
    (s.watch / "output" / "link.log").symlink_to(secret)
    lines = [{"ts": "t", "event": "processed", "file": "a.log", "final": "a.log", "output": ["a.log", "link.log"]}]
    (s.watch / "input.log").write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert s.get("/files/a.log/outputs/a.log").get_data(as_text=True) == "A\n"
    for path, status in (("/files/a.log/outputs/link.log", 404), ("/files/a.log/outputs/..%2F..%2Fsecret.txt", 400),
                         ("/files/a.log/outputs/..%2Fconfig.toml", 400), ("/files/a.log/outputs/input.log", 404)):
        response = s.get(path)
        assert response.status_code == status and "SECRET" not in response.get_data(as_text=True), path


def test_a_name_that_is_not_utf8_works_in_urls(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    name = b"caf\xe9.log".decode("utf-8", "surrogateescape")
    (s.watch / "failed" / name).write_text("x\n")
    listed = s.get("/failed").get_json()
    entry = next(f for f in listed["files"] if f["name"] == "caf\\xe9.log")
    assert entry["ref"] == "caf%E9.log"
    # The test client decodes a path as UTF-8; a real server (waitress) hands over the
    # bytes as PEP 3333 says: the percent-decoded bytes as latin-1. Give it those.
    raw = {"PATH_INFO": "/failed/caf\xe9.log/retry"}
    assert s.post("/failed/x/retry", environ_overrides=raw).status_code == 202
    assert s.post("/failed/caf%5Cxe9.log/retry?shown=1").status_code == 202  # the shown form, said so
    assert s.actions == [Command("retry", "caf\\xe9.log")] * 2
    # Without ?shown=1 a name is exact: a file literally named "caf\xe9.log" is another file.
    assert s.post("/failed/caf%5Cxe9.log/retry").status_code == 404
    (s.watch / "failed" / "caf\\xe9.log").write_text("literal\n")
    assert s.post("/failed/caf%5Cxe9.log/retry").status_code == 202
    assert s.actions[-1] == Command("retry", "caf\\\\xe9.log")


def test_the_failed_listing_is_reused_for_a_bounded_share_of_the_time(tmp_path: Path, monkeypatch) -> None:
    """A listing of failed/ is reused until it is LISTING_SHARE times as old as it took
    (a huge failed/ polled by many tabs costs a bounded share of a core); actions and
    retry-all always look at the folder itself."""
    import web.lookup

    s = Setup(tmp_path)
    assert s.get("/failed").get_json()["total"] == 1
    monkeypatch.setattr(web.lookup, "LISTING_SHARE", 1e9)
    (s.watch / "failed" / "late.log").write_text("y\n")
    assert s.get("/failed").get_json()["total"] == 1  # the listing just made, reused
    assert s.post("/failed/late.log/retry").status_code == 202  # the action sees the folder
    assert s.post("/failed/retry-all", json={"count": 2}).status_code == 202
    monkeypatch.setattr(web.lookup, "LISTING_SHARE", 0)
    assert s.get("/failed").get_json()["total"] == 2


def test_a_discard_into_a_discarded_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    (s.watch / "discarded").write_text("not a folder\n")
    response = s.post("/failed/bad.log/discard")
    assert response.status_code == 400 and "not a directory" in response.get_json()["error"]
    s.unchanged()


def test_a_bulk_action_is_audited_with_its_count_and_digest(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    for i in range(30):
        (s.watch / "failed" / f"more-{i:02d}.log").write_text("x\n")
    assert s.post("/failed/retry-all", json={"count": 31}).status_code == 202
    entry = s.audit()[-1]
    assert len(entry["targets"]) == 20 and entry["targets_count"] == 31
    assert entry["targets_digest"] == s.get("/failed").get_json()["set"]
