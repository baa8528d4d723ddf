"""The worker process: take a job, run the engine on each file, stage outputs, report.

A worker never moves queue files and holds no lock: the supervisor claimed the files
and will commit the staged outputs and move the inputs. So a worker can die at any
moment and cost at most the attempt of the file it was on.

Progress goes to a shared-memory slot (plain stores, no round trip): which job and
which file the worker is on, since when, lines and bytes done, a heartbeat. That slot
is also how the supervisor learns, after a crash, which file was the culprit.
Results go back through the manager's result queue, one message per job.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.config import DEFAULT_PIPELINE, parse_config
from workers.engine import run_file
from workers.errors import InputError, ProcessingError
from workers.faults import fault_of
from workers.lifecycle import die_with_parent
from workers.names import shown
from workers.outputs import StagedOutputs
from workers.pipelines import Pipelines, compile_pipelines, node_key
from workers.queue import open_claimed
from workers.store import StateReader

# Shared-memory progress slot layout (doubles), one slot per worker.
P_JOB, P_ITEM, P_STARTED, P_LINES, P_BYTES, P_BEAT, P_SENT, P_PID = range(8)
SLOT_SIZE = 8
PERMANENT_OPEN_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.ELOOP, errno.EISDIR, errno.ENOENT,
                                   errno.ENXIO, errno.ENODEV})
SELF_SYNC_BYTES = 4 << 20  # inputs this big get their outputs fsynced by the worker itself


@dataclass(frozen=True)
class JobItem:
    file_id: int
    name: str
    final_name: str
    size: int
    replay: bool = False  # processed again on purpose: never a duplicate of itself
    pipeline: str = ""  # the pipeline's name (the supervisor routed the file by its name)


@dataclass(frozen=True)
class Job:
    seq: int
    items: tuple[JobItem, ...]
    pipeline: str = ""  # the pipelines' version it needs (workers/config.py pipeline_version)


@dataclass
class ItemResult:
    file_id: int
    ok: bool
    staged: list[tuple[str, str]] = field(default_factory=list)  # (temp, final) in output/
    lines_in: int = 0
    lines_out: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    reason: str = ""
    permanent: bool = False  # a retry cannot help (binary, undecodable, ...)
    error_node: str = ""
    error_line: int | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS, reported
    skipped_count: int = 0  # every line skipped (on_error = "skip_line"), reported or not
    routes: list[tuple[int, list[str]]] = field(default_factory=list)
    digest: str = ""  # content hash, when [watch] dedupe = "content"
    duplicate_of: str = ""  # the final name of an earlier file with the same content
    synced: bool = False  # its outputs were fsynced by the worker (big files, durable = true)
    # A fault of the machine met on it (workers/faults.py: "disk_full"...), and where: no
    # attempt is charged; the supervisor pauses intake and sends the file again later.
    fault: str = ""
    fault_path: str = ""


@dataclass
class JobResult:
    slot: int
    pid: int
    seq: int
    items: list[ItemResult]
    nodes: dict[str, tuple[int, int, int, float]]  # "pipeline/tag" -> (in, out, errors, seconds)
    rss_bytes: int


@dataclass(frozen=True)
class WorkerArgs:
    slot: int
    parent_pid: int
    config_path: str
    config_data: dict[str, Any]
    trace_every: int
    durable: bool
    max_files: int
    dedupe_db: str = ""  # the state database, when [watch] dedupe = "content"


def worker_main(args: WorkerArgs, jobs: Any, results: Any, progress: Any) -> None:
    """Entry point of a worker process (started with the spawn context)."""
    die_with_parent(args.parent_pid, f"fm-worker-{args.slot}")
    stopping = _install_signals()
    config = parse_config(args.config_data, Path(args.config_path))
    pipelines = compile_pipelines(config, str(config.base_dir))
    base = args.slot * SLOT_SIZE
    progress[base + P_PID] = os.getpid()
    done = 0
    while not stopping and os.getppid() == args.parent_pid:
        progress[base + P_BEAT] = time.monotonic()
        try:
            job = jobs.get(timeout=0.5)
        except queue.Empty:
            continue
        except (EOFError, OSError):
            return  # the manager is gone: the supervisor is stopping or dead
        if job is None:
            return
        result = _run_job(args, pipelines, config.output_dir, config.watch.dir / "underprocess", job, progress)
        results.put(result)
        progress[base + P_SENT] = job.seq
        done += len(job.items)
        if args.max_files and done >= args.max_files:
            return


def _run_job(args: WorkerArgs, pipelines: Pipelines, out_dir: Path, in_dir: Path, job: Job, progress: Any) -> JobResult:
    base = args.slot * SLOT_SIZE
    progress[base + P_JOB] = job.seq
    nodes: dict[str, list[float]] = {}
    items = []
    for i, item in enumerate(job.items):
        progress[base + P_ITEM] = i
        progress[base + P_STARTED] = time.monotonic()  # system-wide on Linux: the supervisor compares it
        progress[base + P_LINES] = progress[base + P_BYTES] = 0
        items.append(run_item(args, pipelines, out_dir, in_dir, item, progress, nodes))
    progress[base + P_ITEM] = -1
    stats = {tag: (int(v[0]), int(v[1]), int(v[2]), v[3]) for tag, v in nodes.items()}
    return JobResult(args.slot, os.getpid(), job.seq, items, stats, process_rss())


def run_item(args: WorkerArgs, pipelines: Pipelines, out_dir: Path, in_dir: Path, item: JobItem, progress: Any,
             nodes: dict[str, list[float]]) -> ItemResult:
    """One file, in one try/except: a bad file never stops the worker."""
    base = args.slot * SLOT_SIZE
    # A job from a supervisor older than pipelines by name carries none: route it here.
    pipeline = item.pipeline or pipelines.route(item.name) or ""
    graph = pipelines.graphs.get(pipeline)
    if graph is None:  # not reached: a job and its node share the pipelines' version
        return ItemResult(item.file_id, False, reason=f"{shown(item.name)}: this worker has no pipeline "
                          f"{item.pipeline!r} (it has {', '.join(pipelines.graphs)})")

    def report(bytes_done: int, lines_done: int) -> None:
        progress[base + P_BYTES] = bytes_done
        progress[base + P_LINES] = lines_done
        progress[base + P_BEAT] = time.monotonic()

    started = time.monotonic()
    digest = ""
    if args.dedupe_db and not item.replay:
        try:
            digest = file_digest(in_dir / item.name, pipeline)
        except OSError:
            digest = ""  # the engine's own open reports the problem below
        earlier = digest and processed_digest(args.dedupe_db, digest)
        if earlier:
            return ItemResult(item.file_id, True, digest=digest, duplicate_of=earlier,
                              seconds=time.monotonic() - started)
    try:
        fd = open_claimed(in_dir / item.name)
    except OSError as exc:  # unreadable for good (permissions, not a file), or for now (out of descriptors)
        return _os_failure(item, f"cannot read: {exc.strerror or exc}", exc, in_dir, started,
                           permanent=exc.errno in PERMANENT_OPEN_ERRORS)
    staged: StagedOutputs | None = None
    try:
        with os.fdopen(fd, "rb") as source:
            staged = StagedOutputs(out_dir, item.final_name, graph.settings.encoding, token=str(item.file_id))
            result = run_file(graph, item.name, source, staged.sink, report, args.trace_every)
        # A big file's outputs are made durable here, by each worker in parallel, so the
        # supervisor's commit never waits on them; small files share the supervisor's
        # one syncfs per batch (group commit), far cheaper than an fsync per file.
        synced = args.durable and item.size >= SELF_SYNC_BYTES
        pairs = staged.close(durable=synced)
    except InputError as exc:
        _abort(staged)
        permanent = not isinstance(exc, ProcessingError)
        return ItemResult(item.file_id, False, reason=str(exc), permanent=permanent, error_node=exc.node,
                          error_line=exc.line, seconds=time.monotonic() - started)
    except OSError as exc:  # writing its outputs, or reading mid-way: worth another attempt, or the machine's
        _abort(staged)
        return _os_failure(item, f"{exc.strerror or exc} (reading it or writing its outputs)", exc, out_dir, started)
    except Exception as exc:  # anything else: a bug or a resource limit; retried
        _abort(staged)
        return ItemResult(item.file_id, False, reason=f"{shown(item.name)}: {type(exc).__name__}: {exc}",
                          seconds=time.monotonic() - started)
    for tag, s in result.nodes.items():
        acc = nodes.setdefault(node_key(pipeline, tag), [0, 0, 0, 0.0])
        acc[0] += s.lines_in
        acc[1] += s.lines_out
        acc[2] += s.errors
        acc[3] += s.seconds
    return ItemResult(item.file_id, True, pairs, result.lines_in, result.lines_out, result.bytes_in,
                      time.monotonic() - started, skipped=result.errors, skipped_count=result.error_count,
                      routes=result.routes, digest=digest,
                      synced=synced)


def _os_failure(item: JobItem, what: str, exc: OSError, folder: Path, started: float,
                permanent: bool = False) -> ItemResult:
    """A file that met an OSError; a fault of the machine (a full disk, no descriptors
    left...) is said as such, for the supervisor not to charge the file."""
    fault = fault_of(exc, str(folder))
    if fault is not None and exc.filename is not None and not _within(exc.filename, folder.parent):
        fault = None  # a processor's own file elsewhere (its /tmp...): the file's problem, charged
    return ItemResult(item.file_id, False, reason=f"{shown(item.name)}: {what}",
                      permanent=permanent and fault is None, seconds=time.monotonic() - started,
                      fault=fault.kind if fault else "", fault_path=fault.path if fault else "")


def _within(path: str | bytes, folder: Path) -> bool:
    real = os.path.realpath(os.fsdecode(path))
    return real == str(folder) or real.startswith(str(folder).rstrip("/") + "/")


def _abort(staged: StagedOutputs | None) -> None:
    if staged is not None:
        staged.abort()


def file_digest(path: Path, pipeline: str = DEFAULT_PIPELINE) -> str:
    """A content hash (BLAKE2b, 128 bits) read through a claimed file's descriptor. The
    same bytes through another pipeline are other work: its name is hashed first (but
    for ``default``'s, whose digests predate pipelines by name)."""
    h = hashlib.blake2b(digest_size=16)
    if pipeline != DEFAULT_PIPELINE:
        h.update(f"pipeline {pipeline}\0".encode())
    with os.fdopen(open_claimed(path), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_READERS: dict[str, StateReader] = {}


def processed_digest(db_path: str, digest: str) -> str:
    """The final name of a processed file with this content, or "" (read-only look-up)."""
    reader = _READERS.get(db_path)
    if reader is None:
        reader = _READERS[db_path] = StateReader(Path(db_path), keep_open=True, timeout_s=10)
    return reader.digest_owner(digest)


def manager_init(parent_pid: int) -> None:
    """Runs first in the manager's server process: it dies with the supervisor and
    leaves SIGINT and SIGHUP (a terminal's reach the whole group) to the supervisor.
    It is forked after the supervisor set its own signal handlers: SIGTERM gets its
    default back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent_pid, "fm-manager")


def _install_signals() -> list[bool]:
    """SIGINT is the supervisor's to handle (a terminal sends it to the whole group);
    SIGTERM asks the worker to stop after its current job."""
    stopping: list[bool] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the supervisor's
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    return stopping


def process_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
