"""System components the tests drive for real: Prometheus, Chromium, Redis, sshd, vsftpd, smbd.

``make test`` installs them (Debian packages) when it runs as root. Under ``CI=true`` a
missing component fails the test; elsewhere the test skips and says how to get it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.redis_server import free_port

__all__ = ["free_port", "require", "require_root", "unavailable"]

PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus", "chromium": "chromium",
            "redis-server": "redis-server", "chattr": "e2fsprogs", "faketime": "faketime",
            "gzip": "gzip", "bzip2": "bzip2", "xz": "xz-utils", "zstd": "zstd",
            # the network servers of the "as deployed" tests (tests/deployed.py) and their clients
            "sshd": "openssh-server", "sftp": "openssh-client", "ssh-keygen": "openssh-client",
            "vsftpd": "vsftpd", "smbd": "samba", "smbpasswd": "samba", "smbclient": "smbclient",
            "curl": "curl", "setpriv": "util-linux", "runuser": "util-linux", "useradd": "passwd",
            "userdel": "passwd", "groupadd": "passwd", "groupdel": "passwd"}

# Servers live in sbin, which a non-login PATH may lack.
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def require(binary: str) -> str:
    """The path of ``binary``, or fail (CI) / skip (elsewhere) with the install command."""
    path = shutil.which(binary) or shutil.which(binary, path=SBIN)
    if path:
        return path
    how = f"install it with: sudo apt-get install {PACKAGES.get(binary, binary)} (make test does it as root)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{binary} is required under CI=true and was not found; {how}")
    pytest.skip(f"{binary} not found; {how}")


def unavailable(what: str) -> None:
    """A capability the test needs is missing: fail under CI=true, skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"this test needs {what} under CI=true")
    pytest.skip(f"needs {what}")


def require_root(why: str) -> None:
    """Some guarantees are shown with root's tools (chattr +i, a read-only bind mount)."""
    if os.geteuid() != 0:
        unavailable(f"root: {why}")
