"""The Celery backend's worker side: ``celery -A workers.celery_app worker -c N``.

A worker node reads the same ``config.toml`` (``FOLDERMILL_CONFIG``, default
``config.toml`` in the working folder) and must mount the watch dir at the same path as
the supervisor. The supervisor still claims, commits and moves every file; a task only
runs the engine on the claimed files of one job and stages their outputs on the shared
storage, exactly as a local worker does (``workers/worker.py``), then pushes the result
onto the supervisor's reply list in Redis (no Celery result backend).

Delivery is at-least-once underneath, exactly-once in effect:

- ``acks_late`` with ``reject_on_worker_lost``: a job whose worker dies is delivered
  again; a Redis error is waited out, then the job is rejected *with* requeue.
- Job keys (``foldermill:job:<owner>:<start token>:<seq>``) are unique across supervisor
  restarts, even when its pid repeats (pid 1 in a container).
- One execution at a time runs a job: it holds the job's lease, kept alive by a
  heartbeat thread. A copy that arrives while the lease is alive waits; it takes over
  only when the lease expired (the runner is known dead), and only then is the file the
  dead runner was on (recorded in Redis before each file) charged one attempt; the
  others are processed again.
- Every execution stages under its own names (``workers/outputs.py``); the first to
  finish delivers its result (a Lua script, once per job); any other removes its own
  staged files. The supervisor commits only the execution it accepts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from workers.config import (
    PIPELINE_TABLES,
    Config,
    load_config,
    max_job_seconds,
    parse_config,
    pipeline_tables,
    pipeline_version,
)
from workers.names import new_execution, shown
from workers.pipelines import Pipelines, compile_pipelines
from workers.store import state_db_path
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
HEARTBEAT_EVERY_S = 1.0
LEASE_TTL_S = 6  # a runner whose heartbeat stopped this long ago is known dead
REDIS_PATIENCE_S = 300.0  # how long a job waits out a Redis outage before going back to the queue
log = logging.getLogger("foldermill.celery")


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
        task_time_limit=max_job_seconds(config.workers),
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
KEEP_PIPELINES = 4  # pipeline versions a node keeps compiled (supervisors may differ during a rollout)


def _worker_config(pipeline: dict[str, Any] | None = None) -> tuple[Config, Pipelines]:
    """The node's config and pipelines for a job. A job says which version of the
    pipelines it needs, with their tables: a node whose own version is older (its
    config.toml predates the supervisor's SIGHUP) reloads it first, and keeps it."""
    if "config" not in _CACHE:
        config = load_config(os.environ.get("FOLDERMILL_CONFIG", "config.toml"))
        _CACHE["config"] = config
        _CACHE["versions"] = {pipeline_version(config.raw): (config, compile_pipelines(config, str(config.base_dir)))}
    own: Config = _CACHE["config"]
    versions: dict[str, tuple[Config, Pipelines]] = _CACHE["versions"]
    wanted = pipeline["version"] if pipeline else pipeline_version(own.raw)
    if wanted not in versions:
        assert pipeline is not None
        raw = {k: v for k, v in own.raw.items() if k not in PIPELINE_TABLES}
        # A supervisor older than pipelines by name sends [pipeline] and [workers] alone.
        raw.update(pipeline.get("tables") or {"pipeline": pipeline["pipeline"], "workers": pipeline["workers"]})
        config = parse_config(raw, own.path)
        versions[wanted] = (config, compile_pipelines(config, str(config.base_dir)))
        while len(versions) > KEEP_PIPELINES:
            del versions[next(iter(versions))]
        log.info("pipelines version %s reloaded from the job (%d nodes)", wanted, versions[wanted][1].node_count())
    return versions[wanted]


def job_tables(raw: Any, version: str) -> dict[str, Any]:
    """What a job carries of its pipelines: the version and the tables it comes from."""
    return {"version": version, "tables": pipeline_tables(raw)}


def _redis(url: str) -> _Redis:
    r = _CACHE.get("redis")
    if r is None:
        r = _CACHE["redis"] = _Redis(url)
    return r


class RedisUnavailable(Exception):
    """Redis stayed unreachable for REDIS_PATIENCE_S while a job needed it."""


# The lease's heartbeat: refreshed while held, taken again if Redis lost it (a restart
# without persistence), left alone if another execution holds it now.
_BEAT = """
local v = redis.call('get', KEYS[1])
if v == false then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('expire', KEYS[1], ARGV[2]) return 1 end
return 0
"""
# Deliver a job's result once: the first execution to finish pushes it; a retry of our
# own call (the reply was lost) still says yes; any other execution is told no.
_FINISH = """
local done = redis.call('hget', KEYS[1], 'done')
if done then return done == ARGV[1] and 1 or 0 end
redis.call('hset', KEYS[1], 'done', ARGV[1])
redis.call('expire', KEYS[1], ARGV[3])
redis.call('rpush', KEYS[2], ARGV[2])
redis.call('expire', KEYS[2], ARGV[3])
if redis.call('get', KEYS[3]) == ARGV[1] then redis.call('del', KEYS[3]) end
return 1
"""


class _Redis:
    """A node's Redis client whose essential calls wait out an outage (bounded)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._beat = self.client.register_script(_BEAT)
        self._finish = self.client.register_script(_FINISH)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._retry(lambda: getattr(self.client, method)(*args, **kwargs), method)

    def finish(self, job: str, reply: str, lease: str, execution: str, text: str) -> bool:
        return bool(self._retry(lambda: self._finish(keys=[job, reply, lease], args=[execution, text, KEY_TTL_S]),
                                "push the result"))

    def beat(self, lease: str, execution: str) -> bool:
        """One heartbeat, never retried (the next one comes in HEARTBEAT_EVERY_S)."""
        try:
            return bool(self._beat(keys=[lease], args=[execution, LEASE_TTL_S]))
        except self.errors:
            return False

    def _retry(self, work: Any, what: str) -> Any:
        deadline = time.monotonic() + REDIS_PATIENCE_S
        delay = 0.2
        while True:
            try:
                return work()
            except self.errors as exc:
                if time.monotonic() >= deadline:
                    raise RedisUnavailable(f"Redis unreachable for {REDIS_PATIENCE_S:g}s ({exc}); "
                                           "the job goes back to the queue") from None
                log.warning("cannot reach Redis to %s (%s): retrying in %.1fs", what, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


class _Heartbeat(threading.Thread):
    """Keeps the job's lease alive while this execution runs: when the process dies
    (SIGKILL, OOM, the node lost), the lease expires within LEASE_TTL_S and only then
    may another execution take over and charge the file this one was on."""

    def __init__(self, r: _Redis, lease: str, execution: str) -> None:
        super().__init__(name="foldermill-heartbeat", daemon=True)
        self.r, self.lease, self.execution = r, lease, execution
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_EVERY_S):
            self.r.beat(self.lease, self.execution)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def job_key(job: str) -> str:
    """The job's hash: started, at/by (the file an execution is on), done, sent."""
    return f"foldermill:job:{job}"


def lease_key(job: str) -> str:
    """Who runs the job now; expires LEASE_TTL_S after its holder's last heartbeat."""
    return f"foldermill:lease:{job}"


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
        """Best effort: progress is for the dashboard, and a broker outage must not
        cost the file being processed an attempt."""
        import redis

        self.last = time.monotonic()
        self.info.update(fields, lines_done=int(self[P_LINES]), bytes_done=int(self[P_BYTES]), beat=time.time())
        try:
            self.client.hset(self.key, mapping={k: json.dumps(v) for k, v in self.info.items()})
            self.client.expire(self.key, 120)
        except (redis.RedisError, OSError):
            pass


def process_job(task: Any, payload: dict[str, Any]) -> None:
    """One job: the same work as a local worker's, for files claimed by the supervisor.

    A Redis error outside the processing itself is waited out (the broker restarts);
    past REDIS_PATIENCE_S the message is rejected *with* requeue, never dropped (the
    app acknowledges neither failures nor timeouts)."""
    from celery.exceptions import Reject

    broken = ""
    try:
        config, pipelines = _worker_config(payload.get("pipeline"))
    except Exception as exc:  # a pipeline this node cannot build (a processor not deployed here...)
        config, pipelines = _worker_config()  # its own, which it started with
        version = (payload.get("pipeline") or {}).get("version", "?")
        broken = (f"the celery node {socket.gethostname()} cannot load pipeline version {version}: "
                  f"{type(exc).__name__}: {exc}")
        log.error("%s; failing the job's files (an attempt each)", broken)
    execution = new_execution()
    try:
        _run_job(task, config, pipelines, _redis(config.celery.broker_url), payload, execution, broken)
    except RedisUnavailable as exc:
        raise Reject(str(exc), requeue=True) from None


def _run_job(task: Any, config: Config, pipelines: Pipelines, r: _Redis, payload: dict[str, Any], execution: str,
             broken: str = "") -> None:
    """``broken``: why this node cannot run the job's pipeline; every file then fails
    this attempt with that reason (so a bad rollout reaches failed/, never loops)."""
    job, lease = job_key(payload["job"]), lease_key(payload["job"])
    if r.call("hget", job, "done") or not _take_lease(r, job, lease, execution, payload):
        return  # another execution delivered its result
    beat = _Heartbeat(r, lease, execution)
    beat.start()
    try:
        died_at = _dead_runners_position(r, job, execution)
        results, pid, nodes = _run_items(task, config, pipelines, r, job, execution, payload, died_at, broken)
        stats = {tag: (int(v[0]), int(v[1]), int(v[2]), v[3]) for tag, v in nodes.items()}
        text = json.dumps({**asdict(JobResult(-1, pid, payload["seq"], results, stats, process_rss())),
                           "execution": execution})
        accepted = r.finish(job, payload["reply"], lease, execution, text)
    finally:
        beat.stop()
    if not accepted:  # another execution of this job delivered first: ours is never committed
        log.warning("job %s: another execution delivered first; removing this one's staged outputs",
                    payload["job"])
        _remove_own_staged(config.output_dir, results)


def _take_lease(r: _Redis, job: str, lease: str, execution: str, payload: dict[str, Any]) -> bool:
    """The lease says who runs the job; it lives while its holder's heartbeat does. A
    copy of a job whose runner is alive (a redelivery) waits: it takes over only once
    that runner is known dead (its lease expired), and stops if the job got done."""
    waited = False
    while not r.call("set", lease, execution, nx=True, ex=LEASE_TTL_S):
        if r.call("hget", job, "done"):
            return False
        if not waited:
            log.info("job %s is running elsewhere (its heartbeat is alive): waiting for it", payload["job"])
            waited = True
        time.sleep(HEARTBEAT_EVERY_S)
    r.call("hsetnx", job, "started", time.time())
    r.call("expire", job, KEY_TTL_S)
    return True


def _dead_runners_position(r: _Redis, job: str, execution: str) -> int:
    """The file an earlier execution was on when it died (we hold the lease now, so its
    heartbeat stopped), or -1."""
    at, by = r.call("hmget", job, ["at", "by"])
    return int(at) if at is not None and by is not None and by.decode() != execution else -1


def _run_items(task: Any, config: Config, pipelines: Pipelines, r: _Redis, job: str, execution: str,
               payload: dict[str, Any], died_at: int,
               broken: str = "") -> tuple[list[ItemResult], int, dict[str, list[float]]]:
    host, pid = socket.gethostname(), os.getpid()
    name = task.request.hostname or host
    progress = _Progress(r.client, f"foldermill:worker:{name}:{pid}", {"hostname": name, "pid": pid, "files_done": 0})
    # With [watch] dedupe = "content" on the supervisor, the node hashes each file and
    # skips one whose content the shared state database says was processed before.
    dedupe_db = str(state_db_path(config.watch.dir)) if payload.get("dedupe") else ""
    args = WorkerArgs(0, os.getppid(), str(config.path), {}, payload.get("trace_every", 0), False, 0, dedupe_db)
    nodes: dict[str, list[float]] = {}
    results = []
    for i, raw in enumerate(payload["items"]):
        item = JobItem(*raw)
        if i == died_at:
            results.append(ItemResult(item.file_id, False, reason=f"celery worker died while processing "
                                      f"{shown(item.name)} (its heartbeat stopped; the job was delivered again)"))
            continue
        if broken:
            results.append(ItemResult(item.file_id, False, reason=f"{shown(item.name)}: {broken}"))
            continue
        r.call("hset", job, mapping={"at": i, "by": execution})
        progress.push(file=shown(item.name), size=item.size, started=time.time())
        results.append(_within_timeout(config.workers.file_timeout, item, lambda it=item: run_item(
            args, pipelines, config.output_dir, config.watch.dir / "underprocess", it, progress, nodes)))
        progress.info["files_done"] += 1
    progress.push(file=None)
    return results, pid, nodes


def _remove_own_staged(out_dir: Path, results: list[ItemResult]) -> None:
    for res in results:
        for temp, _ in res.staged:
            (out_dir / temp).unlink(missing_ok=True)


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
        return ItemResult(item.file_id, False, reason=f"{shown(item.name)}: {exc}")
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


def job_payload(job: str, reply: str, seq: int, items: tuple[JobItem, ...], trace_every: int,
                pipeline: dict[str, Any] | None = None, dedupe: bool = False) -> dict[str, Any]:
    """What a task gets: ``job`` names the job uniquely across supervisor restarts;
    ``pipeline`` the version it needs and its tables; ``dedupe`` whether to skip a
    file whose content was processed before."""
    return {"job": job, "reply": reply, "seq": seq, "trace_every": trace_every, "pipeline": pipeline,
            "dedupe": dedupe, "items": [[i.file_id, i.name, i.final_name, i.size, i.replay, i.pipeline] for i in items]}
