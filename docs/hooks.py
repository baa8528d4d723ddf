"""The references made from the code: the CLI's (``workers.cli.build_parser``), the exit
statuses (``workers.cli.EXIT_MEANINGS``) and the metrics (``web.metrics``).

A page holds one between two marker lines, ``<!-- generated: cli -->`` and
``<!-- end of generated: cli -->``. The text between them is committed, so the page
reads whole on the forge too; ``python docs/hooks.py`` (run by ``make docs``) makes it
again from the code, the site's build (this file is also its MkDocs hook) always shows
what the code says, and ``tests/test_docs.py`` fails while a committed page differs. An
unknown marker fails the build. The configuration and processor references are written
by hand (they explain) and checked against the loader and the processors by
``tests/test_docs.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = re.compile(r"^<!-- generated: ([a-z-]+) -->\n(.*?)^<!-- end of generated: \1 -->$", re.M | re.S)
HELP_COLUMNS = "88"


def cli_reference() -> str:
    """Every option and command of ``foldermill`` (``python supervisor.py``), as its
    ``--help`` prints them."""
    from workers.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS  # argparse wraps to the terminal's width: the same on every machine
    try:
        parser = build_parser("foldermill")
        parts = ["## foldermill", "", "```text", parser.format_help().rstrip(), "```", ""]
        for name, (command, summary) in _commands(parser).items():
            parts += [f"## foldermill {name}", "", command.description or summary.capitalize() + ".", "",
                      "```text", command.format_help().rstrip(), "```", ""]
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(parts)


def exit_statuses() -> str:
    """The exit statuses, from ``workers.cli.EXIT_MEANINGS``."""
    from workers.cli import EXIT_MEANINGS

    rows = ["| status | meaning |", "|---|---|"]
    rows += [f"| `{code}` | {meaning} |" for code, meaning in sorted(EXIT_MEANINGS.items())]
    return "\n".join(rows) + "\n"


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each command's parser and its one-line help (argparse keeps them in its
    subparsers action: there is no public way to list them)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (command, helps.get(name, "")) for name, command in action.choices.items()}
    return {}


def sample_snapshot() -> dict[str, Any]:
    """A snapshot in which every metric family has a sample (the broker's queue depth
    is there only with the Celery backend)."""
    return {
        "totals_since_start": {"files_processed": 0, "files_failed": 0, "lines_processed": 0},
        "attempts_failed": {"crash": 0}, "restarts": {"crash": 0},
        "pipeline_names": ["default"], "pipelines": {},
        "nodes": {"default/start": {"lines_in": 0, "lines_out": 0, "errors": 0}},
        "folders": {"unprocessed": 0}, "oldest_unprocessed_age_s": 0,
        "workers": [{"slot": 0, "state": "idle", "rss": 0}],
        "broker": {"queue_depth": 0}, "histogram": None, "faults": {}, "loop_tick": 0.0,
    }


def sample_families() -> list[Any]:
    """The metric families /metrics gives for ``sample_snapshot()``, parsed."""
    from prometheus_client.parser import text_string_to_metric_families

    from web.metrics import exposition

    return list(text_string_to_metric_families(exposition(sample_snapshot).decode()))


def metrics_reference() -> str:
    """Every metric ``/metrics`` exposes: its name as scraped, type, labels and help."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for family in sample_families():
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
        rows.append(f"| `{name}` | {family.type} | {', '.join(f'`{k}`' for k in labels) or '—'} "
                    f"| {family.documentation} |")
    return "\n".join(rows) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {"cli": cli_reference, "exit-statuses": exit_statuses,
                                             "metrics": metrics_reference}


def generate(markdown: str, where: str = "") -> str:
    """``markdown`` with the text of each generated block made again from the code."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{where}: no generator {name!r} (known: {', '.join(GENERATORS)})")
        return f"<!-- generated: {name} -->\n\n{GENERATORS[name]().strip()}\n\n<!-- end of generated: {name} -->"

    return BLOCK.sub(one, markdown)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    return generate(markdown, page.file.src_path)


def main() -> int:
    """Write the generated blocks of every page again; say which pages changed."""
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()
        new = generate(text, str(page.relative_to(ROOT)))
        if new != text:
            page.write_text(new)
            print(f"docs/hooks.py: made {page.relative_to(ROOT)} again from the code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
