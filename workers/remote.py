"""The supervisor's side of the Celery backend: send jobs, receive results, watch the
broker and the worker nodes. No multiprocessing here; Redis is the broker.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from typing import Any

from workers.celery_app import TASK_NAME, job_payload, make_app, result_from_json
from workers.config import Config
from workers.worker import Job

PING_EVERY_S = 5.0
WORKER_SEEN_S = 30.0


class BrokerDown(OSError):
    """The broker did not take a job (the supervisor keeps the files and tries again)."""


class CeleryBackend:
    def __init__(self, config: Config, owner: str, trace_every: int) -> None:
        import redis

        self.config = config
        self.app = make_app(config)
        self.app.conf.broker_connection_timeout = 2
        self.redis = redis.Redis.from_url(config.celery.broker_url, socket_timeout=5, socket_connect_timeout=2)
        self.owner = owner
        self.reply = f"foldermill:reply:{owner}:{secrets.token_hex(4)}"
        self.trace_every = trace_every
        self.broker_ok = True
        self.broker_error = ""
        self.nodes: dict[str, float] = {}  # worker node name -> last time it answered a ping

    def send(self, job: Job) -> None:
        payload = job_payload(self.owner, self.reply, job.seq, job.items, self.trace_every)
        try:
            self.app.send_task(TASK_NAME, args=[payload], queue=self.config.celery.queue, retry=False)
        except Exception as exc:  # kombu raises its own OperationalError family
            self._down(exc)
            raise BrokerDown(str(exc)) from None

    def _down(self, exc: BaseException) -> None:
        self.broker_ok = False
        self.broker_error = f"{type(exc).__name__}: {exc}"

    def pump(self, inbox: queue.SimpleQueue, stop: threading.Event) -> None:
        """Results (BLPOP on our reply list) into the loop's inbox; broker state too."""
        last_ping = 0.0
        while not stop.is_set():
            try:
                item = self.redis.blpop([self.reply], timeout=1)
                if not self.broker_ok:
                    self.broker_ok, self.broker_error = True, ""
                    inbox.put(("broker", True, ""))
                if item is not None:
                    inbox.put(("result", result_from_json(item[1])))
                if time.monotonic() - last_ping >= PING_EVERY_S:
                    last_ping = time.monotonic()
                    self._ping()
            except Exception as exc:  # redis.ConnectionError and friends: the broker is down
                if self.broker_ok:
                    self._down(exc)
                    inbox.put(("broker", False, self.broker_error))
                stop.wait(1.0)

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
                data = {k.decode(): json.loads(v) for k, v in self.redis.hgetall(key).items()}
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
