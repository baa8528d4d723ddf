"""The dashboard in a real browser (Debian's Chromium, driven by Playwright; nothing is
downloaded): it loads, updates while files flow, shows a hostile file name as text,
survives API failures; the console's actions (retry one, retry all, pause and resume,
search and a timeline, an output's head, replay, discard) done by clicking; another
page in the same browser (another loopback port, a rebound DNS name) can neither act
nor read. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.components import require, require_root
from tests.daemon import behave_config, drop, folder, journal, start, wait_for
from tests.test_console import call

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HOSTILE = "<img src=x onerror=alert(1)>.log"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_dashboard_in_chromium(tmp_path: Path, daemons) -> None:
    chromium = require("chromium")
    from playwright.sync_api import expect, sync_playwright

    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(url)
            expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
            expect(page.locator("#f-processed")).to_have_text("0", timeout=15_000)
            drop(watch, HOSTILE, "hello\n")
            for i in range(5):
                drop(watch, f"f{i}.log", f"line {i}\n")
            expect(page.locator("#f-processed")).to_have_text("6", timeout=15_000)
            expect(page.locator("#recent tbody")).to_contain_text(HOSTILE, timeout=15_000)
            drop(watch, "slow.log", "SLEEP 1.5\n")
            expect(page.locator("#workers tbody")).to_contain_text("slow.log", timeout=15_000)
            expect(page.locator("#workers tbody")).to_contain_text("busy")
            # An API outage shows "reconnecting" and the page recovers by itself.
            page.route("**/stats", lambda route: route.abort())
            expect(page.locator("#conn")).to_have_text("reconnecting…", timeout=10_000)
            page.unroute("**/stats")
            expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
            expect(page.locator("#f-processed")).to_have_text("7", timeout=15_000)
            assert page.locator("main img").count() == 0  # the name stayed text
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert dialogs == []
    wait_for(lambda: (ARTIFACTS / "dashboard.png").stat().st_size > 10_000, 5, "the screenshot on disk")


def launch(p: Any, chromium: str, *extra: str) -> Any:
    return p.chromium.launch(executable_path=chromium, args=[*CHROMIUM_ARGS, *extra])


def test_the_console_in_chromium(tmp_path: Path, daemons) -> None:
    chromium = require("chromium")
    from playwright.sync_api import expect, sync_playwright

    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    broken = tmp_path / "flags" / "broken"
    broken.touch()
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    for name in ("one.log", "two.log", "three.log"):
        drop(watch, name, "FAILIF broken\nsecond line\n")
    drop(watch, "good.log", "good\nline <b>two</b>\n")
    ARTIFACTS.mkdir(exist_ok=True)
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = launch(p, chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("dialog", lambda dialog: (dialogs.append(dialog.type), dialog.accept()))
            page.goto(url)
            failed = page.locator("#failed tbody tr")
            expect(failed).to_have_count(3, timeout=20_000)
            expect(page.locator("#failed tbody")).to_contain_text("flag broken is set")
            broken.unlink()
            # Retry one file.
            failed.filter(has_text="one.log").locator("button[data-action=retry]").click()
            wait_for(lambda: "one.log" in folder(watch, "processed"), 20, "one.log retried from the page")
            expect(failed).to_have_count(2, timeout=10_000)
            # Retry all, confirmed.
            expect(page.locator("#retry-all")).to_have_text("retry all (2)", timeout=10_000)
            page.click("#retry-all")
            wait_for(lambda: {"two.log", "three.log"} <= set(folder(watch, "processed")), 20, "retry all")
            expect(failed).to_have_count(0, timeout=10_000)
            # Pause and resume.
            page.click("#intake-toggle")
            expect(page.locator("#intake")).to_have_text("intake paused", timeout=10_000)
            expect(page.locator("#intake-toggle")).to_have_text("resume intake")
            drop(watch, "held.log", "held\n")
            expect(page.locator("#f-unprocessed")).to_have_text("1", timeout=10_000)
            assert "held.log" in folder(watch, "unprocessed")
            page.click("#intake-toggle")
            expect(page.locator("#intake")).to_have_text("intake running", timeout=10_000)
            wait_for(lambda: "held.log" in folder(watch, "processed"), 20, "held.log after the resume")
            # Search, open the timeline, preview an output (shown as text), replay.
            page.fill("#search", "good")
            page.click("#search-form button")
            page.locator("#search-results a", has_text="good.log").click()
            expect(page.locator("#timeline tbody")).to_contain_text("processed", timeout=10_000)
            expect(page.locator("#outputs tbody")).to_contain_text("good.log")
            expect(page.locator("#outputs tbody")).to_contain_text("B")
            page.locator("#outputs tbody button", has_text="preview").first.click()
            expect(page.locator("#preview")).to_have_text("GOOD\nLINE <B>TWO</B>\n", timeout=10_000)
            assert page.locator("#preview b").count() == 0
            page.click("#replay")
            wait_for(lambda: "good-1.log" in folder(watch, "processed"), 20, "good.log replayed as good-1.log")
            assert (watch / "output" / "good.log").exists() and (watch / "output" / "good-1.log").exists()
            expect(page.locator("#timeline tbody")).to_contain_text("replayed", timeout=10_000)
            # Discard a confirmed selection.
            broken.touch()
            drop(watch, "bad.log", "FAILIF broken\n")
            expect(failed).to_have_count(1, timeout=20_000)
            failed.first.locator("input[type=checkbox]").check()
            page.click("#discard-selected")
            wait_for(lambda: (watch / "discarded" / "bad.log").exists(), 20, "bad.log in discarded/")
            expect(page.locator("#audit tbody")).to_contain_text("discard", timeout=10_000)
            expect(page.locator("#graph-svg text.tag")).to_have_text(["start"])
            expect(page.locator("#graph-svg text.pipeline")).to_have_text(["pipeline default"])
            expect(page.locator("#graph-svg")).to_contain_text("lines/s")
            expect(page.locator("#recent tbody")).to_contain_text("default")  # each file's pipeline
            expect(page.locator("#nodes tbody")).to_contain_text("default")
            page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
        finally:
            browser.close()
    assert dialogs and set(dialogs) == {"confirm"}  # confirmations only: no alert ever ran
    events = [e["event"] for e in journal(watch)]
    assert "replayed" in events and "discarded" in events and events.count("retry-requested") == 3


EVIL = """<!doctype html><html><body><p id="done">working</p>
<iframe name="sink"></iframe>
<form id="f" method="POST" action="{dash}intake/pause" target="sink"><input name="x" value="1"></form>
<script>
const log = [];
document.getElementById("f").submit();
fetch("{dash}failed/victim.log/retry", {{method: "POST", mode: "no-cors", body: "x"}})
  .then(() => log.push("retry sent"), () => log.push("retry blocked"))
  .then(() => fetch("{dash}failed/victim.log/discard", {{method: "POST", headers: {{"X-Foldermill-Action": "1"}}}}))
  .then(() => log.push("discard answered"), () => log.push("discard blocked"))
  .then(() => fetch("{dash}stats"))
  .then((r) => r.text().then((t) => log.push("read " + t.length)), () => log.push("read blocked"))
  .then(() => {{ document.getElementById("done").textContent = log.join("; "); }});
</script></body></html>"""


def serve(html: str) -> ThreadingHTTPServer:
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_another_page_in_the_browser_can_neither_act_nor_read(tmp_path: Path, daemons) -> None:
    chromium = require("chromium")
    from playwright.sync_api import expect, sync_playwright

    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    (tmp_path / "flags" / "broken").touch()
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    drop(watch, "victim.log", "FAILIF broken\n")
    wait_for(lambda: folder(watch, "failed") == ["victim.log"], 20, "victim.log in failed/")
    evil = serve(EVIL.format(dash=url))
    try:
        with sync_playwright() as p:
            # evil.test resolves to loopback, as a rebinding attacker's name would.
            browser = launch(p, chromium, "--host-resolver-rules=MAP evil.test 127.0.0.1")
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
                expect(page.locator("#done")).to_contain_text("read blocked", timeout=15_000)
                text = page.locator("#done").text_content() or ""
                assert "discard answered" not in text  # its preflight got no CORS grant
                # A rebound name reaches the dashboard's port but is refused by Host.
                response = page.goto(f"http://evil.test:{port}/stats")
                assert response is not None and response.status == 400
                assert "folders" not in page.content()
                response = page.goto(f"http://evil.test:{port}/")
                assert response is not None and response.status == 400
            finally:
                browser.close()
    finally:
        evil.shutdown()
    entries = wait_for(lambda: len(call(url + "audit")[1]["entries"]) >= 2 and call(url + "audit")[1]["entries"],
                       10, "the refused requests in the audit log")
    refused = {(e["action"], e["status"]) for e in entries}
    assert {("/intake/pause", 403), ("/failed/victim.log/retry", 403)} <= refused, entries
    assert all(e["outcome"].startswith("refused") for e in entries)
    assert folder(watch, "failed") == ["victim.log"] and not (watch / "discarded").exists()
    assert call(url + "stats")[1]["intake_paused"] is False


def test_the_page_asks_for_the_token_once_and_keeps_it_for_the_tab(tmp_path: Path, daemons) -> None:
    chromium = require("chromium")
    from playwright.sync_api import expect, sync_playwright

    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace(
        "[web]\nport = 0\n", '[web]\nport = 0\ntoken = "s3cret"\nprotect_reads = true\n'))
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    with sync_playwright() as p:
        browser = launch(p, chromium)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("#token-form")).to_be_visible(timeout=15_000)  # the reads asked for it
            expect(page.locator("#conn")).to_have_text("reconnecting…")
            page.fill("#token", "wrong")
            page.click("#token-form button")
            expect(page.locator("#token-form")).to_be_visible(timeout=10_000)  # refused: asked again
            page.fill("#token", "s3cret")
            page.click("#token-form button")
            expect(page.locator("#conn")).to_have_text("live", timeout=10_000)
            expect(page.locator("#token-form")).to_be_hidden()
            page.click("#intake-toggle")
            expect(page.locator("#intake")).to_have_text("intake paused", timeout=10_000)
            assert page.evaluate("sessionStorage.getItem('foldermill-token')") == "s3cret"
            assert page.evaluate("localStorage.length") == 0  # never kept beyond the tab
        finally:
            browser.close()
    audit = [json.loads(line) for line in (tmp_path / "watch_dir" / "audit.log").read_text().splitlines()]
    assert [(e["action"], e["outcome"], e["auth"]) for e in audit] == [("intake-pause", "accepted", "token")]


def test_the_dashboard_says_a_fault_of_the_machine_and_how_writers_are_seen(tmp_path: Path, daemons) -> None:
    """A real fault (the watch dir remounted read-only), shown as a banner until it
    clears, and the line that says what the daemon sees of writers."""
    chromium = require("chromium")
    require_root("a read-only bind mount")
    from playwright.sync_api import expect, sync_playwright

    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p, chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            expect(page.locator("#writers")).to_contain_text("inotify open/close events", timeout=15_000)
            expect(page.locator("#fault")).to_be_hidden()
            # A new mount of the watch dir over itself, read-only (files the daemon has
            # open stay on the old one, so nothing keeps it from going read-only).
            subprocess.run(["mount", "--bind", str(watch), str(watch)], check=True, timeout=30)
            try:
                subprocess.run(["mount", "-o", "remount,bind,ro", str(watch)], check=True, timeout=30)
                # Nothing is written meanwhile: the daemon looks at its filesystem by itself.
                expect(page.locator("#fault")).to_contain_text("the filesystem is read-only", timeout=20_000)
                expect(page.locator("#intake")).to_have_text("intake paused: read only")
                page.screenshot(path=str(ARTIFACTS / "dashboard-fault.png"), full_page=True)
                subprocess.run(["mount", "-o", "remount,bind,rw", str(watch)], check=True, timeout=30)
                expect(page.locator("#fault")).to_be_hidden(timeout=20_000)
                expect(page.locator("#intake")).to_have_text("intake running")
            finally:
                subprocess.run(["umount", "-l", str(watch)], check=True, timeout=30)
        finally:
            browser.close()
    assert d.alive()


def test_the_console_on_a_tree_in_chromium(tmp_path: Path, daemons) -> None:
    """With ``recursive = true`` the page shows and acts on relative paths: a nested
    failed file (a directory name that is not UTF-8 too) in the failed panel, retried by
    a click; found by a search on its directory, its timeline and its output's head."""
    chromium = require("chromium")
    from playwright.sync_api import expect, sync_playwright

    config = behave_config(tmp_path)
    config.write_text(config.read_text().replace("[watch]\n", "[watch]\nrecursive = true\n"))
    watch = tmp_path / "watch_dir"
    broken = tmp_path / "flags" / "broken"
    broken.touch()
    d = start(daemons, config)
    url = re.search(r"dashboard at (http://\S+)", d.log()).group(1)
    raw_dir = os.fsdecode(b"caf\xe9")
    for rel in ("acme/2026-12/one.log", f"{raw_dir}/two.log"):
        (watch / "stage" / rel).parent.mkdir(parents=True, exist_ok=True)
        (watch / "stage" / rel).write_text("FAILIF broken\nline <b>two</b>\n")
    for top in ("acme", raw_dir):
        os.rename(watch / "stage" / top, watch / "unprocessed" / top)
    with sync_playwright() as p:
        browser = launch(p, chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("dialog", lambda dialog: dialog.accept())
            page.goto(url)
            failed = page.locator("#failed tbody tr")
            expect(failed).to_have_count(2, timeout=20_000)
            expect(page.locator("#failed tbody")).to_contain_text("acme/2026-12/one.log")
            expect(page.locator("#failed tbody")).to_contain_text("caf\\xe9/two.log")  # shown, never raw
            broken.unlink()
            failed.filter(has_text="acme/2026-12/one.log").locator("button[data-action=retry]").click()
            wait_for(lambda: (watch / "processed" / "acme" / "2026-12" / "one.log").exists(), 20,
                     "acme/2026-12/one.log retried from the page")
            failed.filter(has_text="two.log").locator("button[data-action=retry]").click()
            wait_for(lambda: (watch / "processed" / raw_dir / "two.log").exists(), 20, "the raw-named one retried")
            page.fill("#search", "2026-12")
            page.click("#search-form button")
            page.locator("#search-results a", has_text="acme/2026-12/one.log").click()
            expect(page.locator("#timeline tbody")).to_contain_text("retry-requested", timeout=10_000)
            expect(page.locator("#outputs tbody")).to_contain_text("acme/2026-12/one.log")
            page.locator("#outputs tbody button", has_text="preview").first.click()
            expect(page.locator("#preview")).to_have_text("FAILIF BROKEN\nLINE <B>TWO</B>\n", timeout=10_000)
            page.screenshot(path=str(ARTIFACTS / "console-tree.png"), full_page=True)
        finally:
            browser.close()
