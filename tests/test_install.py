"""foldermill as an installed tool: ``pip install`` of a clone into a fresh venv (no
system site-packages, none of the dev dependencies) gives a ``foldermill`` command
that is ``python supervisor.py`` under its own name: ``--version``, ``check`` on the
shipped config, a ``--once`` run and a daemon whose spawned workers process a file and
whose dashboard serves its page from the install, a SIGTERM while it imports. The
install holds what the program loads at run time and takes nothing from the clone.

The clone installed is a copy of this one as git sees it (tracked files and new ones
not ignored), so the build writes nothing here; what it writes into a clone
(``build/``, ``*.egg-info``) git ignores. Also here: pyproject.toml's dependency ranges
name the packages requirements.txt pins, and admit each pin.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.daemon import Daemon, dashboard_url, drop, folder, wait_for, write_config
from tests.test_deliveries import catches_sigterm
from workers import __version__

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a venv and a pip install (about 15 s), then the runs
# What the installed command must not see: the clone by way of the environment.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

CONFIG = """
[watch]
dir = "watch_dir"
poll_interval = 0.2
settle = 0.2

[web]
port = 0

[workers]
count = 1
shutdown_grace = 10

[pipeline.nodes.start]
processor = "upper"
"""


@dataclass(frozen=True)
class Install:
    command: Path  # venv/bin/foldermill
    python: Path
    site: Path  # the venv's site-packages
    written: frozenset[str]  # what the build wrote into the clone (its paths there; a folder's ends in /)


def run(args: list[str | Path], cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout_s)


def copy_of_this_clone(dest: Path) -> Path:
    """The files a clone of this working tree would hold (tracked and new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # not a tracked file deleted in this tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """``python -m venv`` then ``pip install <clone>``: the install the docs give."""
    base = tmp_path_factory.mktemp("install")
    clone = copy_of_this_clone(base / "clone")
    before = tree(clone)
    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", venv], base)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # The versions requirements.txt pins, within pyproject's ranges (checked below): the
    # install is the one tested everywhere else, not whatever PyPI's newest is today. A
    # constraint names no extra (celery[redis] -> celery).
    pins = re.sub(r"\[[^]]*\]", "", (Path(clone) / "requirements.txt").read_text())
    (base / "constraints.txt").write_text(pins)
    pip = run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "-c", str(base / "constraints.txt"), clone], base, 240)
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout}\n{pip.stderr}"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base)
    return Install(venv / "bin" / "foldermill", python, Path(site.stdout.strip()),
                   frozenset(tree(clone) - before))


def test_the_command_says_its_version_and_its_name(installed: Install, tmp_path: Path) -> None:
    """One version (workers.__version__): the command's, and the distribution's."""
    version = run([installed.command, "--version"], tmp_path)
    assert (version.returncode, version.stdout) == (0, f"foldermill {__version__}\n"), version.stderr
    meta = run([installed.python, "-c", "from importlib.metadata import version; print(version('foldermill'))"],
               tmp_path)
    assert meta.stdout.strip() == __version__, meta.stderr
    usage = run([installed.command, "check", "--help"], tmp_path)
    assert usage.stdout.startswith("usage: foldermill check"), usage.stdout


def test_check_on_a_copy_of_the_shipped_config(installed: Install, tmp_path: Path) -> None:
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    check = run([installed.command, "-c", "config.toml", "check"], tmp_path)
    assert check.returncode == 0, check.stderr
    assert f"config {tmp_path / 'config.toml'} is valid" in check.stdout
    assert "routes (first match wins" in check.stdout


def test_a_once_run_processes_a_file_through_a_spawned_worker(installed: Install, tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    (tmp_path / "watch_dir" / "unprocessed").mkdir(parents=True)
    drop(tmp_path / "watch_dir", "hello.log", "hello\nworld\n")
    once = run([installed.command, "-c", config, "--once"], tmp_path, 120)
    assert once.returncode == 0, once.stderr
    watch = tmp_path / "watch_dir"
    assert folder(watch, "processed") == ["hello.log"], once.stderr
    assert (watch / "output" / "hello.log").read_text() == "HELLO\nWORLD\n"
    assert "Traceback" not in once.stderr


def test_the_daemon_serves_its_dashboard_from_the_install_and_stops_on_sigterm(
        installed: Install, tmp_path: Path, daemons: list[Daemon]) -> None:
    config = write_config(tmp_path, CONFIG)
    d = Daemon(config, name="foldermill", program=(str(installed.command),))
    daemons.append(d)
    wait_for(lambda: "dashboard at" in d.log() or not d.alive(), 60, "the dashboard's URL in the log")
    url = dashboard_url(d)
    for page, source in (("", "index.html"), ("static/app.js", "app.js"), ("static/style.css", "style.css")):
        with urllib.request.urlopen(url + page, timeout=10) as response:
            assert response.read() == (ROOT / "web" / "static" / source).read_bytes(), page
    drop(tmp_path / "watch_dir", "hello.log", "hello\n")
    wait_for(lambda: folder(tmp_path / "watch_dir", "processed") == ["hello.log"], 30, "hello.log processed")
    assert d.workers(), "no fm-worker process"
    assert d.stop() == 0, d.log()
    assert (tmp_path / "watch_dir" / "output" / "hello.log").read_text() == "HELLO\n"
    assert "Traceback" not in d.log()


def test_sigterm_while_the_command_imports_exits_0(installed: Install, tmp_path: Path,
                                                   daemons: list[Daemon]) -> None:
    """As ``python supervisor.py`` (tests/test_deliveries.py): the handler comes before
    the imports that take most of the start-up, so a stop then is a clean one."""
    config = write_config(tmp_path, CONFIG)
    d = Daemon(config, name="foldermill", program=(str(installed.command),))
    daemons.append(d)
    wait_for(lambda: catches_sigterm(d.pid) or not d.alive(), 10, "the command's SIGTERM handler",
             interval_s=0.001)
    assert "_sqlite3" not in Path(f"/proc/{d.pid}/maps").read_text()
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.log()
    assert "Traceback" not in d.log()


def test_the_install_holds_what_runs_and_nothing_of_the_clone(installed: Install, tmp_path: Path) -> None:
    """Every module from site-packages, and every file the dashboard serves or the docs
    point to (web/static, web/grafana) in the installed package."""
    probe = textwrap.dedent("""
        import foldermill, supervisor, web, workers
        from importlib.resources import files
        for module in (foldermill, supervisor, web, workers):
            print(module.__file__)
        for folder in ("static", "grafana"):
            for entry in files("web").joinpath(folder).iterdir():
                print(folder + "/" + entry.name, len(entry.read_bytes()))
    """)
    out = run([installed.python, "-c", probe], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for path in lines[:4]:
        assert Path(path).is_relative_to(installed.site), f"{path} is not from the install"
    shipped = {f"{p.parent.name}/{p.name} {p.stat().st_size}"
               for folder in ("static", "grafana") for p in (ROOT / "web" / folder).iterdir()}
    assert set(lines[4:]) == shipped


def test_what_the_build_writes_into_a_clone_git_ignores(installed: Install) -> None:
    written = sorted(installed.written)
    assert written, "the build wrote nothing into the clone: is this test still needed?"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(written),
                             capture_output=True, text=True).stdout.splitlines()
    assert sorted(ignored) == written


def test_the_dependency_ranges_admit_the_pins_name_for_name() -> None:
    """pyproject.toml's [project] dependencies (ranges, for pip install) and
    requirements.txt (exact pins, what is tested): the same packages, and each pin in
    its range."""
    ranges = {canonicalize_name(r.name): r for r in map(Requirement, _dependencies())}
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pin = Requirement(line)
            pins[canonicalize_name(pin.name)] = pin
    assert set(ranges) == set(pins)
    for name, pin in pins.items():
        (version,) = [s.version for s in pin.specifier if s.operator == "=="]
        assert ranges[name].specifier.contains(version), f"{name}=={version} is outside {ranges[name]}"
        assert ranges[name].extras == pin.extras, name


def _dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" in project.get("dynamic", []) and "version" not in project  # one place: workers.__version__
    return list(project["dependencies"])


def test_the_unit_file_shows_both_ways_to_run() -> None:
    unit = (ROOT / "deploy" / "foldermill.service").read_text()
    assert re.search(r"^ExecStart=\S+/python supervisor\.py -c ", unit, re.M)
    assert re.search(r"^#\s*ExecStart=\S+/bin/foldermill -c ", unit, re.M)
