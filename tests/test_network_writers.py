"""Guarantee 3 as deployed: the daemon runs as the unprivileged service user from a
venv of requirements.txt (as ``deploy/foldermill.service`` runs it), with the default
``settle``; real sshd (internal-sftp), vsftpd and smbd write uploads into
``unprocessed/`` as another user, pausing between chunks longer than ``settle``. Their
session processes are hidden from the daemon's /proc view; inotify's open and close
events are what holds each upload until it is complete. Every upload is processed
whole, once, and never caught changing after its claim (the first line of defence is
enough: the check at commit is the second)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.daemon import BASE_CONFIG, Daemon, dashboard_url, folder, http_json, journal, wait_for
from tests.deployed import Deployment, ServiceUser, Site, Smbd, Sshd, Vsftpd, start_deployed

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


def test_a_tree_put_by_sftp_is_processed_under_its_relative_paths_as_a_service_user(
        daemons: list[Daemon], deployment: Deployment, site: Site, deployed_dir: Path, uploader: ServiceUser) -> None:
    """``sftp put -r``: the server makes each directory as the uploader, with the mode
    the client asks for (its local directory's) less the server's umask: the service
    user must be able to move files out of them, so here the client's directories are
    group-writable and the server's umask 0002 (the setgid bit of unprocessed/ is
    inherited, so they are the group's); then it writes each file in turn; with ``recursive = true`` every file
    is processed once, whole, under its path, and the emptied directories go."""
    site.write_config(BASE_CONFIG.replace("[watch]\n", "[watch]\nrecursive = true\nempty_dirs_after = 0.5\n"))
    sshd = Sshd(deployed_dir / "sshd-tree", uploader, site.unprocessed, umask=0o002)
    sshd.start()
    try:
        d = start_deployed(daemons, deployment, site)
        local = deployed_dir / "local-tree"
        expected = {}
        for i in range(24):
            rel = f"partner/{2026 + i % 2}/{i % 3}/batch-{i:02d}.log"
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            expected[rel] = text_of(rel, 20000 + 3000 * i)
            (local / rel).write_bytes(expected[rel])
        subprocess.run(["chmod", "-R", "a+rX,g+w", str(local)], check=True)
        done = subprocess.run(sshd.sftp(f"put -r {local / 'partner'} {site.unprocessed}/partner\n"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        try:
            wait_for(lambda: {e["file"] for e in journal(site.watch) if e["event"] == "processed"} >= set(expected),
                     60, "every file of the tree processed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{d.log()[-3000:]}") from None
        for rel, data in expected.items():
            assert (site.watch / "processed" / rel).read_bytes() == data, f"{rel}: the input as it arrived"
            assert (site.watch / "output" / rel).read_bytes() == data.upper(), rel
        events = journal(site.watch)
        for rel in expected:
            assert [e["event"] for e in events if e["file"] == rel] == ["claimed", "processed"], rel
        wait_for(lambda: not (site.unprocessed / "partner").exists(), 10, "the emptied directories removed")
    finally:
        sshd.stop()
