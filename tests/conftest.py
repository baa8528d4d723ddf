"""Fixtures for the daemon tests: a watch dir in tmp_path and supervisors that are
always stopped, with a check that none of their processes outlives the test; and the
"as deployed" ones (tests/deployed.py): a service user, an uploader, the deployment,
real sshd/vsftpd/smbd servers writing into a site's unprocessed/."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

from tests.components import require, require_root
from tests.daemon import Daemon, alive, wait_for
from tests.deployed import (
    LOGIN_SHELL,
    Deployment,
    EventRecorder,
    Group,
    ServiceUser,
    Site,
    Smbd,
    Sshd,
    Vsftpd,
    python_for,
    world_dir,
)
from tests.redis_server import RedisServer

# In CI the property tests are derandomized: the same examples every run, so main stays
# green or red for a reason; locally they explore new examples each run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")


# The fixtures of the "as deployed" tests: session-scoped users and a venv built for the
# service user (tens of seconds). Under pytest-xdist (make test) their tests share one
# worker, so each is built once.
DEPLOYED_FIXTURES = {"deployed_group", "service_user", "uploader", "deployment"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if DEPLOYED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("deployed"))


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Supervisors started by a test go in this list; teardown kills what is left and
    asserts that no worker or manager process survives its supervisor."""
    started: list[Daemon] = []
    yield started
    leftovers = []
    for d in started:
        leftovers += [c.pid for c in d.children()]
        if d.alive():
            d.kill()
    wait_for(lambda: not alive(leftovers), 10, f"children of the supervisors to exit: {alive(leftovers)}")


@pytest.fixture(autouse=True)
def no_stray_children() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield

    def strays() -> list[int]:
        now = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]
        return alive(now)

    wait_for(lambda: not strays(), 10, "the test's child processes to exit")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, on a free loopback port."""
    server = RedisServer(require("redis-server"), tmp_path)
    server.start()
    yield server
    server.stop()


# --- as deployed (tests/deployed.py) ---------------------------------------------------------

def _require_users() -> None:
    require_root("creating system users and running processes as them")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "chpasswd", "setpriv"):
        require(tool)


@pytest.fixture(scope="session")
def deployed_group() -> Iterator[Group]:
    """The group that the uploader writes unprocessed/ through and the service user reads
    the uploads through (both are members; unprocessed/ is setgid to it)."""
    _require_users()
    group = Group.create()
    yield group
    group.remove()


@pytest.fixture(scope="session")
def service_user(deployed_group: Group) -> Iterator[ServiceUser]:
    """The unprivileged user the daemon runs as (nologin, no password), one per session."""
    user = ServiceUser.create("fmsvc", groups=[deployed_group])
    yield user
    user.remove()


@pytest.fixture(scope="session")
def uploader(deployed_group: Group) -> Iterator[ServiceUser]:
    """The user the network servers write uploads as: another user than the daemon's,
    with a password (vsftpd, smbd; sshd needs the account unlocked even for its key), a
    shell in /etc/shells (vsftpd's pam_shells) and a home that exists (vsftpd)."""
    homes = world_dir("foldermill-home-")
    user = ServiceUser.create("fmup", password=secrets.token_hex(12), shell=LOGIN_SHELL, groups=[deployed_group],
                              home=homes / "uploader")
    yield user
    user.remove()
    shutil.rmtree(homes, ignore_errors=True)


@pytest.fixture(scope="session")
def deployment(service_user: ServiceUser) -> Iterator[Deployment]:
    """The daemon's code and a venv of its pinned requirements, under /var/tmp, readable
    and runnable by the service user.

    Session-scoped because it is slow: a venv and a pip install of requirements.txt
    (Celery, Flask, watchdog...) take tens of seconds, the same for every test, and no
    test changes it (tests write only into their own site)."""
    deployment = Deployment.build(service_user)
    yield deployment
    deployment.remove()


@pytest.fixture
def deployed_dir() -> Iterator[Path]:
    """This test's folder under /var/tmp (mode 0755: other users can reach into it,
    which they cannot in tmp_path under /tmp/pytest-of-root)."""
    require_root("a folder for the servers and the site, outside root's private tmp")
    path = world_dir("foldermill-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def site(deployed_dir: Path, service_user: ServiceUser, deployed_group: Group) -> Site:
    """A watch dir owned by the service user (config.toml with tests.daemon.BASE_CONFIG),
    whose unprocessed/ the uploader can write into."""
    return Site.create(deployed_dir, service_user, deployed_group)


@pytest.fixture
def file_events(service_user: ServiceUser) -> Iterator[Callable[[Path], EventRecorder]]:
    """Start recording the inotify events of a folder, as the service user sees them."""
    recorders: list[EventRecorder] = []
    python = python_for(service_user)

    def start(folder: Path) -> EventRecorder:
        recorders.append(EventRecorder(folder, python, user=service_user))
        return recorders[-1]

    yield start
    for recorder in recorders:
        recorder.stop()


@pytest.fixture
def sshd(deployed_dir: Path, uploader: ServiceUser, site: Site) -> Iterator[Sshd]:
    """A real sshd (internal-sftp) on a free loopback port; uploads land in site.unprocessed."""
    for tool in ("sshd", "sftp", "ssh-keygen"):
        require(tool)
    server = Sshd(deployed_dir / "sshd", uploader, site.unprocessed)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vsftpd(deployed_dir: Path, uploader: ServiceUser, site: Site) -> Iterator[Vsftpd]:
    """A real vsftpd on a free loopback port; the uploader lands in site.unprocessed."""
    for tool in ("vsftpd", "curl"):
        require(tool)
    server = Vsftpd(deployed_dir / "vsftpd", uploader, site.unprocessed)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def smbd(deployed_dir: Path, uploader: ServiceUser, site: Site) -> Iterator[Smbd]:
    """A real smbd on a free loopback port, its share being site.unprocessed."""
    for tool in ("smbd", "smbpasswd", "smbclient"):
        require(tool)
    server = Smbd(deployed_dir / "smbd", uploader, site.unprocessed)
    server.start()
    yield server
    server.stop()
