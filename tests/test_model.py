"""A model-based test of the whole daemon (issue 9, item 4).

A Hypothesis ``RuleBasedStateMachine`` drives the real ``python supervisor.py`` in a
fresh watch dir per example with what producers and operators do: deliveries under
any name the filesystem allows (raw bytes, 1-255 long, near-duplicates of names in
flight, names shaped like the names foldermill derives), the same name again while
the first is in flight, files written in place that are rewritten, touched, removed
or replaced by a directory or a symlink before they are claimed, contents that are
empty, binary, undecodable, without a final newline, CRLF, with a line past the
limit, or that make the processor fail or crash once, SIGKILLs of a busy worker
and of the supervisor, and the operator's actions through the dashboard's API on its
real port, as the page sends them (the name's exact bytes percent-encoded): retry and
discard a failed file, replay a processed one. Its invariants are the guarantees'
(docs/design/guarantees.md):

- every delivery (not every name) ends in exactly one of ``processed/``, ``failed/``
  or (discarded by the operator) ``discarded/``; deliveries are told apart by a unique
  token in their content, so the check is on the multiset of contents, never on exact
  final names;
- a delivery in ``failed/`` has its reason file beside it, non-empty, and no output;
- every committed output equals what the engine (``run FILE``) gives for that
  delivery's bytes, and ``output/`` holds nothing else (no staged file left behind)
  but the earlier outputs of replayed files, which stay, unchanged;
- ``underprocess/`` is empty and ``unprocessed/`` holds only hidden names (never work,
  never touched) once the daemon is quiet;
- the daemon is alive and ``/health``, ``/stats`` and ``/metrics`` answer 200.

Budget. ``make test`` runs a few short examples (derandomized under ``CI=true`` by
the conftest's profile), about a minute on a loaded 2-core machine. Before a release,
run it long (it prints every minimal failing example it finds)::

    FOLDERMILL_FUZZ_EXAMPLES=200 FOLDERMILL_FUZZ_STEPS=30 \\
        .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_model.py

Every failure it finds becomes a fixed example: a ``test_model_regression_*``
function below that replays the minimal steps through the same machine.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import signal
import stat
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.daemon import Daemon, alive, start, wait_for, write_config
from tests.helpers import MemoryOutputs
from workers.config import load_config
from workers.engine import run_file
from workers.errors import InputError
from workers.graph import compile_graph
from workers.names import collision_name, fit, output_name, reason_files, reason_name, shown

EXAMPLES = int(os.environ.get("FOLDERMILL_FUZZ_EXAMPLES", "4"))
STEPS = int(os.environ.get("FOLDERMILL_FUZZ_STEPS", "12"))
TREE_EXAMPLES = int(os.environ.get("FOLDERMILL_FUZZ_TREE_EXAMPLES", str(max(1, EXAMPLES // 2))))
SETTLE_S = 1.0  # files written in place wait at least this long: time to rewrite or remove them
YOUNG_S = SETTLE_S / 2  # a file last written less than this ago cannot have been claimed
MAX_LINE = 256  # [pipeline] max_line_bytes in the test config
MAX_ATTEMPTS = 3
QUIET_S = 60  # deadline for the daemon to finish everything it was given

FUZZ_PROCESSOR = '''
import os, pathlib, threading, time

class Flaky:
    """Passes lines on to triage; with live = true some lines misbehave on purpose."""
    emits = ["triage"]

    def __init__(self, flags="", live=True):
        self.flags = pathlib.Path(flags)
        self.live = live

    def _first(self, name):
        flag = self.flags / name
        if flag.exists():
            return False
        flag.touch()
        return True

    def process(self, lines):
        for line in lines:
            word, _, arg = line.partition(" ")
            if self.live and word == "RAISE-ONCE" and self._first(arg + ".raised"):
                raise RuntimeError("fails once on purpose")
            if self.live and word == "CRASH-ONCE" and self._first(arg + ".crashed"):
                os._exit(4)
            if self.live and word == "PID":
                (self.flags / (arg + ".pid")).write_text(str(os.getpid()))
            if self.live and word == "HOLD":  # until the test has killed this worker
                go, deadline = self.flags / (arg + ".go"), time.monotonic() + 30
                while not go.exists() and time.monotonic() < deadline:
                    threading.Event().wait(0.02)
            yield "triage", line
'''

CONFIG = """
[watch]
dir = "watch_dir"
poll_interval = 0.2
settle = {settle}
include = ["*"]
exclude = []

[web]
port = 0

[workers]
count = 2
max_attempts = {max_attempts}
retry_backoff = 0.1
file_timeout = 60
shutdown_grace = 5

[pipeline]
max_line_bytes = {max_line}

[pipeline.nodes.start]
processor = "fuzz:Flaky"
flags = "{flags}"
live = {live}

[pipeline.nodes.triage]
processor = "regex_route"
routes = {{ errors = 'ERROR' }}
default = "end"

[pipeline.nodes.errors]
processor = "write"
output = "errors"
next = "end"
"""

# -- what a delivery is and what it should become ------------------------------------------------


@dataclass
class Delivery:
    """One hand-off into unprocessed/ (a name may have many)."""

    name: bytes
    identity: tuple  # ("file", bytes) | ("dir", names) | ("link", target): how it is found again
    inplace: bool = False  # written in unprocessed/ itself (waits for settle), not renamed in
    written_at: float = 0.0  # monotonic time of its last write
    ino: int = 0
    removed: bool = False  # the producer took it back before it was claimed
    charged: bool = False  # a SIGKILL happened while it was not known to be done
    done: bool = False  # seen finished by a check

    @property
    def hidden(self) -> bool:
        return any(part.startswith(b".") for part in self.name.split(b"/"))

    @property
    def path_name(self) -> str:
        return os.fsdecode(self.name)


def _clean(raw: bytes) -> bytes:
    """Any byte but '/' and NUL; not '.' or '..'; not hidden (hidden names are drawn apart)."""
    raw = raw.replace(b"/", b"_").replace(b"\0", b"_")[:255] or b"_"
    if raw.startswith(b"."):
        raw = b"_" + raw[1:]
    return raw


LINES = st.lists(st.one_of(
    st.sampled_from(["INFO ok", "ERROR bad thing", "WARN careful", "plain", "", "  indented", "tab\there",
                     "ünïcødé ✓", "ERROR again"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=20),
), max_size=6)


def content_for(kind: str, token: str, lines: list[str]) -> bytes:
    """A delivery's bytes: always carries ``token`` (except an empty file)."""
    head = f"id {token}"
    body = "\n".join([head, *lines])
    if kind == "empty":
        return b""
    if kind == "no-newline":
        return body.encode()
    if kind == "crlf":
        return "".join(f"{line}\r\n" for line in [head, *lines]).encode()
    if kind == "binary":
        return f"{body}\n".encode() + b"\x00\x01\x02binary\n"
    if kind == "undecodable":
        return f"{body}\n".encode() + b"caf\xe9\n"
    if kind == "long-line":
        return f"{body}\n".encode() + b"x" * (MAX_LINE + 10) + b"\n"
    if kind == "raise-once":
        return f"{body}\nRAISE-ONCE {token}\n".encode()
    if kind == "crash-once":
        return f"{body}\nCRASH-ONCE {token}\n".encode()
    if kind == "hold":
        return f"{head}\nPID {token}\nHOLD {token}\n".encode()
    return f"{body}\n".encode()


CONTENT_KINDS = ("text", "text", "empty", "no-newline", "crlf", "binary", "undecodable", "long-line",
                 "raise-once", "crash-once")


def _read_entry(path: bytes) -> tuple:
    st_ = os.lstat(path)
    if stat.S_ISLNK(st_.st_mode):
        return ("link", os.readlink(path))
    if stat.S_ISDIR(st_.st_mode):
        return ("dir", tuple(sorted(os.listdir(path))))
    with open(path, "rb") as f:
        return ("file", f.read())


def _ino(path: bytes) -> int:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return 0  # already claimed


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            return response.status
    except OSError:
        return 0


# -- the machine ---------------------------------------------------------------------------------


class FoldermillModel(RuleBasedStateMachine):
    """One fresh watch dir and one real daemon per example."""

    base: Path = Path(tempfile.gettempdir())  # set by the test to its tmp_path
    CONFIG = CONFIG

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base, prefix="model-"))
        self.watch = self.dir / "watch_dir"
        self.staging = self.dir / "staging"
        self.flags = self.dir / "flags"
        for d in (self.watch / "unprocessed", self.staging, self.flags, self.dir / "targets"):
            d.mkdir(parents=True)
        (self.dir / "fuzz.py").write_text(textwrap.dedent(FUZZ_PROCESSOR))
        params = {"settle": SETTLE_S, "max_attempts": MAX_ATTEMPTS, "max_line": MAX_LINE, "flags": self.flags}
        self.config = write_config(self.dir, self.CONFIG.format(live="true", **params))
        # The same pipeline without the misbehaviour: what ``run FILE`` gives for the bytes.
        replay = write_config(self.staging, self.CONFIG.format(live="false", **params))
        cfg = load_config(replay)
        self.graph = compile_graph(cfg.pipelines["default"], str(self.dir))
        self.deliveries: list[Delivery] = []
        self.daemons: list[Daemon] = []
        self.serial = 0
        self.broken = False
        self.kept: dict[bytes, tuple] = {}  # replayed files' earlier final names -> identity (their outputs stay)
        self.daemon = start(self.daemons, self.config)

    # -- producer actions (also called directly by the regression tests) ------------------------

    def token(self) -> str:
        self.serial += 1
        return f"t{self.serial:04d}"

    def deliver(self, name: bytes, data: bytes, inplace: bool = False) -> Delivery:
        """Hand a file over: renamed in (``os.link``, which never replaces: a careful
        producer) or written in place; if the name is taken, wait until it is free."""
        target = os.fsencode(self.watch / "unprocessed") + b"/" + name
        d = Delivery(name, ("file", data), inplace=inplace)
        if inplace:
            def put() -> bool:
                try:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with open(fd, "wb") as f:
                    f.write(data)
                return True
        else:
            staged = os.fsencode(self.staging) + f"/{self.token()}".encode()
            with open(staged, "wb") as f:
                f.write(data)

            def put() -> bool:
                try:
                    os.link(staged, target, follow_symlinks=False)
                except FileExistsError:
                    return False
                os.unlink(staged)
                return True
        self._hand_over(put, name)
        d.written_at = time.monotonic()
        d.ino = _ino(target)
        self.deliveries.append(d)
        return d

    def deliver_special(self, name: bytes, kind: str) -> Delivery:
        """A directory or a symlink handed over under ``name``."""
        token = self.token()
        target = os.fsencode(self.watch / "unprocessed") + b"/" + name
        staged = os.fsencode(self.staging) + f"/{token}.{kind}".encode()
        if kind == "dir":
            os.mkdir(staged)
            (Path(os.fsdecode(staged)) / token).write_text("inside\n")
            identity: tuple = ("dir", (token.encode(),))

            def put() -> bool:
                try:
                    os.rename(staged, target)  # never replaces: the target would be a file or a full dir
                except OSError as exc:
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                        return False
                    raise
                return True
        else:
            pointee = os.fsencode(self.dir / "targets" / token)
            Path(os.fsdecode(pointee)).write_text(f"pointed at by {token}\n")
            os.symlink(pointee, staged)
            identity = ("link", pointee)

            def put() -> bool:
                try:
                    os.link(staged, target, follow_symlinks=False)
                except FileExistsError:
                    return False
                os.unlink(staged)
                return True
        self._hand_over(put, name)
        d = Delivery(name, identity, written_at=time.monotonic(), ino=_ino(target))
        self.deliveries.append(d)
        return d

    def _hand_over(self, put: Callable[[], bool], name: bytes) -> None:
        """Retry ``put`` until the name is free in unprocessed/ (the daemon takes the
        file that holds it), or fail if the daemon is dead."""
        state = wait_for(lambda: put() or ("dead" if not self.daemon.alive() else False), 30,
                         f"the name {name!r} to be free in unprocessed/ for a new delivery")
        assert state is True, f"the supervisor died:\n{self.daemon.log()[-3000:]}"

    def _unprocessed_path(self, d: Delivery) -> bytes:
        return os.fsencode(self.watch / "unprocessed") + b"/" + d.name

    def _still_waiting(self, d: Delivery) -> bool:
        try:
            return os.lstat(self._unprocessed_path(d)).st_ino == d.ino
        except FileNotFoundError:
            return False

    def remove(self, d: Delivery) -> bool:
        """The producer takes a file back; if the daemon claimed it first, it stays expected."""
        if not self._still_waiting(d):
            return False
        try:
            os.unlink(self._unprocessed_path(d))
        except FileNotFoundError:
            return False
        d.removed = True
        return True

    def rewrite(self, d: Delivery, data: bytes) -> bool:
        """The producer writes a waiting file again, in place. Only while the file is
        young (written less than settle/2 ago, with it open): it cannot be claimed."""
        try:
            fd = os.open(self._unprocessed_path(d), os.O_WRONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        with open(fd, "wb") as f:
            if os.fstat(f.fileno()).st_ino != d.ino or time.monotonic() - d.written_at >= YOUNG_S:
                return False
            f.truncate(0)
            f.write(data)
        d.identity = ("file", data)
        d.written_at = time.monotonic()
        return True

    def touch(self, d: Delivery) -> None:
        """A new mtime, the same bytes (whether it is still waiting or not)."""
        with contextlib.suppress(FileNotFoundError):
            if self._still_waiting(d):
                now = time.time_ns() + 1_000_000_000
                os.utime(self._unprocessed_path(d), ns=(now, now), follow_symlinks=False)

    def kill_busy_worker(self) -> None:
        """Deliver a file that holds its worker, SIGKILL that worker, let the retry pass."""
        token = self.token()
        self.deliver(f"hold-{token}.log".encode(), content_for("hold", token, []))
        pid_file = self.flags / f"{token}.pid"
        state = wait_for(lambda: (pid_file.exists() and pid_file.read_text()) or not self.daemon.alive(), 30,
                         f"the held file to reach a worker; workers={self.daemon.workers()}; "
                         f"underprocess={self._listing('underprocess')}")
        assert self.daemon.alive(), f"the supervisor died:\n{self.daemon.log()[-3000:]}"
        assert state is not True
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        self._charge()
        (self.flags / f"{token}.go").touch()

    def kill_supervisor(self) -> None:
        """SIGKILL the supervisor (its children die with it), start a new one."""
        children = [c.pid for c in self.daemon.children()]
        if self.daemon.alive():
            self.daemon.kill()
        wait_for(lambda: not alive(children), 15, "the killed supervisor's children to die with it")
        self._charge()
        self.daemon = start(self.daemons, self.config, name=f"supervisor-{len(self.daemons)}")

    def _charge(self) -> None:
        for d in self.deliveries:
            if not d.done:
                d.charged = True

    # -- operator actions, through the dashboard on its real port ------------------------------

    def operate(self, action: str, name: bytes) -> int:
        """POST ``action`` for ``name`` as the page does; the HTTP status (0: no answer)."""
        url = wait_for(lambda: re.search(r"dashboard at (http://\S+)", self.daemon.log()), 20, "the dashboard URL")
        folder = "processed" if action == "replay" else "failed"
        request = urllib.request.Request(f"{url.group(1)}{folder}/{quote_from_bytes(name, safe='')}/{action}",
                                         method="POST",
                                         headers={"Sec-Fetch-Site": "same-origin", "X-Foldermill-Action": "1"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            return 0
        # 409: unprocessed/ holds that name (a delivery waiting, or one just claimed)
        assert status in (202, 409), f"{action} of {name!r}: HTTP {status}"
        return status

    def _entries(self, folder: str) -> list[bytes]:
        entries = [n for n in self._listing(folder) if not _hidden(n)]
        if folder == "failed":
            reasons = {os.fsencode(r) for r in reason_files([os.fsdecode(n) for n in entries])}
            entries = [n for n in entries if n not in reasons]
        return entries

    def _journalled(self, event: str, name: bytes) -> int:
        text = shown(os.fsdecode(name))
        with contextlib.suppress(FileNotFoundError), open(self.watch / "input.log", encoding="utf-8") as f:
            return sum(1 for line in f if f'"event":"{event}"' in line and line.endswith("\n")  # written whole
                       and json.loads(line)["file"] == text)
        return 0

    def _settled_entries(self, folder: str) -> list[bytes]:
        """What the folder holds once the daemon has finished what it was given (when
        something was delivered): the operator acts on what is there to act on."""
        if not any(not d.hidden and not d.removed for d in self.deliveries):
            return []
        self.wait_quiet()
        return self._entries(folder)

    def act_on(self, action: str, name: bytes) -> None:
        base = os.fsencode(self.watch / ("processed" if action == "replay" else "failed")) + b"/"
        identity = _read_entry(base + name)
        said = {"retry": "retry-requested", "discard": "discarded", "replay": "replay-requested"}[action]
        before = self._journalled(said, name)
        status = self.operate(action, name)
        with contextlib.suppress(InvalidArgument):  # outside a Hypothesis run (the fixed examples)
            event(f"operator {action}: HTTP {status}")
        if status != 202:
            return
        # The supervisor performs it within a step or two (and journals it): let it, so that
        # the next rule does not pick the same entry while it moves (or it refused it:
        # unprocessed/ took the name meanwhile).
        refused = f"{action} of {shown(os.fsdecode(name))} refused"
        wait_for(lambda: self._journalled(said, name) > before or refused in self.daemon.log()
                 or not self.daemon.alive(), 20, f"the supervisor to perform (or refuse) the {action} of {name!r}")
        for d in self.deliveries:
            if d.identity == identity:
                d.done = False  # in flight again (retry, replay): a SIGKILL may charge it
        if action == "replay":
            self.kept[name] = identity

    # -- rules: what Hypothesis chooses from ----------------------------------------------------

    def _name(self, data: st.DataObject) -> bytes:
        names = [d.name for d in self.deliveries if not d.hidden]
        kinds = ["random", "random", "plain", "long", "non-utf8"] + (["near", "derived"] * 2 if names else [])
        kind = data.draw(st.sampled_from(kinds), label="name kind")
        if kind == "random":
            return _clean(data.draw(st.binary(min_size=1, max_size=40), label="raw name"))
        if kind == "plain":
            return data.draw(st.sampled_from([b"app.log", b"report.csv", b"a", b"app-1.log", b"-n", b" x "]))
        if kind == "long":
            size = data.draw(st.integers(200, 255), label="length")
            ext = data.draw(st.sampled_from([b"", b".log", b".errors", b"." + b"e" * 50]))
            return _clean(data.draw(st.binary(min_size=1, max_size=8)) + b"L" * size)[: 255 - len(ext)] + ext
        if kind == "non-utf8":
            return data.draw(st.sampled_from([b"caf\xe9.log", b"\xff\xfe", b"\xe9", b"a\x80b.txt", b"\xc3(x"]))
        base = data.draw(st.sampled_from(names), label="existing name")
        text = os.fsdecode(base)
        if kind == "near":
            variants = [base + b" ", b"x" + base, base.upper(), base + b"~", base + b"\n", base[:-1] or b"_"]
            return _clean(data.draw(st.sampled_from(variants), label="near duplicate"))
        derived = [output_name(text, "errors"), reason_name(text), collision_name(text, 1),
                   collision_name(text, 2), fit(text + "x" * 255)]
        return _clean(os.fsencode(data.draw(st.sampled_from(derived), label="derived name")))

    def _content(self, data: st.DataObject) -> bytes:
        kind = data.draw(st.sampled_from(CONTENT_KINDS), label="content kind")
        return content_for(kind, self.token(), data.draw(LINES, label="lines"))

    def _pick(self, data: st.DataObject, what: str, waiting: bool = True) -> Delivery | None:
        pool = [d for d in self.deliveries if not d.hidden and not d.removed and (d.inplace or not waiting)]
        which = data.draw(st.integers(0, 1 << 16), label=what)  # drawn whatever the pool holds (see below)
        return pool[which % len(pool)] if pool else None

    @rule(data=st.data(), inplace=st.booleans())
    def drop(self, data: st.DataObject, inplace: bool) -> None:
        with self._step():
            self.deliver(self._name(data), self._content(data), inplace=inplace)

    @rule(data=st.data())
    def drop_hidden(self, data: st.DataObject) -> None:
        with self._step():
            name = (b"." + _clean(data.draw(st.binary(min_size=1, max_size=20), label="hidden name")))[:255]
            content, inplace = self._content(data), data.draw(st.booleans())  # drawn whatever happens next
            if os.path.lexists(os.fsencode(self.watch / "unprocessed") + b"/" + name):
                return  # hidden files stay for good: that name will never be free again
            self.deliver(name, content, inplace=inplace)

    @rule(data=st.data(), inplace=st.booleans())
    def deliver_same_name_again(self, data: st.DataObject, inplace: bool) -> None:
        with self._step():
            d = self._pick(data, "earlier delivery", waiting=False)
            if d is not None:
                self.deliver(d.name, self._content(data), inplace=inplace)

    @rule(data=st.data())
    def rewrite_waiting(self, data: st.DataObject) -> None:
        with self._step():
            d = self._pick(data, "waiting file")
            if d is not None:
                self.rewrite(d, self._content(data))

    @rule(data=st.data())
    def touch_waiting(self, data: st.DataObject) -> None:
        with self._step():
            d = self._pick(data, "file to touch", waiting=False)
            if d is not None:
                self.touch(d)

    @rule(data=st.data())
    def remove_waiting(self, data: st.DataObject) -> None:
        with self._step():
            d = self._pick(data, "file to remove")
            if d is not None:
                self.remove(d)

    @rule(data=st.data(), kind=st.sampled_from(["dir", "symlink"]))
    def replace_by_special(self, data: st.DataObject, kind: str) -> None:
        with self._step():
            d = self._pick(data, "file to replace")
            name = d.name if d is not None else self._name(data)
            if d is not None:
                self.remove(d)
            self.deliver_special(name, kind)

    # The folders' contents depend on the daemon's timing, which a replay of the same
    # example does not repeat: the draw is an index whatever they hold, so that the
    # drawing itself is the same every time (else Hypothesis reports a flaky strategy).
    @rule(which=st.integers(0, 1 << 16), action=st.sampled_from(["retry", "discard"]))
    def operator_on_failed(self, which: int, action: str) -> None:
        with self._step():
            entries = self._entries("failed") or self._settled_entries("failed")
            if entries:
                self.act_on(action, entries[which % len(entries)])

    @rule(which=st.integers(0, 1 << 16))
    def operator_replays(self, which: int) -> None:
        with self._step():
            entries = self._entries("processed") or self._settled_entries("processed")
            if entries:
                self.act_on("replay", entries[which % len(entries)])

    @rule()
    def sigkill_busy_worker(self) -> None:
        with self._step():
            self.kill_busy_worker()

    @rule()
    def sigkill_supervisor(self) -> None:
        with self._step():
            self.kill_supervisor()

    @rule()
    def settle_and_check(self) -> None:
        with self._step():
            self.check()

    @invariant()
    def daemon_alive(self) -> None:
        with self._step():
            assert self.daemon.alive(), f"the supervisor died:\n{self.daemon.log()[-3000:]}"

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.broken = True
            raise

    # -- the invariants once the daemon is quiet ------------------------------------------------

    def _quiet(self) -> bool:
        unprocessed = [n for n in self._listing("unprocessed") if not _hidden(n)]
        underprocess = self._listing("underprocess")
        return not unprocessed and not underprocess

    def wait_quiet(self) -> None:
        streak = [0]

        def quiet() -> bool | str:
            if not self.daemon.alive():
                return "dead"
            streak[0] = streak[0] + 1 if self._quiet() else 0
            return streak[0] >= 3  # quiet on three polls in a row (a retry may be on its way back)

        state = wait_for(quiet, QUIET_S, "the daemon to finish every delivery (unprocessed/ and underprocess/ "
                         f"empty): unprocessed={self._listing('unprocessed')} "
                         f"underprocess={self._listing('underprocess')}", interval_s=0.1)
        assert state != "dead", f"the supervisor died:\n{self.daemon.log()[-3000:]}"

    def _listing(self, folder: str) -> list[bytes]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(os.listdir(os.fsencode(self.watch / folder)))
        return []

    def expected(self, data: bytes) -> dict[str, str] | None:
        """What ``run FILE`` gives for these bytes: outputs by suffix, or None (it fails)."""
        out = MemoryOutputs("x")
        try:
            run_file(self.graph, "x", io.BytesIO(data), out.sink)
        except InputError:
            return None
        return {suffix: stream.getvalue() for suffix, stream in out.streams.items()}

    def check(self) -> None:
        if any(d.hidden for d in self.deliveries):
            # A file written in place after them: once the daemon has taken it, it has
            # seen the hidden ones ready too (older, stable as long), and left them.
            self.deliver(f"sentinel-{self.token()}".encode(), b"sentinel\n", inplace=True)
        self.wait_quiet()
        live = [d for d in self.deliveries if not d.removed and not d.hidden]
        want = Counter(d.identity for d in live)
        found: dict[str, list[tuple[bytes, tuple]]] = {}
        wanted_identities = set(want)
        for folder in ("processed", "failed", "discarded"):
            entries = [n for n in self._listing(folder) if not _hidden(n)]
            reasons = {os.fsencode(r) for r in reason_files([os.fsdecode(n) for n in entries])}
            base = os.fsencode(self.watch / folder) + b"/"
            found[folder] = []
            for n in entries:
                identity = _read_entry(base + n)
                if folder != "processed" and n in reasons and identity not in wanted_identities:
                    continue  # a reason file
                found[folder].append((n, identity))
        got = Counter(identity for entries in found.values() for _, identity in entries)
        missing, extra = want - got, got - want
        assert not missing and not extra, (
            f"deliveries lost: {_short(missing)}; found but never delivered (or twice): {_short(extra)}; "
            f"processed={self._listing('processed')} failed={self._listing('failed')} "
            f"discarded={self._listing('discarded')}")
        by_identity = {d.identity: d for d in live}
        outputs: set[bytes] = set()
        processed = [(name, identity, True) for name, identity in found["processed"]]
        earlier = [(name, identity, False) for name, identity in self.kept.items()
                   if (name, identity) not in found["processed"]]
        for name, identity, current in processed + earlier:
            d = by_identity[identity]
            assert identity[0] == "file", f"{name!r}: a {identity[0]} was processed"
            want_out = self.expected(identity[1])
            assert want_out is not None, f"{name!r} was processed, but run FILE fails on its bytes"
            final = os.fsdecode(name)
            for suffix, text in want_out.items():
                out = os.fsencode(output_name(final, suffix))
                outputs.add(out)
                path = os.fsencode(self.watch / "output") + b"/" + out
                assert os.path.lexists(path), f"output {out!r} of {name!r} missing; output={self._listing('output')}"
                with open(path, "rb") as f:
                    assert f.read() == text.encode(), f"output {out!r} of {name!r} differs from run FILE"
            d.done = d.done or current
        for name, identity in found["discarded"]:
            reason = self.watch / "discarded" / reason_name(os.fsdecode(name))
            assert reason.is_file() and reason.stat().st_size > 0, f"discarded/{name!r} has no reason beside it"
            by_identity[identity].done = True
        for name, identity in found["failed"]:
            d = by_identity[identity]
            final = os.fsdecode(name)
            reason = self.watch / "failed" / reason_name(final)
            assert reason.is_file() and reason.stat().st_size > 0, f"failed/{name!r} has no reason file"
            if identity[0] == "file":
                should_fail = self.expected(identity[1]) is None
                assert should_fail or d.charged, f"{name!r} failed but run FILE passes: {reason.read_text()!r}"
            if identity[0] == "link":
                assert Path(os.fsdecode(identity[1])).read_text().startswith("pointed at"), "a symlink was followed"
            d.done = True
        for d in self.deliveries:
            if d.hidden and not d.removed:
                path = self._unprocessed_path(d)
                assert os.path.lexists(path) and _read_entry(path) == d.identity, (
                    f"hidden {d.name!r} was taken as work: processed={self._listing('processed')} "
                    f"failed={self._listing('failed')}")
        left = sorted(set(self._listing("output")) - outputs)
        assert not left, f"output/ holds files no processed delivery produced (or staged leftovers): {left}"
        self.check_web()

    def check_web(self) -> None:
        match = re.search(r"dashboard at (http://\S+)", self.daemon.log())
        assert match, f"no dashboard URL in the log:\n{self.daemon.log()[-2000:]}"
        url = match.group(1)
        for endpoint in ("health", "stats", "metrics"):
            wait_for(lambda e=endpoint: _get(url + e) == 200, 20, f"/{endpoint} to answer 200")

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.check()
        finally:
            children = [c.pid for d in self.daemons for c in d.children()]
            for d in self.daemons:
                if d.alive():
                    d.kill()
                else:
                    d.wait(5)
            wait_for(lambda: not alive(children), 15, "the supervisors' children to exit")


def _hidden(name: bytes) -> bool:
    return any(part.startswith(b".") for part in name.split(b"/"))


def _short(counter: Counter) -> list:
    return [(kind, value[:60] if isinstance(value, bytes) else value, n) for (kind, value), n in counter.items()]


# -- the same machine on a tree (issue 21) -------------------------------------------------------

DIRS = (b"a", b"b", b"a/b", b"caf\xe9", b"\xff/\xfe", b"d" * 255, b"x y/z")


class TreeModel(FoldermillModel):
    """The machine with ``recursive = true``: names are relative paths (raw bytes in
    every component, 255-byte components), delivered into directories made on the way
    (``mkdir -p``, as the daemon removes the ones it emptied), or as a whole directory
    renamed in; a directory replacing a waiting file is now work too (its file is).
    The invariants are the same, on relative paths: every folder is read as a tree."""

    CONFIG = CONFIG.replace("settle = {settle}\n", "settle = {settle}\nrecursive = true\nempty_dirs_after = 0.3\n")

    def _name(self, data: st.DataObject) -> bytes:
        base = super()._name(data)
        base = base.rpartition(b"/")[2] or b"_"  # a derived name of a nested one keeps only its last component
        where = data.draw(st.sampled_from([b"", b"", *DIRS]), label="directory")
        return where + b"/" + base if where else base

    def deliver(self, name: bytes, data: bytes, inplace: bool = False) -> Delivery:
        parent = os.fsencode(self.watch / "unprocessed") + b"/" + name.rpartition(b"/")[0]
        if b"/" in name:
            self._make_dirs(parent)
        return super().deliver(name, data, inplace)

    def _hand_over(self, put: Callable[[], bool], name: bytes) -> None:
        """As the flat machine's, making the directories again when the daemon removed
        them meanwhile (an emptied directory goes after empty_dirs_after)."""
        parent = os.fsencode(self.watch / "unprocessed") + b"/" + name.rpartition(b"/")[0]

        def again() -> bool:
            try:
                return put()
            except (FileNotFoundError, NotADirectoryError):
                self._make_dirs(parent)
                return False

        super()._hand_over(again, name)

    def _make_dirs(self, path: bytes) -> None:
        with contextlib.suppress(FileExistsError, NotADirectoryError):
            os.makedirs(path, exist_ok=True)

    def deliver_special(self, name: bytes, kind: str) -> Delivery:
        """A symlink is rejected as in the flat machine; a directory is walked: the file
        in it is the delivery."""
        if kind != "dir":
            if b"/" in name:
                self._make_dirs(os.fsencode(self.watch / "unprocessed") + b"/" + name.rpartition(b"/")[0])
            return super().deliver_special(name, kind)
        return self.deliver_tree(name, 1)

    def deliver_tree(self, name: bytes, count: int) -> Delivery:
        """A directory of ``count`` files (one level of subdirectories), built beside and
        renamed in whole under ``name``, once that name is free."""
        token = self.token()
        staged = os.fsencode(self.staging) + f"/{token}.tree".encode()
        inner = [f"{token}-{i}.log".encode() if i % 2 == 0 else f"sub/{token}-{i}.log".encode()
                 for i in range(count)]
        made = []
        for rel in inner:
            data = content_for("text", f"{token}-{len(made)}", ["INFO in a tree"])
            os.makedirs(os.path.dirname(staged + b"/" + rel), exist_ok=True)
            with open(staged + b"/" + rel, "wb") as f:
                f.write(data)
            made.append((rel, data))
        target = os.fsencode(self.watch / "unprocessed") + b"/" + name
        if b"/" in name:
            self._make_dirs(target.rpartition(b"/")[0])

        def put() -> bool:
            try:
                os.rename(staged, target)  # onto a file or a full directory: refused, nothing replaced
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                    return False
                raise
            return True

        self._hand_over(put, name)
        now = time.monotonic()
        found = []
        for rel, data in made:
            d = Delivery(name + b"/" + rel, ("file", data), written_at=now, ino=_ino(target + b"/" + rel))
            self.deliveries.append(d)
            found.append(d)
        return found[0]

    @rule(data=st.data(), count=st.integers(1, 6))
    def rename_a_directory_in(self, data: st.DataObject, count: int) -> None:
        with self._step():
            where = data.draw(st.sampled_from([b"", *DIRS]), label="parent directory")
            top = f"tree-{self.serial}".encode()
            self.deliver_tree(where + b"/" + top if where else top, count)

    @rule(data=st.data())
    def remove_a_directory(self, data: st.DataObject) -> None:
        """The producer takes a directory back (``rm -r``) while the daemon may be
        claiming from it: what it removed first is gone, what the daemon claimed first
        stays expected."""
        with self._step():
            d = self._pick(data, "file whose directory goes", waiting=False)
            if d is None or b"/" not in d.name:
                return
            top = d.name.split(b"/")[0]
            for other in self.deliveries:
                if other.name.startswith(top + b"/") and not other.removed:
                    self.remove(other)
            with contextlib.suppress(OSError):  # not empty: a hidden file, or one delivered meanwhile
                for dirpath, _dirs, _files in os.walk(os.fsencode(self.watch / "unprocessed") + b"/" + top,
                                                      topdown=False):
                    os.rmdir(dirpath)

    def _listing(self, folder: str) -> list[bytes]:
        """Every entry but a directory, by its path relative to ``folder``."""
        top = os.fsencode(self.watch / folder)
        found = []
        for dirpath, dirs, names in os.walk(top):
            rel = os.path.relpath(dirpath, top)
            prefix = b"" if rel == b"." else rel + b"/"
            found += [prefix + n for n in names]
            found += [prefix + n for n in dirs if os.path.islink(os.path.join(dirpath, n))]
        return sorted(found)


# -- the test ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300 + 60 * EXAMPLES)
def test_model_of_the_whole_daemon(tmp_path: Path) -> None:
    run_machine(FoldermillModel, tmp_path, EXAMPLES)


@pytest.mark.slow
@pytest.mark.timeout(300 + 60 * EXAMPLES)
def test_model_of_the_whole_daemon_on_a_tree(tmp_path: Path) -> None:
    run_machine(TreeModel, tmp_path, TREE_EXAMPLES)


def run_machine(machine: type[FoldermillModel], tmp_path: Path, examples: int) -> None:
    machine.base = tmp_path
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]))


# -- fixed examples: each failure the model found, replayed step by step ---------------------------


@pytest.fixture
def model(tmp_path: Path) -> Iterator[FoldermillModel]:
    yield from one_machine(FoldermillModel, tmp_path)


def one_machine(machine: type[FoldermillModel], tmp_path: Path) -> Iterator[FoldermillModel]:
    machine.base = tmp_path
    m = machine()
    try:
        yield m
    finally:
        m.broken = True  # the test checks explicitly; teardown only cleans up
        m.teardown()


def test_model_regression_non_utf8_name(model: FoldermillModel) -> None:
    """Found: the supervisor dies (UnicodeEncodeError, surrogates not allowed, in the
    state database's claim) on a name that is not UTF-8: a file, or a directory."""
    model.deliver(b"caf\xe9.log", content_for("text", model.token(), ["INFO ok"]))
    model.deliver_special(b"\xad[\xc6\x8b\xfc", "dir")
    model.check()


def test_model_regression_255_byte_name_that_fails(model: FoldermillModel) -> None:
    """Found: a failing file with a long name kills the supervisor, writing its reason
    through ``failed/.<name>.reason.tmp`` (File name too long)."""
    model.deliver(b"\nL" + b"L" * 246 + b".errors", content_for("undecodable", model.token(), []))
    model.deliver(b"L" * 255, content_for("binary", model.token(), []))
    model.check()


def test_model_regression_same_name_while_in_flight_is_lost(model: FoldermillModel) -> None:
    """Found: a second delivery of a name in flight is replaced by the first one's
    ``put_back`` (``rename(2)`` over it) after its worker is SIGKILLed: lost, unjournaled."""
    token = model.token()
    model.deliver(b"hold.log", content_for("hold", token, []))
    pid = model.flags / f"{token}.pid"
    wait_for(lambda: pid.exists() and pid.read_text(), 30, "the held file to reach a worker")
    model.deliver(b"hold.log", content_for("text", model.token(), ["INFO ok"]))  # waits for the name
    os.kill(int(pid.read_text()), signal.SIGKILL)
    model._charge()
    (model.flags / f"{token}.go").touch()
    model.check()


def test_model_regression_staged_outputs_left_after_supervisor_sigkill(model: FoldermillModel) -> None:
    """Found: a worker SIGKILLed mid-file, then its supervisor SIGKILLed before it noticed:
    the new supervisor's recovery never removes the dead execution's staged outputs
    (``output/.fm-<id>.<execution>.<k>.tmp`` stay forever)."""
    model.kill_busy_worker()
    model.kill_supervisor()
    model.check()


def test_model_regression_hidden_name_is_never_work(model: FoldermillModel) -> None:
    """Found: with ``exclude = []`` a hidden name is claimed and processed (its outputs
    are hidden files in ``output/``); hidden names are never work."""
    model.deliver(b"._", content_for("text", model.token(), []))
    model.deliver(b".x", content_for("text", model.token(), []), inplace=True)
    model.check()


def test_model_operator_actions_on_raw_names(model: FoldermillModel) -> None:
    """Retry, discard and replay through the real port, on names that are not UTF-8 or
    are 255 bytes long, with a SIGKILL of the supervisor between them."""
    model.deliver(b"caf\xe9.log", content_for("binary", model.token(), []))
    model.deliver(b"L" * 251 + b".log", content_for("text", model.token(), ["ERROR x"]))
    model.deliver(b"\xff\xfe", content_for("text", model.token(), ["INFO ok"]))
    model.check()
    model.act_on("retry", b"caf\xe9.log")
    model.check()  # fails again: run FILE fails on it
    model.act_on("replay", b"L" * 251 + b".log")
    model.kill_supervisor()
    model.act_on("replay", b"\xff\xfe")
    model.check()
    model.act_on("discard", b"caf\xe9.log")
    model.check()
    assert os.path.lexists(os.fsencode(model.watch / "discarded") + b"/caf\xe9.log")
    assert len(model.kept) == 2


@pytest.fixture
def tree_model(tmp_path: Path) -> Iterator[FoldermillModel]:
    yield from one_machine(TreeModel, tmp_path)


def test_model_tree_steps_on_relative_paths(tree_model: TreeModel) -> None:
    """The tree machine's steps, each once, on raw relative paths: nested deliveries
    (255-byte and non-UTF-8 components, one base name in two directories), a whole
    directory renamed in, a waiting file replaced by a directory and by a symlink, a
    SIGKILL of the supervisor amid them, and the operator's actions on nested names."""
    m = tree_model
    m.deliver(b"caf\xe9/x.log", content_for("text", m.token(), ["INFO ok"]))
    m.deliver(b"a/b/x.log", content_for("undecodable", m.token(), []))
    m.deliver(b"d" * 255 + b"/" + b"L" * 251 + b".log", content_for("text", m.token(), ["ERROR x"]))
    waiting = m.deliver(b"\xff/\xfe/w.log", content_for("text", m.token(), []), inplace=True)
    m.deliver_tree(b"x y/z/batch", 5)
    m.remove(waiting)
    m.deliver_special(b"\xff/\xfe/w.log", "dir")
    m.deliver_special(b"a/link", "symlink")
    m.kill_supervisor()
    m.check()
    m.act_on("retry", b"a/b/x.log")
    m.act_on("replay", b"caf\xe9/x.log")
    m.check()
    m.act_on("discard", b"a/b/x.log")
    m.check()
    assert os.path.lexists(os.fsencode(m.watch / "discarded") + b"/a/b/x.log")
