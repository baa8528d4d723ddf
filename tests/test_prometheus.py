"""A real Prometheus scrapes a real running foldermill; every PromQL expression of the
shipped Grafana dashboard evaluates without error and returns data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from docs.hooks import sample_families
from tests.components import free_port, require
from tests.daemon import behave_config, drop, start, wait_for

DASHBOARD = Path(__file__).resolve().parents[1] / "web" / "grafana" / "foldermill.json"
MONITORING = Path(__file__).resolve().parents[1] / "docs" / "operations" / "monitoring.md"
ALERTS = Path(__file__).resolve().parents[1] / "deploy" / "alerts.yml"


def dashboard_exprs() -> list[str]:
    """Every target expression (rows and nested panels included) and template query."""
    doc = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(doc["panels"])
    for var in doc.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        match = re.match(r"label_values\((.+),\s*\w+\)$", query or "")
        if match:
            exprs.append(match.group(1))
    return exprs


def as_promql(expr: str) -> str:
    """What Grafana would send: its macros and variables substituted."""
    return expr.replace("$__rate_interval", "1m").replace('=~"$instance"', '=~".+"')


def api(base: str, path: str, **params: str) -> dict[str, Any]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else base + path
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_prometheus_scrapes_foldermill_and_the_dashboard_queries_return_data(tmp_path: Path, daemons) -> None:
    prometheus = require("prometheus")
    config = behave_config(tmp_path)
    watch = tmp_path / "watch_dir"
    d = start(daemons, config)
    target = re.search(r"dashboard at http://(\S+)/", d.log()).group(1)
    # Series for every panel: processed files, a failure, a worker restart.
    for i in range(20):
        drop(watch, f"f{i}.log", f"line {i}\n")
    drop(watch, "binary.bin", b"\x00\x01\n")
    pid_file = tmp_path / "flags" / "busy.pid"
    drop(watch, "busy.log", "PID busy.pid\nSLEEP 5\n")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 20, "a worker busy on busy.log"))
    os.kill(pid, signal.SIGKILL)

    # The shipped alerting rules too, as docs/operations/alerts.md loads them.
    server, base = start_prometheus(prometheus, tmp_path,
                                    f"rule_files: ['{ALERTS}']\n"
                                    f"scrape_configs:\n  - job_name: foldermill\n    static_configs:\n"
                                    f"      - targets: ['{target}']\n")
    try:
        wait_for(lambda: [t for t in api(base, "/api/v1/targets")["data"]["activeTargets"] if t["health"] == "up"],
                 30, "the foldermill target to be up")
        for expr in dashboard_exprs():
            query = as_promql(expr)

            def answer(q: str = query) -> Any:
                reply = api(base, "/api/v1/query", query=q)
                assert reply["status"] == "success", (q, reply)
                return reply["data"]["result"]

            wait_for(answer, 30, f"data for {query}")
        # Every alerting rule evaluated against the real exposition, without an error; and
        # none of them firing: a worker was killed, but nothing an operator must hear of.
        def rules() -> list[dict[str, Any]]:
            found = [r for g in api(base, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            return found if found and all(r.get("lastEvaluation", "").startswith("20") for r in found) else []

        evaluated = wait_for(rules, 30, "every alerting rule of deploy/alerts.yml evaluated")
        assert len(evaluated) >= 10 and all(r["health"] == "ok" for r in evaluated), evaluated
        assert not [r["name"] for r in evaluated if r["state"] == "firing"], evaluated
        # promtool lints the exposition itself (names, types, _total suffixes).
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
            exposition = response.read()
        lint = subprocess.run([require("promtool"), "check", "metrics"], input=exposition, capture_output=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        # The metrics reference (made from docs/hooks.py's sample snapshot) lists what a
        # real daemon exposes: the broker's gauge is the Celery backend's alone.
        real = {f.name for f in text_string_to_metric_families(exposition.decode())}
        documented = {f.name for f in sample_families()}
        assert real == documented - {"foldermill_broker_queue_jobs"}, (real ^ documented)
    finally:
        server.terminate()
        server.wait(timeout=10)


def start_prometheus(prometheus: str, tmp_path: Path, scrape: str) -> tuple[subprocess.Popen, str]:
    """A real Prometheus on a free loopback port, scraping every second; ready."""
    port = free_port()
    (tmp_path / "prometheus.yml").write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n" + scrape)
    server = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), 30, "Prometheus to be ready")
    except BaseException:
        server.terminate()
        server.wait(timeout=10)
        raise
    return server, base


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_protect_reads_with_the_readmes_scrape_config(tmp_path: Path, daemons) -> None:
    """With ``protect_reads``, Prometheus scrapes with the docs' ``authorization``
    block; a job without it is refused (401: the target is down)."""
    prometheus = require("prometheus")
    config = behave_config(tmp_path)
    text = config.read_text()
    assert "[web]\nport = 0\n" in text
    config.write_text(text.replace("[web]\nport = 0\n", '[web]\nport = 0\ntoken = "s3cret"\nprotect_reads = true\n'))
    d = start(daemons, config)
    target = re.search(r"dashboard at http://(\S+)/", d.log()).group(1)
    # The docs' block itself (docs/operations/monitoring.md), with this test's token and target,
    # beside a job without it.
    block = re.search(r"Prometheus then scrapes with:\n\n  ```yaml\n(.*?)  ```", MONITORING.read_text(), re.S)
    assert block, "the scrape config block of docs/operations/monitoring.md"
    readme = textwrap.dedent(block.group(1)).replace("the token", "s3cret").replace("127.0.0.1:8000", target)
    assert "authorization: {type: Bearer" in readme
    server, base = start_prometheus(prometheus, tmp_path, readme.replace("job_name: foldermill", "job_name: with-token")
                                    + "  - job_name: without\n"
                                    + f"    static_configs: [{{targets: ['{target}']}}]\n")
    try:

        def health() -> dict[str, str] | None:
            targets = api(base, "/api/v1/targets")["data"]["activeTargets"]
            found = {t["labels"]["job"]: t["health"] for t in targets}
            return found if "unknown" not in found.values() and len(found) == 2 else None

        assert wait_for(health, 30, "both scrape jobs to have been tried") == {"with-token": "up", "without": "down"}
        reply = wait_for(lambda: api(base, "/api/v1/query", query="foldermill_workers")["data"]["result"], 30,
                         "a foldermill series scraped with the token")
        assert reply[0]["metric"]["job"] == "with-token"
    finally:
        server.terminate()
        server.wait(timeout=10)
