"""Running the real supervisor in a subprocess, for the daemon tests and benchmarks."""

from __future__ import annotations

import calendar
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
SUPERVISOR = ROOT / "supervisor.py"

BASE_CONFIG = """
[watch]
dir = "watch_dir"
poll_interval = 0.2
settle = 0.3

[web]
port = 0

[workers]
count = 1
max_attempts = 2
retry_backoff = 0.1
shutdown_grace = 10

[pipeline.nodes.start]
processor = "upper"
"""


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``
    saying what was awaited and the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last seen: {last!r}")
        threading.Event().wait(interval_s)


def write_config(directory: Path, text: str = BASE_CONFIG, extra: str = "") -> Path:
    path = directory / "config.toml"
    path.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
    return path


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, PR_CAPBSET_DROP = 1, 2, 19, 24


def drop_file_override() -> None:
    """In the child before exec: take CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and
    CAP_SYS_PTRACE out of the bounding set, so that the root process exec'd next gets
    none of them: file permission bits bind it as they bind any user, and it cannot read
    the descriptors of a non-dumpable process (a server's session) in /proc. (The
    deployed tests run it as a real service user; this is the quick way, for the
    interpreter may live where only root can reach it, as under /root/.pyenv.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap})")


class Daemon:
    """One ``python supervisor.py -c CONFIG`` process; stderr goes to a log file.
    ``program``: another way to run it (the installed ``foldermill`` command)."""

    def __init__(self, config: Path, *args: str, name: str = "supervisor", unprivileged: bool = False,
                 env: dict[str, str] | None = None, program: tuple[str, ...] = (sys.executable, str(SUPERVISOR))
                 ) -> None:
        self.config = config
        self.log_path = config.parent / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()/kill()
        preexec = drop_file_override if unprivileged and os.geteuid() == 0 else None
        self.proc = subprocess.Popen([*program, "-c", str(config), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=config.parent,
                                     preexec_fn=preexec, env={**os.environ, **env} if env else None)
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        try:
            return self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> list[psutil.Process]:
        """Live worker processes (they name themselves ``fm-worker-N``)."""
        found = []
        for child in self.children():
            try:
                if child.name().startswith("fm-worker") and child.status() != psutil.STATUS_ZOMBIE:
                    found.append(child)
            except psutil.Error:
                continue
        return found

    def wait(self, timeout_s: float = 30) -> int:
        try:
            code = self.proc.wait(timeout=timeout_s)
        finally:
            self._log.close()
        return code

    def stop(self, timeout_s: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None


def aged_files(directory: Path, count: int, prefix: str, oldest: float) -> list[str]:
    """``count`` one-line files in ``directory``, mtimes 1 ms apart from ``oldest`` on;
    their names sort as their mtimes do (returned oldest first)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"{prefix}-{i:07d}.log"
        path = directory / name
        with open(path, "w") as f:
            f.write(f"2026-12-01T00:00:00 INFO {prefix} {i}\n")
        os.utime(path, (oldest + i / 1000, oldest + i / 1000))
        names.append(name)
    return names


class PeakRSS(threading.Thread):
    """The peak resident memory of one process, sampled every ``every_s`` until ``done``."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return


def folder(watch: Path, name: str) -> list[str]:
    """Names in a queue folder, without placeholders, reasons or hidden files."""
    path = watch / name
    if not path.exists():
        return []
    names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    if name == "failed":
        names = [n for n in names if not n.endswith(".reason")]
    return names


def drop(watch: Path, name: str, content: str | bytes) -> Path:
    """Hand a file over the way producers should: write beside, rename in."""
    data = content.encode() if isinstance(content, str) else content
    tmp = watch / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
    tmp.write_bytes(data)
    target = watch / "unprocessed" / name
    os.rename(tmp, target)
    return target


def journal(watch: Path) -> list[dict[str, Any]]:
    """Every journal entry, oldest first. A line the daemon is still writing (no line end
    yet: a read can meet a write half done) is not an entry yet."""
    entries = []
    for path in sorted(watch.glob("input.log*"), reverse=True):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            entries.extend(json.loads(line) for line in f if line.strip() and line.endswith("\n"))
    return entries


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def start(daemons: list[Daemon], config: Path, *args: str, name: str = "supervisor",
          unprivileged: bool = False, env: dict[str, str] | None = None) -> Daemon:
    """Start a supervisor, remember it for teardown, wait until it says it started."""
    d = Daemon(config, *args, name=name, unprivileged=unprivileged, env=env)
    daemons.append(d)
    wait_for(lambda: "foldermill started" in d.log() or not d.alive(), 30, f"{name} to start")
    assert d.alive() or "--once" in args, d.log()
    return d


def event_time(entry: dict[str, Any]) -> float:
    """A journal entry's "ts" (UTC, millisecond precision) as a Unix time."""
    ts = entry["ts"]
    return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000


def pace(seconds: float) -> None:
    """Let time pass on purpose: the cadence of a slow producer or of chaos, never a
    wait for some state (that is ``wait_for``)."""
    threading.Event().wait(seconds)


BEHAVE = '''
import ctypes, os, pathlib, threading

class Behave:
    """Upper-cases lines; some lines make it misbehave on purpose."""
    emits = ["end"]

    def __init__(self, flags=""):
        self.flags = pathlib.Path(flags)

    def process(self, lines):
        for line in lines:
            word, _, arg = line.partition(" ")
            if word == "EXIT":
                os._exit(3)
            if word == "SEGV":
                ctypes.string_at(0)
            if word == "ONCE":  # crash on the first attempt only
                flag = self.flags / arg
                if not flag.exists():
                    flag.touch()
                    os._exit(4)
            if word == "FAILIF" and (self.flags / arg).exists():  # fails while the flag is set
                raise RuntimeError(f"flag {arg} is set")
            if word == "PID":
                (self.flags / arg).write_text(str(os.getpid()))
            if word == "SLEEP":
                threading.Event().wait(float(arg))
            if word == "ALLOC":
                hog = b"x" * (int(arg) << 20)
                threading.Event().wait(3)
                del hog
            yield "end", line.upper()
'''


def behave_config(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "behave.py").write_text(BEHAVE)
    (tmp_path / "flags").mkdir(exist_ok=True)
    pipeline = f'[pipeline.nodes.start]\nprocessor = "behave:Behave"\nflags = "{tmp_path / "flags"}"\n'
    text = BASE_CONFIG.replace('[pipeline.nodes.start]\nprocessor = "upper"\n', "")
    return write_config(tmp_path, text, textwrap.dedent(extra) + pipeline)


def dashboard_url(d: Daemon) -> str:
    """The dashboard's URL, as the supervisor logged it at start-up."""
    found = re.search(r"dashboard at (http://\S+)", d.log())
    assert found, f"no dashboard URL in the log:\n{d.log()}"
    return found.group(1)


def http_json(url: str, timeout_s: float = 5) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET, whatever the status (a 503 has a body too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def metric_value(base_url: str, name: str, **labels: str) -> float | None:
    """One sample of ``/metrics``, by its name and labels (None: not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base_url + "metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None
