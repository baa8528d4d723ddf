"""The shipped alerting rules (deploy/alerts.yml): promtool accepts them and their unit
tests pass (deploy/alerts.test.yml); each alert is fired by a case there and left
silent by another; they read only metrics /metrics exposes, with labels it gives them;
each has its runbook section in docs/operations/alerts.md; and the Grafana dashboard
shows what they watch, its threshold lines at the rules' thresholds."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML (requirements-dev.txt)

from docs.hooks import sample_families
from tests.components import require

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "alerts.test.yml"
PAGE = ROOT / "docs" / "operations" / "alerts.md"
DASHBOARD = ROOT / "web" / "grafana" / "foldermill.json"
SEVERITIES = {"critical", "warning", "info"}
SELECTOR = re.compile(r"\b(foldermill_\w+)(?:\{([^}]*)\})?")


def alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for group in doc["groups"] for r in group["rules"] if "alert" in r}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_is_fired_by_a_case_and_left_silent_by_another() -> None:
    """promtool only runs the cases it is given: an alert nobody tests would pass."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired, silent = set(), set()
    for group in doc["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
            for expected in case.get("exp_alerts") or []:
                assert expected.get("exp_annotations"), f"{case['alertname']}: a case that fires checks its text"
    names = set(alerts())
    assert names, "no alert in deploy/alerts.yml"
    assert names - fired == set(), f"alerts no case fires: {sorted(names - fired)}"
    assert names - silent == set(), f"alerts no case shows silent: {sorted(names - silent)}"
    assert (fired | silent) - names == set(), f"cases for alerts that do not exist: {sorted((fired | silent) - names)}"


def test_every_alert_says_how_urgent_it_is_and_what_to_do() -> None:
    headings = set(re.findall(r"^### (Foldermill\w+)$", PAGE.read_text(), re.M))
    for name, rule in alerts().items():
        assert rule.get("for"), f"{name}: no `for:` (one bad scrape would page someone)"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity one of {SEVERITIES}"
        notes = rule.get("annotations", {})
        assert {"summary", "description", "runbook"} <= set(notes), f"{name}: annotations {sorted(notes)}"
        assert f"docs/operations/alerts.md#{name.lower()}" in notes["runbook"], f"{name}: runbook link"
        assert name in headings, f"{name}: no '### {name}' section in {PAGE.relative_to(ROOT)}"


def exposed() -> dict[str, set[str]]:
    """Every sample name /metrics gives, with its labels (the collector over the sample
    snapshot the metrics reference is made from)."""
    names: dict[str, set[str]] = {}
    for family in sample_families():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_the_rules_and_their_tests_name_only_metrics_and_labels_that_exist() -> None:
    """A metric or a label renamed in web/metrics.py breaks this test, not the pager."""
    metrics = exposed()
    for path in (RULES, RULE_TESTS):
        found = SELECTOR.findall(path.read_text())
        assert found, path
        for name, matchers in found:
            assert name in metrics, f"{path.name}: {name} is not in /metrics (known: {sorted(metrics)})"
            labels = set(re.findall(r"(\w+)\s*[=!]~?", matchers)) - {"job", "instance"}
            assert labels <= metrics[name], f"{path.name}: {name} has no label {sorted(labels - metrics[name])}"


def dashboard_panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.append(panel)
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return found


def test_the_dashboard_shows_what_the_alerts_watch() -> None:
    panels = dashboard_panels()
    exprs = " ".join(t.get("expr", "") for p in panels for t in p.get("targets", []))
    for name, rule in alerts().items():
        for metric, _ in SELECTOR.findall(rule["expr"]):
            assert metric in exprs, f"{name} reads {metric}, which no dashboard panel shows"
    assert re.search(r"\bup\{", exprs), "no panel shows whether Prometheus scrapes foldermill (up)"


def red_line(panels: list[dict[str, Any]], title: str) -> float:
    """The value where a panel's thresholds turn red (drawn as a line)."""
    panel = next((p for p in panels if p.get("title") == title), None)
    assert panel, f"no dashboard panel {title!r}"
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] in ("line", "line+area", "dashed"), title
    return next(s["value"] for s in defaults["thresholds"]["steps"] if s["color"] == "red")


@pytest.mark.parametrize(("alert", "threshold", "panel"), [
    ("FoldermillOldestFileWaiting", r"> ([\d.]+)$", "Oldest waiting file vs the alert"),
    ("FoldermillFailuresRising", r"\)\)\s*> ([\d.]+)\s*and", "Failed share of finished files vs the alert"),
    ("FoldermillAttemptsFailing", r">= ([\d.]+)$", "Failed attempts: crash, timeout, memory (15m)"),
])
def test_the_dashboards_threshold_lines_are_the_rules_thresholds(alert: str, threshold: str, panel: str) -> None:
    """The numbers live in two files: this keeps them equal."""
    expr = alerts()[alert]["expr"].strip()
    found = re.search(threshold, expr)
    assert found, f"{alert}: no threshold in {expr!r}"
    line = red_line(dashboard_panels(), panel)
    assert line == float(found.group(1)), f"{panel!r} draws its red line at {line}, {alert} fires above {found[1]}"


def test_the_pages_tables_say_each_alerts_for_and_severity() -> None:
    """docs/operations/alerts.md's table of the alerts (for, severity) and its table of
    severities are the rules' own."""
    text = PAGE.read_text()
    rules = alerts()
    rows = {cells[0]: cells for cells in (
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
        if line.startswith("| Foldermill"))}
    assert set(rows) == set(rules), f"the page's table lists {sorted(rows)}, the rules are {sorted(rules)}"
    for name, rule in rules.items():
        assert rows[name][-2:] == [rule["for"], rule["labels"]["severity"]], (name, rows[name])
    for severity in SEVERITIES:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{severity}` |"))
        listed = set(re.findall(r"Foldermill\w+", row))
        assert listed == {n for n, r in rules.items() if r["labels"]["severity"] == severity}, (severity, row)
