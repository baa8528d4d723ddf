"""The daemon as deployed: an unprivileged service user, and real network servers
(sshd with internal-sftp, vsftpd, smbd) that write uploads into ``unprocessed/`` as
another user, paced by the test.

Everything here needs root (users, servers, ``setpriv``); the fixtures in
``tests/conftest.py`` call ``require_root``/``require`` first, so that without them the
tests skip locally and fail under ``CI=true``.

Why nothing of this lives in ``tmp_path``: pytest's base folder (``/tmp/pytest-of-root``)
is mode 0700, so neither the service user nor the uploader could reach a file in it
(sshd even reads ``AuthorizedKeysFile`` as the user). Each test gets a folder under
``/var/tmp`` instead (``world_dir``), mode 0755, removed in teardown.

Facts these helpers are built on (measured on Debian 12 with OpenSSH 9.2, vsftpd 3.0.3,
Samba 4.17; details where they are used): sftp sends 255 KiB write requests unless ``-B``
says otherwise; an sftp upload keeps the client's local file mode; vsftpd creates files
0600 (``local_umask=077``) unless told; smbclient sends nothing of a piped upload before
it has read the server's ``smb2 max write`` (8 MiB) or the end; each server opens the
file once and closes it before its client exits, also when the client is killed (the
truncated file then gets an IN_CLOSE_WRITE like a whole one).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from tests.components import free_port
from tests.daemon import BASE_CONFIG, ROOT, Daemon, wait_for

NOLOGIN = "/usr/sbin/nologin"
# vsftpd's PAM stack (pam_shells) admits only a shell listed in /etc/shells.
LOGIN_SHELL = "/bin/sh"
# Where per-test folders go: world-traversable, unlike /root and /tmp/pytest-of-root.
SHARED_TMP = Path("/var/tmp")
# What the deployment runs: the daemon's code and its pinned runtime dependencies.
DEPLOYED = ("supervisor.py", "workers", "web", "requirements.txt")
PASV_PORTS = 16  # vsftpd's passive range: room for the concurrent uploads, whatever port a bind finds taken
# A clean environment for what runs as another user: no HOME=/root, no venv of root's.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}


def world_dir(prefix: str, parent: Path = SHARED_TMP) -> Path:
    """A new root-owned folder that every user can traverse (mode 0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def _run(argv: Sequence[str], timeout_s: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a root-side tool; fail with its output when it fails."""
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done


# --- users --------------------------------------------------------------------------------

def _admin(argv: Sequence[str], stdin: str | None = None, timeout_s: float = 30) -> None:
    """A user-database tool (useradd, chpasswd...). Another session on the machine may hold
    /etc/passwd's lock for a moment ("cannot lock ... try again later"): try again then."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _run(argv, stdin=stdin)
            return
        except RuntimeError as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
        threading.Event().wait(0.2)

@dataclass(frozen=True)
class Group:
    """A system group, created by ``groupadd -r`` and removed by ``remove()``."""

    name: str
    gid: int

    @classmethod
    def create(cls, prefix: str = "fmsh") -> Group:
        name = f"{prefix}{secrets.token_hex(4)}"
        _admin(["groupadd", "-r", name])
        return cls(name, _gid_of(name))

    def remove(self) -> None:
        _admin(["groupdel", self.name])


def _gid_of(name: str) -> int:
    import grp

    return grp.getgrnam(name).gr_gid


@dataclass(frozen=True)
class ServiceUser:
    """A system user of the test session: ``useradd -r -M``, a unique name.

    The service user runs the daemon (shell ``nologin``, no password: it never logs in).
    The uploader is the one the servers write as: it needs a password (vsftpd, smbd) and
    a shell listed in /etc/shells (vsftpd's PAM stack checks it), and a home folder that
    exists (vsftpd refuses a login whose home it cannot enter)."""

    name: str
    uid: int
    gid: int
    home: str
    password: str | None = None

    @classmethod
    def create(cls, prefix: str = "fmsvc", *, password: str | None = None, shell: str = NOLOGIN,
               groups: Iterable[Group] = (), home: Path | None = None) -> ServiceUser:
        """Create the user (``prefix`` + 8 hex digits, at most 32 characters); with
        ``home``, that folder is created and given to the user."""
        import pwd

        name = f"{prefix}{secrets.token_hex(4)}"
        assert len(name) <= 32, name
        argv = ["useradd", "-r", "-M", "-s", shell, "-d", str(home or "/nonexistent")]
        extra = ",".join(g.name for g in groups)
        if extra:
            argv += ["-G", extra]
        _admin([*argv, name])
        entry = pwd.getpwnam(name)
        user = cls(name, entry.pw_uid, entry.pw_gid, entry.pw_dir, password)
        try:
            if password is not None:
                _admin(["chpasswd"], stdin=f"{name}:{password}\n")
            if home is not None:
                home.mkdir(parents=True, exist_ok=True)
                os.chown(home, user.uid, user.gid)
        except BaseException:
            user.remove()
            raise
        return user

    def remove(self) -> None:
        """``userdel`` (it removes the user's own group too); the user's processes must be gone."""
        _admin(["userdel", self.name])

    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)


# --- running as a user ----------------------------------------------------------------------

def as_user(user: ServiceUser, argv: Sequence[str]) -> list[str]:
    """``argv`` run as ``user`` with its groups (setpriv execs it: the PID is the program's)."""
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--", *argv]


def run_as(user: ServiceUser, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` as ``user``. The environment is a clean one (``BASE_ENV`` with the
    user's HOME) unless ``env`` is given; ``env`` entries are added to it."""
    env = {**BASE_ENV, "HOME": user.home, **(popen_kwargs.pop("env", None) or {})}
    return subprocess.Popen(as_user(user, argv), env=env, **popen_kwargs)


def check_as(user: ServiceUser, argv: Sequence[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` to its end (within ``timeout_s``); the result, whatever its status."""
    proc = run_as(user, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError(f"{argv!r} as {user.name} did not finish within {timeout_s}s") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def can_run(user: ServiceUser, interpreter: str) -> bool:
    """Whether ``user`` can reach ``interpreter`` and run it as root does, with venv.

    Starting it is not proof enough: setpriv's exec of /root/.pyenv/.../python3.11 (under
    /root, mode 0700) succeeded here as another user, yet that binary then found
    Debian's libpython and stdlib instead of its own: another Python under the same
    name. So the user must pass ``test -x`` on the path, and see the same ``sys.prefix``
    and version as root."""
    if not os.path.exists(interpreter):
        return False
    if check_as(user, ["test", "-x", interpreter]).returncode != 0:
        return False
    probe = "import ensurepip, sys, venv; print(sys.prefix, sys.version)"
    mine = subprocess.run([interpreter, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    theirs = check_as(user, [interpreter, "-c", probe])
    return mine.returncode == theirs.returncode == 0 and mine.stdout == theirs.stdout


@functools.cache
def python_for(user: ServiceUser) -> str:
    """An interpreter ``user`` can run: this one's base if it can reach it, else
    Debian's (root's pyenv under /root, mode 0700, is out of its reach)."""
    candidates = [getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3"]
    found = next((c for c in candidates if can_run(user, c)), None)
    if found is None:
        raise RuntimeError(f"none of {candidates} runs as {user.name} with venv and ensurepip "
                           "(apt-get install python3-venv)")
    return found


# --- the deployment ------------------------------------------------------------------------

@dataclass
class Deployment:
    """The daemon's code and a venv with its pinned requirements, where a service user
    can read and run them (``root``, mode 0755, under /var/tmp)."""

    root: Path
    interpreter: str
    build_s: float = 0.0

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def supervisor(self) -> Path:
        return self.app / "supervisor.py"

    @classmethod
    def build(cls, user: ServiceUser, source: Path = ROOT, timeout_s: float = 900) -> Deployment:
        """Copy the daemon's code from ``source`` (the checkout the tests run from) and
        build its venv from an interpreter ``user`` can run (``python_for``)."""
        started = time.monotonic()
        deployment = cls(world_dir("foldermill-deploy-"), python_for(user))
        try:
            deployment._install(source, timeout_s)
        except BaseException:
            deployment.remove()
            raise
        deployment.build_s = time.monotonic() - started
        return deployment

    def _install(self, source: Path, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self.app.mkdir(mode=0o755)
        for name in DEPLOYED:
            src = source / name
            if src.is_dir():
                shutil.copytree(src, self.app / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, self.app / name)
        _run([self.interpreter, "-m", "venv", str(self.root / "venv")], timeout_s=120)
        # pip's configured indexes and find-links (the environment's) apply, as for make.
        _run([str(self.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "-r", str(self.app / "requirements.txt")], timeout_s=max(30.0, deadline - time.monotonic()))
        # root's umask decides what pip wrote; the service user must read all of it.
        _run(["chmod", "-R", "a+rX", str(self.root)])

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Site:
    """One daemon's folders as deployed: ``root`` (config, logs) and the watch dir belong
    to the service user; ``unprocessed/`` is group-owned by ``group`` with the setgid bit
    (mode 2775), so an uploader in that group writes into it, what it writes gets that
    group, and the service user (also in it) can read and move it."""

    root: Path
    owner: ServiceUser
    group: Group

    @property
    def watch(self) -> Path:
        return self.root / "watch_dir"

    @property
    def unprocessed(self) -> Path:
        return self.watch / "unprocessed"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @classmethod
    def create(cls, parent: Path, owner: ServiceUser, group: Group, config: str = BASE_CONFIG) -> Site:
        site = cls(parent / "site", owner, group)
        site.unprocessed.mkdir(parents=True)
        for path in (site.root, site.watch):
            os.chown(path, owner.uid, owner.gid)
            path.chmod(0o755)
        os.chown(site.unprocessed, owner.uid, group.gid)
        site.unprocessed.chmod(0o2775)
        site.write_config(config)
        return site

    def write_config(self, text: str, extra: str = "") -> Path:
        """The daemon's config.toml (its ``[watch] dir`` is relative: ``watch_dir``)."""
        self.config.write_text(textwrap.dedent(text) + textwrap.dedent(extra))
        os.chown(self.config, self.owner.uid, self.owner.gid)
        return self.config


class DeployedDaemon(Daemon):
    """``python supervisor.py -c CONFIG`` from the deployment's venv, as the site's
    service user; the API of ``tests.daemon.Daemon`` (log, stop, wait, kill, alive, pid,
    children, workers), so the ``daemons`` fixture's teardown covers it too."""

    def __init__(self, deployment: Deployment, site: Site, *args: str, name: str = "supervisor",
                 env: dict[str, str] | None = None) -> None:
        # Not super().__init__(): that starts root's interpreter as root.
        self.config = site.config
        self.log_path = site.root / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = run_as(site.owner, [str(deployment.python), str(deployment.supervisor), "-c", str(site.config),
                                        *args], stdout=self._log, stderr=subprocess.STDOUT, cwd=site.root, env=env)
        self.ps = psutil.Process(self.proc.pid)


def start_deployed(daemons: list[Daemon], deployment: Deployment, site: Site, *args: str,
                   name: str = "supervisor") -> DeployedDaemon:
    """Start the deployed daemon, remember it for the ``daemons`` teardown, wait until it
    says it started."""
    d = DeployedDaemon(deployment, site, *args, name=name)
    daemons.append(d)
    wait_for(lambda: "foldermill started" in d.log() or not d.alive(), 60, f"deployed {name} to start")
    assert d.alive() or "--once" in args, d.log()
    return d


# --- file events ---------------------------------------------------------------------------

IN_EVENTS = {"IN_ACCESS": 0x1, "IN_MODIFY": 0x2, "IN_ATTRIB": 0x4, "IN_CLOSE_WRITE": 0x8,
             "IN_CLOSE_NOWRITE": 0x10, "IN_OPEN": 0x20, "IN_MOVED_FROM": 0x40, "IN_MOVED_TO": 0x80,
             "IN_CREATE": 0x100, "IN_DELETE": 0x200, "IN_Q_OVERFLOW": 0x4000, "IN_ISDIR": 0x40000000}
# A stand-alone script (it runs under the deployment's Python as another user): raw
# inotify through ctypes, one JSON line per event with CLOCK_MONOTONIC (system-wide, so
# comparable with this process's time.monotonic()). "ready" once the watch is in place.
_INOTIFY_SCRIPT = r"""
import ctypes, json, os, select, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC)
if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(sys.argv[1]), 0xFFF) < 0:
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
print("ready", flush=True)
while True:
    if not select.select([fd, sys.stdin], [], [])[0].count(fd):
        break  # stdin closed: stop
    buf, i = os.read(fd, 65536), 0
    now = time.monotonic()
    while i < len(buf):
        _, mask, cookie, size = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + size].rstrip(b"\0").decode("utf-8", "surrogateescape")
        print(json.dumps({"t": now, "mask": mask, "cookie": cookie, "name": name}), flush=True)
        i += 16 + size
"""


@dataclass(frozen=True)
class FileEvent:
    t: float  # time.monotonic() when it was read
    mask: int
    name: str

    @property
    def kinds(self) -> list[str]:
        return [k for k, bit in IN_EVENTS.items() if self.mask & bit]


class EventRecorder:
    """Every inotify event in one folder (not recursive), recorded by a watcher process,
    as ``user`` when given (the service user's view) or as root.

    The kernel merges an event into the previous one when both are identical and the
    previous is still unread, so counts of repeated IN_MODIFY are lower bounds; opens and
    closes are interleaved with other events and come through one by one."""

    def __init__(self, folder: Path, python: str | Path = sys.executable, user: ServiceUser | None = None) -> None:
        argv = [str(python), "-c", _INOTIFY_SCRIPT, str(folder)]
        popen: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                                 "text": True}
        self.proc = run_as(user, argv, **popen) if user else subprocess.Popen(argv, **popen)
        self.events: list[FileEvent] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="inotify-reader", daemon=True)
        self._reader.start()
        wait_for(lambda: self._ready.is_set() or self.proc.poll() is not None, 30, f"the inotify watcher on {folder}")
        if not self._ready.is_set():
            raise RuntimeError(f"inotify watcher failed: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "ready":
                self._ready.set()
                continue
            item = json.loads(line)
            self.events.append(FileEvent(item["t"], item["mask"], item["name"]))

    def of(self, name: str) -> list[FileEvent]:
        return [e for e in list(self.events) if e.name == name]

    def count(self, name: str, kind: str) -> int:
        return sum(1 for e in self.of(name) if e.mask & IN_EVENTS[kind])

    def first(self, name: str, kind: str) -> FileEvent | None:
        return next((e for e in self.of(name) if e.mask & IN_EVENTS[kind]), None)

    def last(self, name: str, kind: str) -> FileEvent | None:
        found = [e for e in self.of(name) if e.mask & IN_EVENTS[kind]]
        return found[-1] if found else None

    def summary(self, name: str) -> str:
        """The events of ``name`` in order, repeats folded: ``IN_CREATE, IN_OPEN, IN_MODIFY x7, ...``."""
        folded: list[list[Any]] = []
        for e in self.of(name):
            label = "|".join(e.kinds)
            if folded and folded[-1][0] == label:
                folded[-1][1] += 1
            else:
                folded.append([label, 1])
        return ", ".join(f"{label} x{n}" if n > 1 else label for label, n in folded)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# --- uploads -----------------------------------------------------------------------------

@dataclass
class Upload:
    """One upload by a real client, running in the background.

    ``started``/``finished`` are ``time.monotonic()`` values: ``finished`` is when the
    client exited (for sftp and smbclient the server has closed the file by then; for
    curl the server answered 226 after its close), ``fed`` when the helper wrote the last
    chunk to a client that reads a pipe."""

    name: str
    client: str
    proc: subprocess.Popen
    started: float
    pause_s: float
    chunk: int
    fed: float | None = None
    finished: float | None = None
    returncode: int | None = None
    output: str = ""
    _thread: threading.Thread | None = field(default=None, repr=False)

    def done(self) -> bool:
        return self.finished is not None

    def wait(self, timeout_s: float) -> int:
        """Wait for the client's end; its exit status (non-zero: see ``output``)."""
        wait_for(self.done, timeout_s, f"the {self.client} upload of {self.name} to finish")
        assert self.returncode is not None
        return self.returncode

    def check(self, timeout_s: float) -> Upload:
        """Wait for the end and insist that it succeeded."""
        code = self.wait(timeout_s)
        assert code == 0, f"{self.client} upload of {self.name} exited {code}: {self.output}"
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=15)


def _start_upload(client: str, argv: list[str], name: str, chunks: list[bytes] | None, pause_s: float,
                  chunk: int, **popen_kwargs: Any) -> Upload:
    """Run ``argv``; if ``chunks``, feed them to its stdin with ``pause_s`` between
    them (the test's pacing), then close it. A thread waits for the client's exit."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if chunks is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen_kwargs)
    upload = Upload(name, client, proc, time.monotonic(), pause_s, chunk)
    upload._thread = threading.Thread(target=_drive, args=(upload, chunks), name=f"upload-{name}", daemon=True)
    upload._thread.start()
    return upload


def _drive(upload: Upload, chunks: list[bytes] | None, limit_s: float = 600) -> None:
    """Wait for the client's exit (its time is ``finished``, set last) while one thread
    drains its output and another feeds its stdin."""
    proc = upload.proc
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else b""), daemon=True)
    reader.start()
    exited = threading.Event()
    feeder = threading.Thread(target=_feed, args=(upload, chunks, exited), daemon=True) if chunks is not None else None
    if feeder is not None:
        feeder.start()
    try:
        upload.returncode = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        upload.returncode = proc.wait(timeout=10)
    finally:
        exit_t = time.monotonic()
        exited.set()
        if upload.returncode is None:
            proc.kill()
            upload.returncode = proc.wait(timeout=10)
        if feeder is not None:
            feeder.join(timeout=10)
        reader.join(timeout=10)
        upload.output = b"".join(out).decode(errors="replace")
        if proc.stdout is not None:
            proc.stdout.close()
        upload.finished = exit_t


def _feed(upload: Upload, chunks: list[bytes], exited: threading.Event) -> None:
    stdin = upload.proc.stdin
    assert stdin is not None
    try:
        for i, piece in enumerate(chunks):
            # The producer's deliberate pacing (as tests.daemon.pace), on an Event so that
            # a client that died (killed by a test) does not keep its feeder waiting.
            if i and exited.wait(upload.pause_s):
                return
            stdin.write(piece)
            stdin.flush()
        upload.fed = time.monotonic()
    except (BrokenPipeError, ValueError):
        return  # the client is gone: its exit status says why
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def split(data: bytes, chunk: int) -> list[bytes]:
    return [data[i:i + chunk] for i in range(0, len(data), chunk)] or [b""]


# --- servers -------------------------------------------------------------------------------

class Server:
    """A network server of the test's own: config and state in ``directory``, a free
    127.0.0.1 port, a child process in its own process group, stopped in ``stop()`` with
    every process it forked (session processes too, which may be in sessions of their own).

    ``start()`` retries on a new port when another process won the race for it; it returns
    once our process (or one of its children) listens on the port."""

    name = "server"

    def __init__(self, directory: Path, uploader: ServiceUser, target: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.uploader = uploader
        self.target = target  # the folder uploads go to (unprocessed/)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.uploads: list[Upload] = []
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.name}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write the config for ``self.port`` (called before each try)."""

    def start(self, timeout_s: float = 30, tries: int = 5) -> None:
        for _ in range(tries):
            self.port = free_port()
            self.prepare()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            wait_for(lambda: self.listening() or self.proc.poll() is not None, timeout_s,
                     f"{self.name} to listen on 127.0.0.1:{self.port} (or exit)")
            if self.listening():
                return
            self.stop()
        raise RuntimeError(f"{self.name} did not start in {tries} tries; log:\n{self.log()}")

    def processes(self) -> list[psutil.Process]:
        """The server and everything it forked (as root, all of them are visible)."""
        if self.proc is None:
            return []
        try:
            top = psutil.Process(self.proc.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def listening(self) -> bool:
        """Our server (not some other process) listens on the port."""
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                for c in p.net_connections(kind="tcp"):
                    if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port:
                        return True
        return False

    def sessions(self, holding: Path | None = None) -> list[psutil.Process]:
        """Processes of this server other than the listener; with ``holding``, those that
        have that file open (the session process writing an upload)."""
        found = []
        for p in self.processes()[1:]:
            with contextlib.suppress(psutil.Error):
                if holding is None or any(Path(f.path) == holding for f in p.open_files()):
                    found.append(p)
        return found

    def stop(self, timeout_s: float = 15) -> None:
        """Stop clients still uploading, then the server and all its processes; assert
        that none is left."""
        for upload in self.uploads:
            upload.kill()
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        _, alive = psutil.wait_procs(alive, timeout=10)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        assert not alive, f"{self.name} processes survived their stop: {[p.pid for p in alive]}"

    def upload(self, data: bytes, name: str, chunk: int = 32768, pause_s: float = 1.0) -> Upload:
        """Upload ``data`` as ``name`` into the target folder, ``chunk`` bytes at a time
        with about ``pause_s`` between chunks; returns at once (``Upload.wait``)."""
        raise NotImplementedError

    def _track(self, upload: Upload) -> Upload:
        self.uploads.append(upload)
        return upload


class Sshd(Server):
    """OpenSSH's sshd with internal-sftp; the uploader logs in with a key of its own.

    Key auth needs the user's password field not to be locked (``!``), which is why the
    uploader gets a password even here. ``internal-sftp`` runs in the session process
    itself, so a user whose shell is nologin can upload (no shell is executed)."""

    name = "sshd"

    def __init__(self, directory: Path, uploader: ServiceUser, target: Path, umask: int = 0o022) -> None:
        super().__init__(directory, uploader, target)
        self.binary = shutil.which("sshd", path="/usr/sbin:/sbin") or "/usr/sbin/sshd"
        self.umask = umask
        self.key = self.dir / "uploader_key"
        self.config_path = self.dir / "sshd_config"
        for key in (self.dir / "host_key", self.key):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        # sshd reads AuthorizedKeysFile as the user: the folder is 0755, the file 0644.
        shutil.copy(self.key.with_suffix(".pub"), self.dir / "authorized_keys")
        (self.dir / "authorized_keys").chmod(0o644)
        # The privilege-separation folder; sshd refuses to run without it.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def prepare(self) -> None:
        self.config_path.write_text(textwrap.dedent(f"""\
            ListenAddress 127.0.0.1:{self.port}
            HostKey {self.dir / "host_key"}
            PidFile {self.dir / "sshd.pid"}
            AuthorizedKeysFile {self.dir / "authorized_keys"}
            AllowUsers {self.uploader.name}
            StrictModes no
            UsePAM no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PubkeyAuthentication yes
            X11Forwarding no
            AllowTcpForwarding no
            PrintMotd no
            LogLevel VERBOSE
            Subsystem sftp internal-sftp -u {self.umask:04o}
            """))
        _run([self.binary, "-t", "-f", str(self.config_path)])

    def command(self) -> list[str]:
        # sshd re-executes itself, so it must be started by its absolute path.
        return [self.binary, "-D", "-e", "-f", str(self.config_path)]

    def sftp(self, batch: str, *options: str) -> list[str]:
        """The sftp command for a batch file's text (``-b``: stop at the first error)."""
        path = self.dir / f"batch-{time.monotonic_ns()}"
        path.write_text(batch)
        return ["sftp", "-b", str(path), "-P", str(self.port), "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *options,
                f"{self.uploader.name}@127.0.0.1"]

    def upload(self, data: bytes, name: str, chunk: int = 32768, pause_s: float = 1.0, *,
               filepart: bool = False, legacy_rename: bool = False, mode: int = 0o644) -> Upload:
        """``put`` with ``-B chunk -l KBIT``: sftp writes one ``chunk`` per request and
        sleeps to keep to KBIT, so a write comes every ``chunk*8/(KBIT*1024)`` s (KBIT is
        rounded up: the real pause is ``Upload.pause_s``). After the last full chunk it
        sleeps once more, then writes the rest (if any) and closes the file: when the size
        is a multiple of ``chunk``, the file is quiet for one pause before its close.

        Without ``-B``, sftp 9.x takes the server's own limit (limits@openssh.com): 255 KiB
        requests, and ``-l`` paces those. sftp refuses a FIFO as the local file, so the data
        goes through a file whose mode (``mode``, less the server's umask) the upload keeps.
        ``filepart``: upload to ``NAME.filepart`` and rename it (as WinSCP does); with
        ``legacy_rename`` through SSH_FXP_RENAME, which OpenSSH's server does as link()
        and unlink(), not rename()."""
        local = self.dir / f"local-{time.monotonic_ns()}"
        local.write_bytes(data)
        local.chmod(mode)
        remote = self.target / name
        batch = f"put {local} {remote}.filepart\nrename {'-l ' if legacy_rename else ''}{remote}.filepart {remote}\n" \
            if filepart else f"put {local} {remote}\n"
        kbit = max(1, math.ceil(chunk * 8 / 1024 / pause_s))
        argv = self.sftp(batch, "-B", str(chunk), "-l", str(kbit))
        upload = _start_upload("sftp", argv, name, None, chunk * 8 / 1024 / kbit, chunk)
        return self._track(upload)


class Vsftpd(Server):
    """vsftpd in the foreground; the uploader logs in with its password and lands in the
    target folder (``local_root``), so URLs name files relative to it.

    Debian's /etc/pam.d/vsftpd denies the users in /etc/ftpusers and (pam_shells) users
    whose shell is not in /etc/shells: the uploader gets /bin/sh. vsftpd's default
    ``local_umask`` is 077 (files 0600, unreadable by the service user): set here to 022."""

    name = "vsftpd"

    def __init__(self, directory: Path, uploader: ServiceUser, target: Path, umask: int = 0o022) -> None:
        super().__init__(directory, uploader, target)
        self.binary = shutil.which("vsftpd", path="/usr/sbin:/sbin") or "/usr/sbin/vsftpd"
        self.umask = umask
        self.config_path = self.dir / "vsftpd.conf"
        self.empty = self.dir / "empty"  # secure_chroot_dir: empty, root's, not writable by others
        self.empty.mkdir(mode=0o755, exist_ok=True)
        self.pasv_ports: tuple[int, int] = (0, 0)

    def prepare(self) -> None:
        low = _free_range(PASV_PORTS)
        self.pasv_ports = (low, low + PASV_PORTS - 1)
        self.config_path.write_text(textwrap.dedent(f"""\
            listen=YES
            listen_ipv6=NO
            listen_address=127.0.0.1
            listen_port={self.port}
            background=NO
            anonymous_enable=NO
            local_enable=YES
            write_enable=YES
            local_umask={self.umask:04o}
            local_root={self.target}
            pasv_enable=YES
            pasv_address=127.0.0.1
            pasv_min_port={self.pasv_ports[0]}
            pasv_max_port={self.pasv_ports[1]}
            connect_from_port_20=NO
            seccomp_sandbox=NO
            secure_chroot_dir={self.empty}
            pam_service_name=vsftpd
            chroot_local_user=NO
            userlist_enable=YES
            userlist_deny=NO
            userlist_file={self.dir / "user_list"}
            xferlog_enable=YES
            xferlog_std_format=NO
            log_ftp_protocol=YES
            vsftpd_log_file={self.dir / "vsftpd-protocol.log"}
            """))
        # Only the uploader may log in (userlist_deny=NO: the list is who is allowed).
        (self.dir / "user_list").write_text(f"{self.uploader.name}\n")
        # vsftpd refuses a config file that is not its own user's (root's).
        self.config_path.chmod(0o600)

    def command(self) -> list[str]:
        return [self.binary, str(self.config_path)]

    def curl(self, name: str, *options: str) -> list[str]:
        assert self.uploader.password is not None
        return ["curl", "--silent", "--show-error", "--fail", "--connect-timeout", "10", "--max-time", "600",
                "--user", f"{self.uploader.name}:{self.uploader.password}", "-T", "-", *options,
                f"ftp://127.0.0.1:{self.port}/{name}"]

    def upload(self, data: bytes, name: str, chunk: int = 65536, pause_s: float = 1.0) -> Upload:
        """``curl -T -`` reading a pipe that gets ``chunk`` bytes every ``pause_s``; curl
        sends what it reads at once, so vsftpd writes each chunk as it comes (a 64 KiB
        chunk may take two write() calls)."""
        return self._track(_start_upload("curl", self.curl(name), name, split(data, chunk), pause_s, chunk))


class Smbd(Server):
    """Samba's smbd with one writable share whose path is the target folder; the
    uploader is in a passdb of the server's own (tdbsam in ``directory``).

    ``max_write`` is the server's ``smb2 max write`` (default 8 MiB): smbclient reads
    its source in pieces of that size (a blocking fread()), so it is the finest pacing
    an upload can have; see ``upload``."""

    name = "smbd"
    share = "upload"

    def __init__(self, directory: Path, uploader: ServiceUser, target: Path, max_write: int = 65536) -> None:
        super().__init__(directory, uploader, target)
        self.max_write = max_write
        self.binary = shutil.which("smbd", path="/usr/sbin:/sbin") or "/usr/sbin/smbd"
        self.config_path = self.dir / "smb.conf"
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            (self.dir / sub).mkdir(mode=0o755, exist_ok=True)

    def prepare(self) -> None:
        d = self.dir
        self.config_path.write_text(textwrap.dedent(f"""\
            [global]
            server role = standalone server
            smb ports = {self.port}
            interfaces = 127.0.0.1
            bind interfaces only = yes
            disable netbios = yes
            private dir = {d / "private"}
            lock directory = {d / "lock"}
            state directory = {d / "state"}
            cache directory = {d / "cache"}
            pid directory = {d / "pid"}
            ncalrpc dir = {d / "ncalrpc"}
            log file = {d / "log" / "log.%m"}
            passdb backend = tdbsam:{d / "private" / "passdb.tdb"}
            map to guest = never
            load printers = no
            printing = bsd
            printcap name = /dev/null
            disable spoolss = yes
            rpc start on demand helpers = no
            smb2 max write = {self.max_write}

            [{self.share}]
            path = {self.target}
            read only = no
            valid users = {self.uploader.name}
            """))
        assert self.uploader.password is not None
        pw = self.uploader.password
        _run(["smbpasswd", "-c", str(self.config_path), "-s", "-a", self.uploader.name], stdin=f"{pw}\n{pw}\n")

    def command(self) -> list[str]:
        return [self.binary, "--foreground", "--no-process-group", "--debug-stdout", "-s", str(self.config_path)]

    def smbclient(self, command: str, *options: str) -> list[str]:
        assert self.uploader.password is not None
        return ["smbclient", f"//127.0.0.1/{self.share}", "-p", str(self.port), "-s", str(self.config_path),
                "-U", f"{self.uploader.name}%{self.uploader.password}", *options, "-c", command]

    def upload(self, data: bytes, name: str, chunk: int = 65536, pause_s: float = 1.0) -> Upload:
        """``smbclient -c 'put - NAME'`` reading a pipe fed ``chunk`` bytes every ``pause_s``.

        smbclient fills as many write requests as the server's credits allow before it
        sends any, each read from the pipe with a blocking fread() of ``max_write``
        bytes: the whole upload would reach the server at the end. ``--send-buffer``
        below one request's size keeps one request in flight, so each piece goes out as
        soon as it is read; ``chunk`` must be a multiple of ``max_write`` for the pieces
        to be the test's chunks."""
        assert chunk % self.max_write == 0, f"chunk {chunk} is not a multiple of smb2 max write {self.max_write}"
        argv = self.smbclient(f'put - "{name}"', "--send-buffer=4096")
        return self._track(_start_upload("smbclient", argv, name, split(data, chunk), pause_s, chunk))


def _free_range(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (vsftpd's passive range),
    below the kernel's ephemeral range: a port in that range can be taken meanwhile as
    the source port of any connection on the machine (the parallel suite makes many),
    and vsftpd then answers PASV with "500 OOPS: vsf_sysutil_bind"."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        low = 10000 + secrets.randbelow(ephemeral_low - 10000 - count)
        socks: list[socket.socket] = []
        try:
            for port in range(low, low + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return low
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free loopback ports below {ephemeral_low}")


def fd_listing(user: ServiceUser, python: str | Path, pid: int) -> str:
    """What ``user`` gets from ``os.listdir('/proc/PID/fd')``: ``ok N`` or the error's name."""
    script = ("import os, sys\ntry:\n    print('ok', len(os.listdir(sys.argv[1])))\n"
              "except OSError as e:\n    print(type(e).__name__, e.errno)\n")
    done = check_as(user, [str(python), "-c", script, f"/proc/{pid}/fd"])
    return done.stdout.strip() or done.stderr.strip()

