"""Run one file through each backend from a venv that holds only requirements.txt.

``make test`` builds that venv (``.venv-runtime``) and runs this script with it, so a
runtime dependency that only a dev dependency brings (kombu's Redis transport needs
``packaging``) fails CI instead of a user's first start. No pytest here: it is not in
that venv. Exit status 0: both backends processed their file; 1: what failed, with the
logs.

    .venv-runtime/bin/python tests/smoke_runtime.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon import wait_for  # noqa: E402 - after the path is set
from tests.redis_server import RedisServer  # noqa: E402

CONFIG = """
[watch]
dir = "watch_dir"
poll_interval = 0.2
settle = 0.2

[web]
enabled = false

[workers]
count = 1
max_attempts = 1
file_timeout = 20
batch_files = 4
{backend}

[pipeline.nodes.start]
processor = "upper"
"""
CELERY = """backend = "celery"

[celery]
broker_url = "{url}"
queue = "fm-smoke"
visibility_timeout = 200
"""


class SmokeFailure(Exception):
    pass


def run_once(base: Path, name: str) -> None:
    """Drop one file, run ``supervisor.py --once``, check it was processed."""
    watch = base / "watch_dir"
    (watch / "unprocessed").mkdir(parents=True, exist_ok=True)
    (watch / "unprocessed" / "hello.log").write_text("hello\nworld\n")
    log = base / f"supervisor-{name}.log"
    with open(log, "w") as out:
        try:
            code = subprocess.run([sys.executable, str(ROOT / "supervisor.py"), "-c", str(base / "config.toml"),
                                   "--once"], cwd=base, stdout=out, stderr=subprocess.STDOUT, timeout=120).returncode
        except subprocess.TimeoutExpired:
            raise SmokeFailure(f"{name}: supervisor --once did not finish in 120s\n{log.read_text()}") from None
    output = watch / "output" / "hello.log"
    if code != 0 or not (watch / "processed" / "hello.log").exists() or not output.exists():
        raise SmokeFailure(f"{name}: exit status {code}, hello.log not processed\n{log.read_text()}")
    if output.read_text() != "HELLO\nWORLD\n":
        raise SmokeFailure(f"{name}: wrong output {output.read_text()!r}")
    print(f"smoke_runtime: {name} backend: ok", flush=True)


def smoke_local(base: Path) -> None:
    base.mkdir()
    (base / "config.toml").write_text(textwrap.dedent(CONFIG.format(backend="")))
    run_once(base, "local")


def smoke_celery(base: Path) -> None:
    """A real redis-server on loopback and a real ``celery -A workers.celery_app worker``."""
    base.mkdir()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SmokeFailure("redis-server not found (sudo apt-get install redis-server; make test does it as root)")
    redis = RedisServer(binary, base)
    redis.start()
    config = base / "config.toml"
    config.write_text(textwrap.dedent(CONFIG.format(backend=CELERY.format(url=redis.url))))
    node_log = base / "celery-node.log"
    env = {**os.environ, "FOLDERMILL_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    with open(node_log, "w") as out:
        node = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-c", "1",
                                 "-n", "smoke@%h", "-Q", "fm-smoke", "--without-gossip", "--without-mingle",
                                 "--without-heartbeat", "--loglevel", "INFO"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for(lambda: "ready." in node_log.read_text() or node.poll() is not None, 60, "the celery node")
        except AssertionError:
            raise SmokeFailure(f"celery node did not start in 60s\n{node_log.read_text()}") from None
        if node.poll() is not None:
            raise SmokeFailure(f"celery node exited with {node.returncode}\n{node_log.read_text()}")
        run_once(base, "celery")
    finally:
        _stop(node)
        redis.stop()


def _stop(node: subprocess.Popen) -> None:
    node.terminate()
    try:
        node.wait(timeout=20)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait()


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="fm-smoke-"))
    try:
        smoke_local(tmp / "local")
        smoke_celery(tmp / "celery")
    except (SmokeFailure, RuntimeError) as exc:
        print(f"smoke_runtime: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
