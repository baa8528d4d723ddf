"""Guarantee 3 as deployed: the daemon runs as the unprivileged service user from a
venv of requirements.txt (as ``deploy/foldermill.service`` runs it), with the default
``settle``; real sshd (internal-sftp), vsftpd and smbd write uploads into
``unprocessed/`` as another user, pausing between chunks longer than ``settle``. Their
session processes are hidden from the daemon's /proc view; inotify's open and close
events are what holds each upload until it is complete. Every upload is processed
whole, once, and never caught changing after its claim (the first line of defence is
enough: the check at commit is the second)."""

from __future__ import annotations

import pytest

from tests.daemon import BASE_CONFIG, Daemon, dashboard_url, folder, http_json, journal, wait_for
from tests.deployed import Deployment, Site, Smbd, Sshd, Vsftpd, start_deployed

pytestmark = pytest.mark.timeout(180)

PAUSE_S = 1.0  # between chunks: twice the default settle (0.5 s)
CHUNK = {"sshd": 32768, "vsftpd": 65536, "smbd": 65536}  # smbd: a multiple of its smb2 max write


def text_of(label: str, size: int) -> bytes:
    """Log-like lines of about ``size`` bytes; the last one ends mid-chunk."""
    lines = [f"2026-12-07T00:00:00 INFO {label} line {i:06d} of an upload\n" for i in range(size // 48 + 1)]
    return "".join(lines).encode()


def test_uploads_by_sftp_ftp_and_smb_are_processed_whole_once_as_a_service_user(
        daemons: list[Daemon], deployment: Deployment, site: Site, sshd: Sshd, vsftpd: Vsftpd, smbd: Smbd) -> None:
    site.write_config(BASE_CONFIG.replace("settle = 0.3\n", ""))  # the default settle: 0.5 s
    d = start_deployed(daemons, deployment, site)
    url = dashboard_url(d)
    writers = wait_for(lambda: http_json(url + "health")[1].get("writers"), 10, "the first snapshot's writers")
    assert (writers["user"], writers["proc"], writers["inotify"], writers["settle_s"]) == (
        site.owner.name, "own", True, 0.5), writers
    uploads, expected = [], {}
    for server in (sshd, vsftpd, smbd):
        for k in range(3):
            name = f"{server.name}-{k}.log"
            data = text_of(name, CHUNK[server.name] * 4 + 5000)  # five writes, four pauses of 1 s
            expected[name] = data
            uploads.append(server.upload(data, name, chunk=CHUNK[server.name], pause_s=PAUSE_S))
    # WinSCP's way: NAME.filepart, renamed at the end; sftp's rename, and SSH_FXP_RENAME
    # (link + unlink: the final name appears by IN_CREATE, complete, and must settle).
    for name, legacy in (("winscp.csv", False), ("winscp-legacy.csv", True)):
        expected[name] = text_of(name, 16384 * 3)
        uploads.append(sshd.upload(expected[name], name, chunk=16384, pause_s=PAUSE_S, filepart=True,
                                   legacy_rename=legacy))
    for upload in uploads:
        upload.check(60)
    wait_for(lambda: folder(site.watch, "processed") == sorted(expected), 60, "every upload processed")
    for name, data in expected.items():
        assert (site.watch / "processed" / name).read_bytes() == data, f"{name}: the input as it arrived"
        assert (site.watch / "output" / name).read_bytes() == data.upper(), f"{name}: a truncated output"
    wait_for(lambda: len([e for e in journal(site.watch) if e["event"] == "processed"]) == len(expected), 10,
             "every processed line in the journal")
    events = journal(site.watch)
    for name in expected:
        kinds = [e["event"] for e in events if e["file"] == name]
        assert kinds == ["claimed", "processed"], (name, kinds)  # once; never caught changing after its claim
    assert not [e for e in events if e["file"].endswith(".filepart")]  # never taken half-uploaded
    assert not [e for e in events if e["event"] in ("changed", "retried", "failed")]
    assert d.stop() == 0
