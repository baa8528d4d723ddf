"""The "as deployed" infrastructure itself (tests/deployed.py): real servers write paced
uploads as the uploader into a folder of the service user's, which can read and move
them; what the service user can and cannot see of an upload in progress; the daemon
running from the deployment as the service user."""

from __future__ import annotations

import hashlib
import itertools
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import Daemon, folder, wait_for
from tests.deployed import (
    Deployment,
    EventRecorder,
    Group,
    Server,
    ServiceUser,
    Site,
    Sshd,
    check_as,
    fd_listing,
    python_for,
    start_deployed,
)

pytestmark = pytest.mark.timeout(60)

SETTLE_S = 0.5  # the daemon's default [watch] settle: the pauses must be longer
PAUSE_S = 0.8  # longer than the settle by a margin for a loaded machine
CHUNK = {"sshd": 32768, "vsftpd": 65536, "smbd": 65536}  # smbd: a multiple of its smb2 max write
SERVERS = ["sshd", "vsftpd", "smbd"]


def payload(chunks: int, chunk: int) -> bytes:
    """``chunks`` chunks, the last one short, so the end of the data is a partial write."""
    return os.urandom(chunk * (chunks - 1) + chunk // 3)


def quiet_gaps(events: EventRecorder, name: str) -> list[float]:
    """Seconds between consecutive IN_MODIFY events of ``name``."""
    times = [e.t for e in events.of(name) if "IN_MODIFY" in e.kinds]
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.parametrize("server_name", SERVERS)
def test_a_paced_upload_lands_whole_and_the_service_user_can_take_it(
        request: pytest.FixtureRequest, server_name: str, site: Site, service_user: ServiceUser,
        uploader: ServiceUser, deployed_group: Group, file_events: Callable[[Path], EventRecorder]) -> None:
    server: Server = request.getfixturevalue(server_name)
    events = file_events(site.unprocessed)
    data = payload(4, CHUNK[server_name])

    upload = server.upload(data, "upload.bin", chunk=CHUNK[server_name], pause_s=PAUSE_S).check(30)

    path = site.unprocessed / "upload.bin"
    info = path.stat()
    assert path.read_bytes() == data
    assert (info.st_uid, info.st_gid) == (uploader.uid, deployed_group.gid), "owner: the uploader; group: setgid's"
    assert info.st_mode & stat.S_IRGRP, f"{oct(info.st_mode)}: the service user reads it through the group"
    # The client paused longer than the daemon's settle between writes, as the test asked.
    assert upload.finished is not None and upload.finished - upload.started >= 3 * PAUSE_S * 0.9
    wait_for(lambda: events.count("upload.bin", "IN_CLOSE_WRITE") == 1, 5, "the upload's IN_CLOSE_WRITE")
    gaps = quiet_gaps(events, "upload.bin")
    assert len([g for g in gaps if g > SETTLE_S]) >= 3, (gaps, events.summary("upload.bin"))

    digest = hashlib.sha256(data).hexdigest()
    script = ("import hashlib, os, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest()); "
              "os.rename(sys.argv[1], sys.argv[2])")
    moved = site.watch / "taken.bin"
    done = check_as(service_user, [python_for(service_user), "-c", script, str(path), str(moved)])
    assert (done.returncode, done.stdout.strip()) == (0, digest), done.stderr
    assert moved.read_bytes() == data and not path.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["posix-rename", "SSH_FXP_RENAME"])
def test_sftp_upload_to_a_filepart_then_rename(sshd: Sshd, site: Site,
                                               file_events: Callable[[Path], EventRecorder], legacy: bool) -> None:
    """WinSCP's way: NAME.filepart, then a rename. sftp's rename uses posix-rename@openssh.com
    (a rename(): IN_MOVED_TO); the protocol's own SSH_FXP_RENAME is done by OpenSSH's server
    as link() + unlink(), so the final name appears with IN_CREATE and nothing else."""
    events = file_events(site.unprocessed)
    data = payload(3, 16384)

    sshd.upload(data, "report.csv", chunk=16384, pause_s=PAUSE_S, filepart=True, legacy_rename=legacy).check(30)

    assert (site.unprocessed / "report.csv").read_bytes() == data
    assert not (site.unprocessed / "report.csv.filepart").exists()
    wait_for(lambda: events.of("report.csv"), 5, "events of the final name")
    assert events.count("report.csv.filepart", "IN_CLOSE_WRITE") == 1
    final = [kind for e in events.of("report.csv") for kind in e.kinds]
    assert final == (["IN_CREATE"] if legacy else ["IN_MOVED_TO"]), events.summary("report.csv")
    if legacy:
        wait_for(lambda: events.count("report.csv.filepart", "IN_DELETE"), 5, "the .filepart's IN_DELETE")


@pytest.mark.parametrize("server_name", SERVERS)
def test_the_service_user_cannot_see_the_session_fds_but_inotify_reports_the_upload(
        request: pytest.FixtureRequest, server_name: str, site: Site, service_user: ServiceUser,
        uploader: ServiceUser, file_events: Callable[[Path], EventRecorder]) -> None:
    """What the project's design rests on: the process that writes an upload (the
    server's session process, running with the uploader's uid) is not dumpable, so its
    /proc/PID/fd is root's, mode 0500: neither the service user nor the uploader's own
    uid can list it. inotify, open to anyone who can read the folder, sees every open,
    write and close."""
    server: Server = request.getfixturevalue(server_name)
    events = file_events(site.unprocessed)
    path = site.unprocessed / "slow.bin"
    upload = server.upload(payload(6, CHUNK[server_name]), "slow.bin", chunk=CHUNK[server_name], pause_s=PAUSE_S)

    writers = wait_for(lambda: server.sessions(holding=path), 15, f"the {server_name} session process to open it")
    python = python_for(service_user)
    for writer in writers:
        assert writer.uids().effective == uploader.uid, (writer.pid, writer.uids())
        assert fd_listing(service_user, python, writer.pid).startswith("PermissionError")
        assert fd_listing(uploader, python, writer.pid).startswith("PermissionError"), "same uid, still hidden"
    wait_for(lambda: events.count("slow.bin", "IN_MODIFY") >= 2, 10, "IN_MODIFY events during the upload")
    assert not upload.done(), "the listing must happen while the upload is in progress"
    assert events.count("slow.bin", "IN_OPEN") >= 1
    assert events.count("slow.bin", "IN_CLOSE_WRITE") == 0, events.summary("slow.bin")

    upload.check(30)
    wait_for(lambda: events.count("slow.bin", "IN_CLOSE_WRITE") == 1, 5, "the upload's IN_CLOSE_WRITE")
    opens = events.count("slow.bin", "IN_OPEN")
    closes = events.count("slow.bin", "IN_CLOSE_WRITE") + events.count("slow.bin", "IN_CLOSE_NOWRITE")
    assert opens == closes, f"opens and closes balance at the end: {events.summary('slow.bin')}"


def test_the_deployed_daemon_runs_as_the_service_user_and_takes_an_upload(
        daemons: list[Daemon], deployment: Deployment, site: Site, service_user: ServiceUser,
        sshd: Sshd) -> None:
    """The deployment runs: the daemon from its venv as the service user, processing a
    file that sshd wrote as the uploader (in one burst: readiness is not the point here)."""
    daemon = start_deployed(daemons, deployment, site)
    assert daemon.ps.uids().real == service_user.uid
    assert {p.uids().real for p in daemon.children()} == {service_user.uid}

    sshd.upload(b"hello\nworld\n", "hello.log", chunk=32768, pause_s=1.0).check(30)

    wait_for(lambda: folder(site.watch, "processed") == ["hello.log"], 30, "hello.log in processed/")
    assert (site.watch / "output" / "hello.log").read_text() == "HELLO\nWORLD\n"
    assert daemon.stop() == 0, daemon.log()
