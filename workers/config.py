"""Read ``config.toml`` once, validate it into frozen dataclasses.

Every key has a default (see the shipped ``config.toml``); an unknown key, a wrong type
or a bad value raises :class:`ConfigError` naming the dotted key. Paths are relative to
the config file. Each pipeline's graph (processors, their options, emitted tags) is
checked by :func:`workers.pipelines.compile_pipelines`, which needs to import processors.

Pipelines: one ``[pipeline]`` (named ``default``, every file goes to it), or several
``[pipelines.<name>]`` and ``[[routes]]`` tables that send each file to one of them by
its name (first match wins).
"""

from __future__ import annotations

import codecs
import contextvars
import dataclasses
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from workers.errors import ConfigError

ON_ERROR = ("fail_file", "skip_line")
DECODE_ERRORS = ("strict", "replace")
FORMATS = ("lines", "csv")
DEFAULT_PIPELINE = "default"
# A pipeline's name is a Prometheus label value and part of a node's key: kept plain.
PIPELINE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class WatchConfig:
    dir: Path
    poll_interval: float = 1.0  # seconds between full rescans (events wake it sooner)
    settle: float = 0.5  # seconds a file's size and mtime must stay unchanged
    include: tuple[str, ...] = ("*",)
    # Hidden names, and the temporary names uploads and downloads are written under before
    # their rename: WinSCP's .filepart, .partial, Chrome's .crdownload, Safari's .download,
    # Resilio/BitTorrent Sync's .!sync, Office's ~$ lock files, editors' .swp and ~.
    exclude: tuple[str, ...] = (".*", "*.tmp", "*.part", "*.partial", "*.filepart", "*.crdownload", "*.download",
                                "*.!sync", "~$*", "*.swp", "*~")
    ready_marker: str = ""  # e.g. "{name}.ready"
    journal_max_mb: float = 64.0  # input.log is rotated past this size
    journal_keep: int = 5  # rotated journals kept: input.log.1 ... input.log.N
    dedupe: str = "off"  # "content": a file whose content was processed before is not processed again
    state_retention_days: float = 30.0  # records of finished files older than this are pruned (0: kept forever)
    dedupe_retention_days: float = 90.0  # content digests are kept this long (0: forever)
    backlog_window: int = 100_000  # the oldest waiting files held in memory, in claim order (~200 B each)
    recursive: bool = False  # every regular file under unprocessed/ is work, named by its relative path
    max_depth: int = 16  # with recursive: directories deeper than this are not entered (1: only top-level ones)
    dir_ready_marker: str = ""  # with recursive, e.g. "_SUCCESS": a directory's files wait until it holds this file
    empty_dirs_after: float = 60.0  # with recursive: seconds a directory the queue emptied stays before it goes


@dataclass(frozen=True)
class WorkersConfig:
    count: int = 0  # 0: one per CPU
    max_attempts: int = 3
    retry_backoff: float = 1.0
    file_timeout: float = 600.0
    max_memory_mb: int = 1024
    max_files_per_worker: int = 0
    batch_files: int = 64  # small files travel together, up to this many per job
    batch_bytes: int = 1_048_576  # ... or this many bytes
    shutdown_grace: float = 30.0  # seconds in-flight files get to finish on SIGTERM
    durable: bool = True  # outputs reach the disk (group commit) before the input moves on
    backend: str = "local"  # "local" (a process pool) or "celery" (worker nodes behind a broker)

    def worker_count(self) -> int:
        return self.count or os.cpu_count() or 1


@dataclass(frozen=True)
class CeleryConfig:
    broker_url: str = "redis://127.0.0.1:6379/0"
    queue: str = "foldermill"
    # A task not acknowledged after this is redelivered. 0 (the default): derived from
    # [workers], the longest a job may run plus VISIBILITY_MARGIN_S, so defaults agree.
    visibility_timeout: float = 0.0
    prefetch_jobs: int = 8  # jobs the supervisor keeps on the broker at once


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    token: str = ""  # when set, actions need "Authorization: Bearer <token>"
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback and [web] host
    protect_reads: bool = False  # with a token: the read endpoints and /metrics need it too


@dataclass(frozen=True)
class NodeConfig:
    tag: str
    processor: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class PipelineConfig:
    name: str = DEFAULT_PIPELINE
    key: str = "pipeline"  # its table, for errors: "pipeline" or "pipelines.<name>"
    max_hops: int = 64
    on_error: str = "fail_file"
    encoding: str = "utf-8"
    decode_errors: str = "strict"
    max_line_bytes: int = 1_048_576
    format: str = "lines"  # "csv": the unit is a CSV record (workers/records.py)
    delimiter: str = ","
    quotechar: str = '"'
    header: bool = False
    max_expansion: float = 200.0  # a compressed input may grow this many times (0: no limit)
    max_decompressed_mb: float = 10240.0  # ... and to at most this much (0: no limit)
    nodes: tuple[NodeConfig, ...] = ()


@dataclass(frozen=True)
class RouteConfig:
    match: tuple[str, ...]  # globs on the file name, its compression suffix removed
    pipeline: str


CATCH_ALL = (RouteConfig(("*",), DEFAULT_PIPELINE),)


@dataclass(frozen=True)
class Config:
    path: Path
    watch: WatchConfig
    pipelines: Mapping[str, PipelineConfig] = field(
        default_factory=lambda: MappingProxyType({DEFAULT_PIPELINE: PipelineConfig()}))
    routes: tuple[RouteConfig, ...] = CATCH_ALL
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    web: WebConfig = field(default_factory=WebConfig)
    celery: CeleryConfig = field(default_factory=CeleryConfig)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def output_dir(self) -> Path:
        return self.watch.dir / "output"


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``; raise ConfigError (never a bare exception)."""
    path = Path(path).resolve()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document; ``path`` anchors relative paths."""
    table = _Table(data, "")
    watch = _parse_watch(table.sub("watch"), path.parent)
    workers = _parse_workers(table.sub("workers"))
    web = _parse_web(table.sub("web"))
    celery = _parse_celery(table.sub("celery"))
    pipelines, routes = _parse_pipelines(table)
    table.done()
    if not celery.visibility_timeout:
        celery = dataclasses.replace(celery, visibility_timeout=max_job_seconds(workers) + VISIBILITY_MARGIN_S)
    _check_visibility(celery, workers)
    return Config(path=path, watch=watch, pipelines=pipelines, routes=routes, workers=workers, web=web,
                  celery=celery, raw=data)


def _parse_watch(t: _Table, base: Path) -> WatchConfig:
    d = WatchConfig(dir=base)
    raw = t.get("dir", str, "watch_dir", check=_non_empty)
    cfg = WatchConfig(
        dir=(base / raw).resolve(),
        poll_interval=t.get("poll_interval", float, d.poll_interval, check=_positive),
        settle=t.get("settle", float, d.settle, check=_at_least(0)),
        include=tuple(t.get("include", list, list(d.include), check=_patterns)),
        exclude=tuple(t.get("exclude", list, list(d.exclude), check=_patterns)),
        ready_marker=t.get("ready_marker", str, d.ready_marker, check=_marker),
        journal_max_mb=t.get("journal_max_mb", float, d.journal_max_mb, check=_positive),
        journal_keep=t.get("journal_keep", int, d.journal_keep, check=_at_least(1)),
        dedupe=t.get("dedupe", str, d.dedupe, check=_one_of(("off", "content"))),
        state_retention_days=t.get("state_retention_days", float, d.state_retention_days, check=_at_least(0)),
        dedupe_retention_days=t.get("dedupe_retention_days", float, d.dedupe_retention_days, check=_at_least(0)),
        backlog_window=t.get("backlog_window", int, d.backlog_window, check=_at_least(100)),
        recursive=t.get("recursive", bool, d.recursive),
        max_depth=t.get("max_depth", int, d.max_depth, check=_at_least(0)),
        dir_ready_marker=t.get("dir_ready_marker", str, d.dir_ready_marker, check=_dir_marker),
        empty_dirs_after=t.get("empty_dirs_after", float, d.empty_dirs_after, check=_at_least(0)),
    )
    if cfg.dir_ready_marker and not cfg.recursive:
        raise ConfigError("watch.dir_ready_marker", "needs recursive = true (a marker of a directory's files)")
    t.done()
    return cfg


def _parse_workers(t: _Table) -> WorkersConfig:
    d = WorkersConfig()
    cfg = WorkersConfig(
        count=t.get("count", int, d.count, check=_at_least(0)),
        max_attempts=t.get("max_attempts", int, d.max_attempts, check=_at_least(1)),
        retry_backoff=t.get("retry_backoff", float, d.retry_backoff, check=_at_least(0)),
        file_timeout=t.get("file_timeout", float, d.file_timeout, check=_positive),
        max_memory_mb=t.get("max_memory_mb", int, d.max_memory_mb, check=_at_least(16)),
        max_files_per_worker=t.get("max_files_per_worker", int, d.max_files_per_worker, check=_at_least(0)),
        batch_files=t.get("batch_files", int, d.batch_files, check=_at_least(1)),
        batch_bytes=t.get("batch_bytes", int, d.batch_bytes, check=_at_least(1)),
        shutdown_grace=t.get("shutdown_grace", float, d.shutdown_grace, check=_at_least(0)),
        durable=t.get("durable", bool, d.durable),
        backend=t.get("backend", str, d.backend, check=_one_of(("local", "celery"))),
    )
    t.done()
    return cfg


def _parse_web(t: _Table) -> WebConfig:
    d = WebConfig()
    cfg = WebConfig(
        enabled=t.get("enabled", bool, d.enabled),
        host=t.get("host", str, d.host, check=_non_empty),
        port=t.get("port", int, d.port, check=lambda v: "" if 0 <= v <= 65535 else "must be a port, 0 to 65535"),
        token=t.get("token", str, d.token),
        allowed_hosts=tuple(h.lower() for h in t.get("allowed_hosts", list, list(d.allowed_hosts), check=_hosts)),
        protect_reads=t.get("protect_reads", bool, d.protect_reads),
    )
    if cfg.protect_reads and not cfg.token:
        raise ConfigError("web.protect_reads", "= true needs [web] token (the token is what protects the reads)")
    t.done()
    return cfg


JOB_SLACK_S = 30.0  # a job's start-up and result push, on top of its files' time
VISIBILITY_MARGIN_S = 600.0  # a derived visibility_timeout outlasts the longest job by this


def reloaded(running: Config, new: Config) -> tuple[Config, list[str]]:
    """What a SIGHUP applies: the new pipelines, routes and ``[workers]`` limits, on the
    running ``[watch]``, ``[web]``, ``[celery]``, ``backend`` and ``count`` (those need
    a restart: their names are returned, to be logged)."""
    kept = [key for key, old, now in (("watch", running.watch, new.watch), ("web", running.web, new.web),
                                      ("celery", running.raw.get("celery"), new.raw.get("celery")))
            if old != now]
    if new.workers.backend != running.workers.backend or new.workers.count != running.workers.count:
        kept.append("workers.backend/count")
    workers = dataclasses.replace(new.workers, backend=running.workers.backend, count=running.workers.count)
    # The running [celery] stays: its visibility_timeout (given, or derived from the old
    # [workers]) must still outlast the new limits' longest job.
    if workers.backend == "celery":
        _check_visibility(running.celery, workers)
    # Workers parse the raw tables: give them the running [watch], [web] and [celery].
    raw = {**new.raw, **{k: running.raw[k] for k in ("watch", "web", "celery") if k in running.raw}}
    for k in ("watch", "web", "celery"):
        if k not in running.raw:
            raw.pop(k, None)
    raw.setdefault("workers", {})
    raw["workers"] = {**raw["workers"], "backend": workers.backend, "count": workers.count}
    return dataclasses.replace(running, pipelines=new.pipelines, routes=new.routes, workers=workers, raw=raw), kept


PIPELINE_TABLES = ("pipeline", "pipelines", "routes", "workers")


def pipeline_tables(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The tables a job is processed with: the pipelines, the routes, ``[workers]``."""
    return {k: raw[k] for k in PIPELINE_TABLES if k in raw}


def pipeline_version(raw: Mapping[str, Any]) -> str:
    """A short digest of what a job is processed with (``pipeline_tables``). The
    supervisor stamps it on every job; a Celery node whose own version differs takes
    the job's tables (``workers/celery_app.py``)."""
    text = json.dumps(pipeline_tables(raw), sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def max_job_seconds(workers: WorkersConfig) -> float:
    """The longest a Celery job may run: each of its up to batch_files files gets
    file_timeout (past it the node's task_time_limit kills the job)."""
    return workers.file_timeout * workers.batch_files + JOB_SLACK_S


def _check_visibility(celery: CeleryConfig, workers: WorkersConfig) -> None:
    """Redis delivers an unacknowledged job again after visibility_timeout, and a job is
    acknowledged only when done: a shorter timeout hands a job that still runs to a
    second node. So with the Celery backend it must outlast the longest job; with the
    local pool the key is unused, and only the old rule (one file's time) is kept."""
    v = celery.visibility_timeout
    if v <= workers.file_timeout:
        raise ConfigError("celery.visibility_timeout", f"= {v:g} must be longer than [workers] file_timeout "
                          f"= {workers.file_timeout:g}, or a slow file would be handed to a second worker "
                          "while the first still works on it")
    longest = max_job_seconds(workers)
    if workers.backend == "celery" and v <= longest:
        raise ConfigError("celery.visibility_timeout", f"= {v:g} must be longer than the longest a job may run: "
                          f"[workers] file_timeout * batch_files + {JOB_SLACK_S:g} = {longest:g}s, or a job "
                          "that still runs is delivered to a second node; raise it, or lower batch_files or "
                          "file_timeout")


def _parse_celery(t: _Table) -> CeleryConfig:
    d = CeleryConfig()
    cfg = CeleryConfig(
        broker_url=t.get("broker_url", str, d.broker_url,
                         check=lambda v: "" if v.startswith(("redis://", "rediss://")) else "must be a redis:// URL"),
        queue=t.get("queue", str, d.queue, check=_non_empty),
        visibility_timeout=t.get("visibility_timeout", float, d.visibility_timeout, check=_at_least(0)),
        prefetch_jobs=t.get("prefetch_jobs", int, d.prefetch_jobs, check=_at_least(1)),
    )
    t.done()
    return cfg


def _parse_pipelines(table: _Table) -> tuple[Mapping[str, PipelineConfig], tuple[RouteConfig, ...]]:
    """``[pipeline]`` (one, named default, catch-all) or ``[pipelines.<name>]`` with
    ``[[routes]]``; each pipeline's settings are its own."""
    if "pipeline" in table.data and "pipelines" in table.data:
        raise ConfigError("pipelines", "use either [pipeline] (one pipeline for every file) or "
                          "[pipelines.<name>] with [[routes]] (several), not both")
    if "pipelines" in table.data:
        many = table.sub("pipelines")
        if not many.data:
            raise ConfigError("pipelines", "must hold at least one [pipelines.<name>] table")
        pipelines = {}
        for name in list(many.data):
            if not PIPELINE_NAME.fullmatch(name):
                raise ConfigError(f"pipelines.{json.dumps(name)}", "a pipeline's name must be 1 to 64 of "
                                  "A-Z a-z 0-9 _ - (it is a Prometheus label), not starting with '-'")
            pipelines[name] = _parse_pipeline(many.sub(name), name)
        many.done()
    else:
        pipelines = {DEFAULT_PIPELINE: _parse_pipeline(table.sub("pipeline"), DEFAULT_PIPELINE, "pipeline")}
    routes = _parse_routes(table, pipelines)
    return MappingProxyType(pipelines), routes


def _parse_routes(table: _Table, pipelines: Mapping[str, PipelineConfig]) -> tuple[RouteConfig, ...]:
    table.seen.add("routes")
    raw = table.data.get("routes")
    if raw is None:
        if len(pipelines) > 1:
            raise ConfigError("routes", f"{len(pipelines)} pipelines ({', '.join(pipelines)}) need [[routes]] "
                              'tables saying which files go to which: match = ["*.csv"], pipeline = "..."')
        return (RouteConfig(("*",), next(iter(pipelines))),)
    if not isinstance(raw, list) or not raw:
        raise ConfigError("routes", "must be one or more [[routes]] tables (an array of tables)")
    routes = []
    for i, entry in enumerate(raw, 1):
        t = _Table(entry, f"routes[{i}]")
        match = tuple(t.get("match", list, None, check=_patterns))
        if not match:
            raise ConfigError(f"routes[{i}].match", "must list at least one glob")
        pipeline = t.get("pipeline", str, None, check=_non_empty)
        if pipeline not in pipelines:
            raise ConfigError(f"routes[{i}].pipeline", f"there is no pipeline {pipeline!r} "
                              f"(configured: {', '.join(pipelines)})")
        t.done()
        routes.append(RouteConfig(match, pipeline))
    return tuple(routes)


def _parse_pipeline(t: _Table, name: str, key: str = "") -> PipelineConfig:
    d = PipelineConfig()
    fmt = t.get("format", str, d.format, check=_one_of(FORMATS))
    csv_only = {k: t.data[k] for k in ("delimiter", "quotechar", "header") if k in t.data}
    if fmt != "csv" and csv_only:
        raise ConfigError(t.dotted(next(iter(csv_only))), 'only applies to format = "csv"')
    cfg = PipelineConfig(
        name=name,
        key=key or t.key,
        max_hops=t.get("max_hops", int, d.max_hops, check=_at_least(1)),
        on_error=t.get("on_error", str, d.on_error, check=_one_of(ON_ERROR)),
        encoding=t.get("encoding", str, d.encoding, check=_ascii_compatible),
        decode_errors=t.get("decode_errors", str, d.decode_errors, check=_one_of(DECODE_ERRORS)),
        max_line_bytes=t.get("max_line_bytes", int, d.max_line_bytes, check=_at_least(16)),
        format=fmt,
        delimiter=t.get("delimiter", str, d.delimiter, check=_csv_char),
        quotechar=t.get("quotechar", str, d.quotechar, check=_csv_char),
        header=t.get("header", bool, d.header),
        max_expansion=t.get("max_expansion", float, d.max_expansion, check=_at_least(0)),
        max_decompressed_mb=t.get("max_decompressed_mb", float, d.max_decompressed_mb, check=_at_least(0)),
        nodes=_parse_nodes(t.sub("nodes")),
    )
    if cfg.delimiter == cfg.quotechar:
        raise ConfigError(t.dotted("quotechar"), f"must differ from delimiter, got {cfg.quotechar!r} for both")
    t.done()
    return cfg


def _parse_nodes(t: _Table) -> tuple[NodeConfig, ...]:
    nodes = []
    for tag in list(t.data):
        node = t.sub(tag)
        if tag == "end":
            raise ConfigError(node.key, "'end' is the terminal tag and cannot be a node")
        processor = node.get("processor", str, None, check=_non_empty)
        options = {k: v for k, v in node.data.items() if k != "processor"}
        nodes.append(NodeConfig(tag, processor, MappingProxyType(options)))
        t.seen.add(tag)
    if not any(n.tag == "start" for n in nodes):
        raise ConfigError(t.key, f"there is no [{t.key}.start]: every line enters with tag 'start'")
    return tuple(nodes)


@dataclass(frozen=True)
class Key:
    """One key the loader accepts: its table as the docs write it (``watch``,
    ``pipeline``, ``pipeline.nodes.<tag>``, ``routes``), its name, its TOML type
    (``str``, ``int``, ``float``, ``bool``, ``list``) and default (None: required)."""

    table: str
    name: str
    kind: type
    default: Any


# While config_keys() loads its probe documents, every key read is noted here.
_READS: contextvars.ContextVar[list[tuple[str, type, Any]] | None] = contextvars.ContextVar("_READS", default=None)
# The probes: every table the loader knows, so every key is read (the first with one
# [pipeline], the second with [pipelines.<name>] and [[routes]]).
_PROBES: tuple[dict[str, Any], ...] = (
    {"pipeline": {"nodes": {"start": {"processor": "upper"}}}},
    {"pipelines": {"probe": {"nodes": {"start": {"processor": "upper"}}}},
     "routes": [{"match": ["*"], "pipeline": "probe"}]},
)


def config_keys() -> list[Key]:
    """Every key ``parse_config`` reads, found by loading probe documents and noting each
    read: what the configuration reference (docs/reference/configuration.md) must list,
    no more and no less (tests/test_docs.py)."""
    reads: list[tuple[str, type, Any]] = []
    token = _READS.set(reads)
    try:
        for probe in _PROBES:
            parse_config(probe, Path("config.toml").resolve())
    finally:
        _READS.reset(token)
    keys: dict[tuple[str, str], Key] = {}
    for dotted, kind, default in reads:
        table, _, name = dotted.rpartition(".")
        table = re.sub(r"^pipelines\.probe\b", "pipeline", table)
        table = re.sub(r"^(pipeline\.nodes)\.start$", r"\1.<tag>", table)
        table = re.sub(r"^routes\[\d+\]$", "routes", table)
        keys.setdefault((table, name), Key(table, name, kind, default))
    return list(keys.values())


class _Table:
    """One TOML table being validated: remembers which keys were read."""

    def __init__(self, data: Any, key: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(key, f"must be a table, got {_type_name(data)}")
        self.data = data
        self.key = key
        self.seen: set[str] = set()

    def dotted(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def sub(self, name: str) -> _Table:
        self.seen.add(name)
        return _Table(self.data.get(name, {}), self.dotted(name))

    def get(self, name: str, kind: type, default: Any, check: Callable | None = None) -> Any:
        self.seen.add(name)
        key = self.dotted(name)
        reads = _READS.get()
        if reads is not None:
            reads.append((key, kind, default))
        if name not in self.data:
            if default is None:
                raise ConfigError(key, "is required")
            return default
        value = self.data[name]
        if kind is float and type(value) is int:
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(key, f"must be {_type_name(kind())}, got {_type_name(value)} {value!r}")
        if check is not None:
            problem = check(value)
            if problem:
                raise ConfigError(key, f"{problem}, got {value!r}")
        return value

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.seen]
        if unknown:
            raise ConfigError(self.dotted(unknown[0]), "unknown key")


def _type_name(value: Any) -> str:
    return {
        "str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
        "dict": "a table", "list": "an array",
    }.get(type(value).__name__, type(value).__name__)


def _positive(value: float) -> str:
    return "" if value > 0 else "must be greater than 0"


def _patterns(value: list) -> str:
    if not all(isinstance(v, str) and v for v in value):
        return "must be a list of non-empty glob patterns (strings)"
    return ""


def _marker(value: str) -> str:
    if value and ("{name}" not in value or "/" in value or value == "{name}"):
        return 'must contain "{name}" and no "/", e.g. "{name}.ready" (or be "" for none)'
    return ""


def _dir_marker(value: str) -> str:
    if value and ("/" in value or value in (".", "..") or "{name}" in value):
        return 'must be a plain file name, e.g. "_SUCCESS" (or "" for none)'
    return ""


def _hosts(value: list) -> str:
    """Host names or addresses, without a port: ``example.org``, ``10.0.0.5``, ``[fd00::1]``."""
    for v in value:
        if not isinstance(v, str) or not re.fullmatch(r"[a-z0-9-][a-z0-9.-]*|\[[0-9a-f:.]+\]", v, re.IGNORECASE) \
                or not _idna_ok(v):
            return ('must be a list of host names or addresses without a port (an IPv6 address in brackets: '
                    f'"[fd00::1]"); {v!r} is not one')
    return ""


def _idna_ok(host: str) -> bool:
    """What Werkzeug's Host check will do with the name must not fail (``a..b`` does)."""
    if host.startswith("["):
        return True
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def _csv_char(value: str) -> str:
    if len(value) != 1 or value in "\r\n":
        return "must be one character, not a line end"
    return ""


def _non_empty(value: str) -> str:
    return "" if value.strip() else "must not be empty"


def _at_least(low: int) -> Callable[[int], str]:
    return lambda value: "" if value >= low else f"must be at least {low}"


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    return lambda value: "" if value in choices else "must be one of " + ", ".join(map(repr, choices))


def _ascii_compatible(value: str) -> str:
    """Lines are split on the byte 0x0A, so the encoding must write newline as that byte."""
    try:
        codecs.lookup(value)
    except LookupError:
        return "is not an encoding Python knows"
    if "\n".encode(value) != b"\n" or "a".encode(value) != b"a":
        return "must be ASCII-compatible (UTF-8, Latin-1, cp1252, ...): lines are split on byte 0x0A"
    return ""
