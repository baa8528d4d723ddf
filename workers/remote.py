"""The supervisor's side of the Celery backend: send jobs, receive results, watch the
broker and the worker nodes. No multiprocessing here; Redis is the broker.

A job that is out is left alone while an execution of it is alive (its lease, kept
by a heartbeat, ``workers/celery_app.py``), however long the broker was away. It goes
out again only when it is really lost: Redis forgot it (a restart without persistence:
its key is gone and no execution re-took its lease within a grace period), or it had
no sign of life for longer than Celery's own redelivery could take.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from typing import Any, cast

from workers.celery_app import (
    LEASE_TTL_S,
    TASK_NAME,
    job_key,
    job_payload,
    job_tables,
    lease_key,
    make_app,
    result_from_json,
)
from workers.config import Config, max_job_seconds
from workers.errors import FoldermillError
from workers.messages import BrokerNews, JobDone
from workers.worker import Job

PING_EVERY_S = 5.0
WORKER_SEEN_S = 30.0
CHECK_JOBS_EVERY_S = 2.0
SUPERVISOR_TTL_S = 5  # a supervisor's keepalive, refreshed by its pump every second
REAP_EVERY_S = 5.0
REPLY_PREFIX = "foldermill:reply:"
ALIVE_PREFIX = "foldermill:supervisor:"
GONE_GRACE_S = 2 * LEASE_TTL_S  # after a restart, live runners take their leases again within a beat


class BackendMissing(FoldermillError):
    """The Celery backend cannot run from this installation (a module is missing)."""


class BrokerDown(OSError):
    """The broker did not take a job (the supervisor keeps the files and tries again)."""


class CeleryBackend:
    def __init__(self, config: Config, owner: str, trace_every: int, pipeline: str) -> None:
        import redis

        self.config = config
        self.pipeline = pipeline  # the version every job sent needs (workers/config.py pipeline_version)
        self.app = make_app(config)
        self.app.conf.broker_connection_timeout = 2
        self.redis = redis.Redis.from_url(config.celery.broker_url, socket_timeout=5, socket_connect_timeout=2)
        self.owner = owner
        # Unique per start: a supervisor's pid repeats across restarts (pid 1 in a container).
        self.run_id = secrets.token_hex(8)
        self.reply = f"{REPLY_PREFIX}{owner}:{self.run_id}"
        self.alive_key = f"{ALIVE_PREFIX}{owner}:{self.run_id}"
        self.suspects: set[str] = set()  # reply lists whose supervisor looked dead at the last reap
        self.trace_every = trace_every
        self.broker_ok = True
        self.broker_error = ""
        self.nodes: dict[str, float] = {}  # worker node name -> last time it answered a ping

    def preflight(self) -> None:
        """Load the broker transport now: a missing module (kombu's Redis transport
        needs ``packaging``) is a start-up error, not a broker outage reported forever."""
        try:
            self.app.connection_for_write().transport  # noqa: B018 - imports the transport module
        except ImportError as exc:
            missing = exc.name or str(exc)
            raise BackendMissing(f"the Celery backend cannot load its Redis transport: {exc} (install the "
                                 f"package {missing!r}: pip install -r requirements.txt)") from None

    def use(self, config: Config, pipeline: str) -> None:
        """A reload: jobs sent from now on need this pipeline, with these limits."""
        self.config = config
        self.pipeline = pipeline

    def job_id(self, seq: int) -> str:
        return f"{self.owner}:{self.run_id}:{seq}"

    def send(self, job: Job) -> None:
        """Mark the job as sent (the mark survives a blip, not a Redis restart without
        persistence: that is how a lost job is told from a queued one), then send it."""
        job_id = self.job_id(job.seq)
        config = self.config
        payload = job_payload(job_id, self.reply, job.seq, job.items, self.trace_every,
                              job_tables(config.raw, self.pipeline), config.watch.dedupe == "content")
        try:
            self.redis.hset(job_key(job_id), "sent", time.time())
            self.redis.expire(job_key(job_id), 24 * 3600)
            # The job's own time limit: the limits of the pipeline it needs, not the node's.
            self.app.send_task(TASK_NAME, args=[payload], queue=config.celery.queue, retry=False,
                               time_limit=max_job_seconds(config.workers))
        except Exception as exc:  # kombu raises its own OperationalError family
            self._down(exc)
            raise BrokerDown(str(exc)) from None

    def job_states(self, seqs: list[int]) -> dict[int, str] | None:
        """Each job: "alive" (an execution holds its lease), "known" (Redis has it:
        queued, or about to be delivered again), "gone" (Redis forgot it). None when
        Redis does not answer."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for seq in seqs:
                pipe.exists(lease_key(self.job_id(seq)))
                pipe.exists(job_key(self.job_id(seq)))
            flags = pipe.execute()
        except Exception:  # the broker is down: the pump reports it
            return None
        return {seq: "alive" if flags[2 * i] else "known" if flags[2 * i + 1] else "gone"
                for i, seq in enumerate(seqs)}

    def _down(self, exc: BaseException) -> None:
        self.broker_ok = False
        self.broker_error = f"{type(exc).__name__}: {exc}"

    def pump(self, inbox: queue.SimpleQueue, stop: threading.Event) -> None:
        """Results (BLPOP on our reply list) into the loop's inbox; broker state too."""
        last_ping = last_reap = 0.0
        while not stop.is_set():
            try:
                self.redis.set(self.alive_key, 1, ex=SUPERVISOR_TTL_S)
                item = self.redis.blpop([self.reply], timeout=1)
                if not self.broker_ok:
                    self.broker_ok, self.broker_error = True, ""
                    inbox.put(BrokerNews(True))
                if item is not None:
                    inbox.put(JobDone(result_from_json(item[1])))
                if time.monotonic() - last_ping >= PING_EVERY_S:
                    last_ping = time.monotonic()
                    self._ping()
                if time.monotonic() - last_reap >= REAP_EVERY_S:
                    last_reap = time.monotonic()
                    self._reap()
            except Exception as exc:  # redis.ConnectionError and friends: the broker is down
                if self.broker_ok:
                    self._down(exc)
                    inbox.put(BrokerNews(False, self.broker_error))
                stop.wait(1.0)

    def _reap(self) -> None:
        """Results pushed for a supervisor that died (a job it sent finished after it)
        are never committed by anyone: remove their staged files. A reply list is reaped
        only when its supervisor's keepalive was missing at two reaps in a row (after a
        Redis restart every keepalive is missing until its pump runs again)."""
        dead = set()
        for key in self.redis.scan_iter(f"{REPLY_PREFIX}*", count=100):
            reply = key.decode()
            if reply != self.reply and not self.redis.exists(ALIVE_PREFIX + reply[len(REPLY_PREFIX):]):
                dead.add(reply)
        for reply in dead & self.suspects:
            while (text := self.redis.lpop(reply)) is not None:
                for item in result_from_json(cast(bytes, text)).items:
                    for temp, _ in item.staged:
                        (self.config.output_dir / temp).unlink(missing_ok=True)
        self.suspects = dead

    def _ping(self) -> None:
        now = time.time()
        for reply in self.app.control.ping(timeout=0.5) or []:
            for name in reply:
                self.nodes[name] = now

    def workers(self) -> list[dict[str, Any]]:
        """Remote workers for the dashboard: their progress hashes, plus idle nodes."""
        rows: list[dict[str, Any]] = []
        try:
            for key in self.redis.scan_iter("foldermill:worker:*", count=100):
                fields = cast(dict[bytes, bytes], self.redis.hgetall(key))
                data = {k.decode(): json.loads(v) for k, v in fields.items()}
                busy = bool(data.get("file"))
                size = data.get("size") or 0
                rows.append({"slot": data.get("hostname"), "hostname": data.get("hostname"), "pid": data.get("pid"),
                             "alive": time.time() - data.get("beat", 0) < WORKER_SEEN_S or
                             time.time() - self.nodes.get(data.get("hostname", ""), 0) < WORKER_SEEN_S,
                             "state": "busy" if busy else "idle", "file": data.get("file"),
                             "progress_percent": round(100 * data.get("bytes_done", 0) / size, 1) if size else None,
                             "lines_done": data.get("lines_done", 0), "files_done": data.get("files_done", 0),
                             "rss": 0, "cpu_percent": 0.0, "restarts": 0, "uptime_s": 0.0, "backend": "celery"})
        except Exception:  # the broker is down: nothing to show
            return []
        seen = {r["hostname"] for r in rows}
        for name, when in self.nodes.items():
            if name not in seen and time.time() - when < WORKER_SEEN_S:
                rows.append({"slot": name, "hostname": name, "pid": None, "alive": True, "state": "idle",
                             "file": None, "progress_percent": None, "lines_done": 0, "files_done": 0, "rss": 0,
                             "cpu_percent": 0.0, "restarts": 0, "uptime_s": 0.0, "backend": "celery"})
        return rows

    def queue_depth(self) -> int | None:
        try:
            return int(self.redis.llen(self.config.celery.queue))
        except Exception:
            return None


class JobWatch:
    """Decides which outstanding Celery jobs are really lost; the supervisor sends only
    those again. ``life`` maps a job's seq to its last sign of life (sent, or seen
    alive), in monotonic seconds."""

    def __init__(self, config: Config, life: dict[int, float]) -> None:
        self.patience_s = max_job_seconds(config.workers) + config.celery.visibility_timeout
        self.life = life
        self.gone_since: dict[int, float] = {}
        self.next_check = 0.0

    def outage_over(self, now: float, seqs: list[int]) -> None:
        """An outage is no job's fault: every job out starts its patience again."""
        for seq in seqs:
            self.life[seq] = now
        self.next_check = 0.0

    def due(self, now: float) -> bool:
        """At most every CHECK_JOBS_EVERY_S: a look-up of the jobs' states per check."""
        if now < self.next_check:
            return False
        self.next_check = now + CHECK_JOBS_EVERY_S
        return True

    def forget(self, seq: int) -> None:
        self.life.pop(seq, None)
        self.gone_since.pop(seq, None)

    def lost(self, now: float, jobs: dict[int, Job], states: dict[int, str]) -> list[int]:
        """The jobs to send again, given their states (``CeleryBackend.job_states``)."""
        lost = []
        for seq, state in states.items():
            if state == "alive":
                self.life[seq] = now
                self.gone_since.pop(seq, None)
            elif state == "gone":
                if now - self.gone_since.setdefault(seq, now) >= GONE_GRACE_S:
                    lost.append(seq)
            else:
                self.gone_since.pop(seq, None)
                if now - self.life.setdefault(seq, now) > self.patience_s:
                    lost.append(seq)
        return [seq for seq in lost if seq in jobs]
