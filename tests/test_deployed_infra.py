"""What the "as deployed" tests rest on (tests/deployed.py): what the service user can and
cannot see of an upload in progress. That real servers' uploads land whole and the
deployed daemon takes them is tests/test_network_writers.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import wait_for
from tests.deployed import (
    EventRecorder,
    Server,
    ServiceUser,
    Site,
    fd_listing,
    python_for,
)

pytestmark = pytest.mark.timeout(60)

PAUSE_S = 0.8  # longer than the daemon's default settle (0.5 s), with a margin for a loaded machine
CHUNK = {"sshd": 32768, "vsftpd": 65536, "smbd": 65536}  # smbd: a multiple of its smb2 max write
SERVERS = ["sshd", "vsftpd", "smbd"]


def payload(chunks: int, chunk: int) -> bytes:
    """``chunks`` chunks, the last one short, so the end of the data is a partial write."""
    return os.urandom(chunk * (chunks - 1) + chunk // 3)


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
