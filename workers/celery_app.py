"""The Celery backend's worker side: ``celery -A workers.celery_app worker -c N``.

A worker node reads the same ``config.toml`` (``FOLDERMILL_CONFIG``, default
``config.toml`` in the working folder) and must mount the watch dir at the same path as
the supervisor. The supervisor still claims, commits and moves every file; a task only
runs the engine on the claimed files of one job and stages their outputs on the shared
storage, exactly as a local worker does (``workers/worker.py``), then pushes the result
onto the supervisor's reply list in Redis (no Celery result backend).

Delivery: ``acks_late`` with ``reject_on_worker_lost``, so a task whose worker dies is
delivered again. A redelivered job knows which file its first run was on (recorded in
Redis before each file): that file costs one attempt, the others are done again (their
outputs are rewritten identically).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import asdict
from typing import Any

from workers.config import Config, load_config
from workers.graph import Graph, compile_graph
from workers.worker import (
    P_BYTES,
    P_LINES,
    SLOT_SIZE,
    ItemResult,
    JobItem,
    JobResult,
    WorkerArgs,
    process_rss,
    run_item,
)

TASK_NAME = "foldermill.process_job"
KEY_TTL_S = 24 * 3600
PROGRESS_EVERY_S = 0.25


def make_app(config: Config) -> Any:
    """The Celery app for ``config`` (used by the supervisor and by worker nodes)."""
    from celery import Celery

    c = config.celery
    app = Celery("foldermill", broker=c.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_ignore_result=True, task_default_queue=c.queue, task_serializer="json", accept_content=["json"],
        broker_transport_options={"visibility_timeout": c.visibility_timeout},
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # Limits, as the local pool has them: each file gets file_timeout (an alarm in the
        # task); a job stuck past all of its files' time is killed by Celery and, not
        # acknowledged, delivered again, where the file it was on is charged. A child above
        # max_memory_mb is replaced after its job.
        task_time_limit=config.workers.file_timeout * config.workers.batch_files + 30,
        task_acks_on_failure_or_timeout=False,
        worker_max_memory_per_child=config.workers.max_memory_mb * 1024,
    )
    app.task(name=TASK_NAME, bind=True)(process_job)
    return app


def __getattr__(name: str) -> Any:
    """``celery -A workers.celery_app`` looks up ``app``: built on first use, from the
    config named by FOLDERMILL_CONFIG, so that importing this module reads nothing."""
    if name != "app":
        raise AttributeError(name)
    app = make_app(_worker_config()[0])
    globals()["app"] = app
    return app


_CACHE: dict[str, Any] = {}


def _worker_config() -> tuple[Config, Graph]:
    if "config" not in _CACHE:
        config = load_config(os.environ.get("FOLDERMILL_CONFIG", "config.toml"))
        _CACHE["config"] = config
        _CACHE["graph"] = compile_graph(config.pipeline, str(config.base_dir))
    return _CACHE["config"], _CACHE["graph"]


def _redis(url: str) -> Any:
    import redis

    client = _CACHE.get("redis")
    if client is None:
        client = _CACHE["redis"] = redis.Redis.from_url(url, socket_timeout=10)
    return client


class _Progress(list):
    """The progress slot a local worker writes into shared memory, here pushed to a
    Redis hash at most every PROGRESS_EVERY_S (the dashboard shows remote workers)."""

    def __init__(self, client: Any, key: str, info: dict[str, Any]) -> None:
        super().__init__([0.0] * SLOT_SIZE)
        self.client, self.key, self.info = client, key, info
        self.last = 0.0

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        now = time.monotonic()
        if index in (P_BYTES, P_LINES) and now - self.last >= PROGRESS_EVERY_S:
            self.push()

    def push(self, **fields: Any) -> None:
        self.last = time.monotonic()
        self.info.update(fields, lines_done=int(self[P_LINES]), bytes_done=int(self[P_BYTES]), beat=time.time())
        self.client.hset(self.key, mapping={k: json.dumps(v) for k, v in self.info.items()})
        self.client.expire(self.key, 120)


def process_job(task: Any, payload: dict[str, Any]) -> None:
    """One job: the same work as a local worker's, for files claimed by the supervisor."""
    config, graph = _worker_config()
    client = _redis(config.celery.broker_url)
    job_key = f"foldermill:job:{payload['owner']}:{payload['seq']}"
    rerun = not client.hsetnx(job_key, "started", time.time())
    client.expire(job_key, KEY_TTL_S)
    if rerun and client.hget(job_key, "done"):
        return  # its result was delivered before the worker died
    died_at = int(client.hget(job_key, "at") or -1) if rerun else -1
    host, pid = socket.gethostname(), os.getpid()
    progress = _Progress(client, f"foldermill:worker:{task.request.hostname or host}:{pid}",
                         {"hostname": task.request.hostname or host, "pid": pid, "files_done": 0})
    args = WorkerArgs(0, os.getppid(), str(config.path), {}, payload.get("trace_every", 0), False, 0)
    nodes: dict[str, list[float]] = {}
    results = []
    for i, raw in enumerate(payload["items"]):
        item = JobItem(*raw)
        if i == died_at:
            results.append(ItemResult(item.file_id, False, reason=f"celery worker died while processing "
                                      f"{item.name!r} (the job was delivered again)"))
            continue
        client.hset(job_key, "at", i)
        progress.push(file=item.name, size=item.size, started=time.time())
        results.append(_within_timeout(config.workers.file_timeout, item, lambda it=item: run_item(
            args, graph, config.output_dir, config.watch.dir / "underprocess", it, progress, nodes)))
        progress.info["files_done"] += 1
    progress.push(file=None)
    stats = {tag: (int(v[0]), int(v[1]), int(v[2]), v[3]) for tag, v in nodes.items()}
    result = JobResult(-1, pid, payload["seq"], results, stats, process_rss())
    client.rpush(payload["reply"], json.dumps(asdict(result)))
    client.hset(job_key, "done", 1)


class FileTimeout(Exception):
    """Raised into a processor that runs past file_timeout (run_item turns it into a
    failed attempt, closing what it opened)."""


def _within_timeout(seconds: float, item: JobItem, work: Any) -> ItemResult:
    """Run one file under an alarm: past ``seconds`` it is an ordinary failed attempt
    (the worker process lives on, unlike the local pool's kill)."""
    def expire(_signum: int, _frame: Any) -> None:
        raise FileTimeout(f"took longer than file_timeout = {seconds:g}s (on a celery worker)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return work()
    except FileTimeout as exc:  # raised outside the processing itself
        return ItemResult(item.file_id, False, reason=f"{item.name}: {exc}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def result_from_json(text: bytes | str) -> JobResult:
    """The supervisor's side: a pushed result back into dataclasses."""
    data = json.loads(text)
    items = [ItemResult(**{**i, "staged": [tuple(p) for p in i["staged"]],
                           "routes": [(n, r) for n, r in i["routes"]]}) for i in data["items"]]
    nodes = {tag: tuple(v) for tag, v in data["nodes"].items()}
    return JobResult(data["slot"], data["pid"], data["seq"], items, nodes, data["rss_bytes"])


def job_payload(owner: str, reply: str, seq: int, items: tuple[JobItem, ...], trace_every: int) -> dict[str, Any]:
    return {"owner": owner, "reply": reply, "seq": seq, "trace_every": trace_every,
            "items": [[i.file_id, i.name, i.final_name, i.size] for i in items]}
