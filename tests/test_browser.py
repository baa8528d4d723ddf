"""The dashboard in a real browser (Debian's Chromium, driven by Playwright; nothing is
downloaded): it loads, updates while files flow, shows a hostile file name as text,
survives API failures, and leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import re
from pathlib import Path

from tests.components import require
from tests.daemon import behave_config, drop, start, wait_for

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
