"""The documentation is tested like the code (docs/design/architecture.md, "Contributing").

- The configuration reference lists every key the loader reads, with its type and
  default, and nothing else (``workers.config.config_keys``).
- The built-in processors' reference lists each one's options as its class takes them.
- Every TOML example in the README and in docs/ passes ``check``.
- The README's tour and the getting-started page are run, command by command, against a
  copy of the project, and what each command prints is compared with what the page shows.

- The CLI, exit-status and metrics references are what docs/hooks.py makes from the
  argument parser and the collector (the site's build makes them again, too).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from docs.hooks import GENERATORS, generate
from tests.daemon import wait_for
from tests.redis_server import free_port
from workers.config import config_keys
from workers.processors import BUILTINS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
# The pages whose ```console blocks are run; the first two start the daemon (`make run`).
TOURS = [ROOT / "README.md", DOCS / "getting-started.md", DOCS / "guide" / "writing-processors.md"]
DAEMON_TOURS = TOURS[:2]
FENCE = re.compile(r"^(\s*)(```+)\s*([\w-]*)(.*)$")
NAMED = re.compile(r"^# ([\w.-]+\.(?:py|toml))\s*$")  # a block's first line naming its file


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    line: int  # of the opening fence, 1-based

    @property
    def file_name(self) -> str:
        """The file a ```toml or ```python block says it is (its first line, ``# name``)."""
        m = NAMED.match(self.body.split("\n", 1)[0])
        return m.group(1) if m else ""


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, indentation (admonitions, lists) removed."""
    found, lines = [], page.read_text().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3)
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:])
            j += 1
        found.append(Block(lang, "\n".join(body), i + 1))
        i = j + 1
    return found


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


# --- the configuration reference --------------------------------------------------------

TYPE_WORDS = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array of strings"}
TABLE_IN_HEADING = re.compile(r"`\[\[?([\w.<>]+)\]\]?`")


def reference_rows(page: Path) -> Iterator[tuple[str, str, str, str, int]]:
    """(table, key, type, default, line) of each row of the page's key tables."""
    table = ""
    for n, line in enumerate(page.read_text().split("\n"), 1):
        if line.startswith("## "):
            m = TABLE_IN_HEADING.search(line)
            table = m.group(1) if m else ""
        elif line.startswith("| `") and table:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            yield table, cells[0].strip("`"), cells[1], cells[2], n


def toml_value(literal: str) -> Any:
    return tomllib.loads(f"v = {literal.strip('`')}")["v"]


def test_the_configuration_reference_is_every_key_the_loader_reads() -> None:
    page = DOCS / "reference" / "configuration.md"
    loader = {(k.table, k.name): k for k in config_keys()}
    documented: dict[tuple[str, str], int] = {}
    problems = []
    for table, key, kind, default, line in reference_rows(page):
        where = f"{rel(page)}:{line} {table}.{key}"
        documented[(table, key)] = line
        k = loader.get((table, key))
        if k is None:
            problems.append(f"{where}: the loader reads no such key")
            continue
        if kind != TYPE_WORDS[k.kind]:
            problems.append(f"{where}: type {kind!r}, the loader's is {TYPE_WORDS[k.kind]!r}")
        if k.default is None:
            if default != "required":
                problems.append(f"{where}: default {default!r}, but the key is required")
            continue
        try:
            value = toml_value(default)
        except tomllib.TOMLDecodeError:
            problems.append(f"{where}: default {default!r} is not a TOML value (or 'required')")
            continue
        if value != k.default or not isinstance(value, (k.kind, int) if k.kind is float else k.kind):
            problems.append(f"{where}: default {default}, the loader's is {k.default!r}")
    missing = [f"[{t}] {name}" for (t, name) in loader if (t, name) not in documented]
    assert not missing, f"{rel(page)} does not document: {', '.join(missing)}"
    assert not problems, "\n".join(problems)


# --- the built-in processors' reference -----------------------------------------------

def option_bullets(page: Path) -> dict[str, list[tuple[str, str, int]]]:
    """For each ``## <processor>`` section: (option, default literal or "", line) of each
    top-level bullet. A bullet names its options in backticks before its first colon
    outside backticks: "- `routes`: ...", "- `default = "end"`: ...", "- `keep` or `drop`: ..."."""
    sections: dict[str, list[tuple[str, str, int]]] = {}
    current: list[tuple[str, str, int]] | None = None
    for n, line in enumerate(page.read_text().split("\n"), 1):
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif line.startswith("- `") and current is not None:
            head = _before_colon(line[2:])
            for token in re.findall(r"`([^`]+)`", head):
                name, _, default = (part.strip() for part in token.partition("="))
                current.append((name, default, n))
    return sections


def _before_colon(text: str) -> str:
    quoted = False
    for i, ch in enumerate(text):
        if ch == "`":
            quoted = not quoted
        elif ch == ":" and not quoted:
            return text[:i]
    return text


def test_the_processor_reference_lists_each_builtins_options_as_its_class_takes_them() -> None:
    page = DOCS / "reference" / "processors.md"
    sections = option_bullets(page)
    assert set(BUILTINS) <= set(sections), f"{rel(page)} has no section for {sorted(set(BUILTINS) - set(sections))}"
    stray = [s for s in sections if re.fullmatch(r"[a-z_]+", s) and s not in BUILTINS]
    assert not stray, f"{rel(page)}: sections named like processors that are not built-ins: {stray}"
    problems = []
    for name, cls in BUILTINS.items():
        params = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                  if p.kind is inspect.Parameter.KEYWORD_ONLY}
        listed = {option: (default, line) for option, default, line in sections[name]}
        if set(listed) != set(params):
            problems.append(f"{name}: documented {sorted(listed)}, takes {sorted(params)}")
        for option, (default, line) in listed.items():
            if option not in params:
                continue
            # A default is shown exactly when the class has one that TOML can write: a
            # required option and one whose absence means something (None) show none.
            real = params[option]
            if real in (inspect.Parameter.empty, None):
                if default:
                    problems.append(f"{rel(page)}:{line} {name}.{option}: shows a default, the class has none")
            elif not default:
                problems.append(f"{rel(page)}:{line} {name}.{option}: its default {real!r} is not shown")
            elif toml_value(default) != real:
                problems.append(f"{rel(page)}:{line} {name}.{option}: default {default}, the class's is {real!r}")
    assert not problems, "\n".join(problems)


# --- every TOML example passes check ---------------------------------------------------

def shipped_pipelines() -> str:
    """The shipped config.toml from its first [[routes]] on: its routes and pipelines."""
    text = (ROOT / "config.toml").read_text()
    tail = text[text.index("\n[[routes]]") + 1:]
    assert set(tomllib.loads(tail)) == {"routes", "pipelines"}, "config.toml must end with its routes and pipelines"
    return tail


def prepare(directory: Path) -> None:
    for folder in ("unprocessed", "underprocess", "processed", "failed", "output"):
        (directory / "watch_dir" / folder).mkdir(parents=True, exist_ok=True)


def check_examples(page: Path, directory: Path) -> list[str]:
    """Run ``check`` on each of the page's TOML blocks, in ``directory``; the problems."""
    prepare(directory)
    found = blocks(page)
    for b in found:
        if b.lang == "python" and b.file_name:
            (directory / b.file_name).write_text(b.body + "\n")
    jobs = []
    for k, b in enumerate(b for b in found if b.lang == "toml"):
        text = b.body + "\n"
        if not {"pipeline", "pipelines"} & set(tomllib.loads(text)):
            text += "\n" + shipped_pipelines()
        path = directory / f"example-{k}.toml"
        path.write_text(text)
        jobs.append((b, path))

    def check(job: tuple[Block, Path]) -> str:
        b, path = job
        r = subprocess.run([sys.executable, str(ROOT / "supervisor.py"), "-c", str(path), "check"], cwd=directory,
                           capture_output=True, text=True, timeout=60)
        return "" if r.returncode == 0 else f"{rel(page)}:{b.line}: check exited {r.returncode}: {r.stderr.strip()}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        return [p for p in pool.map(check, jobs) if p]


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.lang == "toml" for b in blocks(p))], ids=rel)
def test_every_toml_example_passes_check(page: Path, tmp_path: Path) -> None:
    problems = check_examples(page, tmp_path)
    assert not problems, "\n".join(problems)


def test_the_project_layout_names_every_module_and_test_file() -> None:
    """docs/design/architecture.md, "Project layout": a file added without a line there fails."""
    page = (DOCS / "design" / "architecture.md").read_text()
    layout = page[page.index("## Project layout"):page.index("## Contributing")]
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    missing = [p for p in tracked.split() if not p.startswith(("tests/bench/", "docs/"))
               and not p.endswith("__init__.py") and Path(p).name not in layout]
    assert not missing, f"docs/design/architecture.md's project layout does not name: {missing}"


def test_the_generated_references_are_current() -> None:
    """The CLI, exit-status and metrics references are committed as docs/hooks.py makes
    them from the code: `make docs` (or `python docs/hooks.py`) writes them again."""
    stale = [rel(p) for p in PAGES if "<!-- generated: " in p.read_text()
             and generate(p.read_text(), rel(p)) != p.read_text()]
    assert not stale, f"stale generated references in {stale}: run make docs and commit them"
    assert all(f"<!-- generated: {name} -->" in "".join(p.read_text() for p in PAGES) for name in GENERATORS)


def test_the_readmes_guarantees_are_the_guarantees_pages() -> None:
    """The README lists the guarantees by number and title; the code cites them so
    (docs/design/guarantees.md, guarantee 7): the page's headings must say the same."""
    readme = re.findall(r"(?m)^(\d)\. \*\*(.+?)\*\*", (ROOT / "README.md").read_text())
    page = re.findall(r"(?m)^## (\d)\. (.+)$", (DOCS / "design" / "guarantees.md").read_text())
    assert len(readme) == 8 and [(n, t.rstrip(".")) for n, t in readme] == [(n, t.rstrip(".")) for n, t in page]


def test_the_readmes_links_lead_somewhere() -> None:
    """The README is read on the forge, outside the site: its relative links must name
    files of the repository (the site's own links are checked by mkdocs --strict)."""
    text = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert len(links) >= 10, links
    missing = [t for t in links if not (ROOT / t).is_file()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


# --- the tours, run -------------------------------------------------------------------

READ_ONLY = re.compile(r"^(ls|cat|curl -s|grep)\b|supervisor\.py -c \S+ (status|history|check)\b")


def expected_pattern(lines: list[str]) -> re.Pattern[str]:
    """What a page shows as a command's output, as a pattern: a line ``...`` stands for
    any lines, ``...`` within a line for any text."""
    parts = []
    for line in lines:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(re.escape(p) for p in line.split("...")) + r"[ \t]*\n")
    return re.compile("".join(parts))


@dataclass
class Command:
    text: str
    expected: list[str]
    line: int


def commands(b: Block) -> list[Command]:
    found: list[Command] = []
    for k, line in enumerate(b.body.split("\n")):
        if line.startswith("$ "):
            found.append(Command(line[2:], [], b.line + 1 + k))
        elif found and line.strip():
            found[-1].expected.append(line)
    return found


class Tour:
    """A copy of the project (its tracked files, the test's venv), where a page's commands
    run; ``make run`` is started in the background and stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.daemon: subprocess.Popen[bytes] | None = None
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        for name in tracked.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, directory / name)  # mtimes kept: make sees the venv up to date
        (directory / ".venv").symlink_to(Path(sys.prefix))
        config = directory / "config.toml"
        text, n = re.subn(r"(?m)^port = 8000$", f"port = {self.port}", config.read_text())
        assert n == 1, "the shipped config.toml's [web] port = 8000 line, which the tour's copy moves to a free port"
        config.write_text(text)

    def run(self, c: Command, where: str) -> None:
        text = c.text.replace(":8000", f":{self.port}")
        if text == "make run":
            self.start_daemon(where)
            return
        pattern = expected_pattern(c.expected) if c.expected else None
        last: list[Any] = []

        def attempt() -> bool:
            r = subprocess.run(["bash", "-c", text], cwd=self.dir, capture_output=True, text=True, timeout=60)
            out = r.stdout + r.stderr
            last[:] = [r.returncode, out]
            return r.returncode == 0 and (pattern is None or pattern.fullmatch(out) is not None)

        # What a page shows may take the daemon a moment: a command that only reads is
        # tried again until it prints it; any other runs once.
        if READ_ONLY.search(text) and pattern is not None:
            try:
                wait_for(attempt, 30, f"{where}: `{c.text}` to print what the page shows", interval_s=0.2)
            except AssertionError:
                raise AssertionError(f"{where}: `{c.text}` exited {last[0]} and printed:\n{last[1]}\n"
                                     f"the page shows:\n" + "\n".join(c.expected)) from None
        else:
            assert attempt(), (f"{where}: `{c.text}` exited {last[0]} and printed:\n{last[1]}\n"
                               f"the page shows:\n" + "\n".join(c.expected))

    def start_daemon(self, where: str) -> None:
        log = open(self.dir / "make-run.log", "wb")  # noqa: SIM115 -- the daemon's, closed by the OS at its exit
        self.daemon = subprocess.Popen(["make", "run"], cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)

        def healthy() -> bool:
            assert self.daemon is not None and self.daemon.poll() is None, \
                f"{where}: make run exited:\n{(self.dir / 'make-run.log').read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(healthy, 120, f"{where}: make run's dashboard to answer /health", interval_s=0.2)

    def stop(self) -> bool:
        """SIGTERM to make and the daemon (Ctrl-C's way: the whole group); whether every
        process of it was gone within 60 s."""
        if self.daemon is None:
            return True
        try:
            group = [psutil.Process(self.daemon.pid), *psutil.Process(self.daemon.pid).children(recursive=True)]
            os.killpg(self.daemon.pid, signal.SIGTERM)
        except (psutil.NoSuchProcess, ProcessLookupError):  # make is gone already: its log says why
            self.daemon.wait(10)
            return False
        _, alive = psutil.wait_procs(group, timeout=60)
        for p in alive:
            p.kill()
        self.daemon.wait(10)
        return not alive


@pytest.mark.parametrize("page", TOURS, ids=rel)
def test_the_tour_runs_as_the_page_shows(page: Path, tmp_path: Path) -> None:
    tour = Tour(tmp_path)
    ran = 0
    try:
        for b in blocks(page):
            if b.lang in ("toml", "python") and b.file_name:
                (tmp_path / b.file_name).write_text(b.body + "\n")
            elif b.lang == "console":
                for c in commands(b):
                    tour.run(c, f"{rel(page)}:{c.line}")
                    ran += 1
    finally:
        stopped = tour.stop()
    assert ran >= 4, f"{rel(page)} has {ran} commands in ```console blocks: where is its tour?"
    if page not in DAEMON_TOURS:
        return
    assert tour.daemon is not None, f"{rel(page)}'s tour never starts the daemon (`$ make run`)"
    log = (tmp_path / "make-run.log").read_text()
    assert stopped and "foldermill stopped" in log, f"the daemon did not stop cleanly on SIGTERM:\n{log}"
    assert "Traceback" not in log, log
