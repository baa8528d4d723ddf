"""The command line's verbs other than the daemon itself: ``check``, ``run``, ``status``,
``retry``, ``history``; the argument parser, the exit codes and the log format.

``supervisor.py`` parses the arguments and dispatches here; the daemon is
``workers/daemon/loop.py``. Nothing here holds a lock or starts a process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from workers import __version__
from workers.config import Config
from workers.engine import run_file
from workers.errors import InputError
from workers.graph import Graph
from workers.names import output_name, shown, unshown
from workers.outputs import StagedOutputs, unique_name
from workers.paths import plain
from workers.pipelines import Pipelines
from workers.progress import Progress
from workers.readiness import see_writers
from workers.store import StateError

EXIT_OK = 0
EXIT_FILES_FAILED = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: a fault of the machine at start-up; systemd's Restart= tries again
# What each exit status means, for the command-line reference (docs/hooks.py makes it from this).
EXIT_MEANINGS = {
    EXIT_OK: "done (the daemon: stopped by SIGTERM or SIGINT, or `--once` finished)",
    EXIT_FILES_FAILED: "`run`: some file failed; `retry`, `discard`, `replay`: some name was refused; "
                       "`history`: no journal entry for the name",
    EXIT_USAGE: "a bad configuration or usage; the message names the key or the argument",
    EXIT_FATAL: "a failure that needs a person, at start-up or later: the watch dir cannot be created or written, "
                "or is gone or unmounted, its folders are on different filesystems, locks are not supported there, "
                "an I/O error, a corrupt state database, every loop step failing the same way (`replay`: the state "
                "database cannot be written)",
    EXIT_TEMPFAIL: "a fault of the machine met while starting (a full disk, no descriptors): start it again "
                   "once it clears (the shipped systemd unit does)",
}

log = logging.getLogger("foldermill")


NAME_HELP = ("a file in {folder}, by its name as typed or as shown (caf\\xe9.log); with [watch] recursive, "
             "its path there (acme/x.csv)")


def build_parser(prog: str = "supervisor.py") -> argparse.ArgumentParser:
    """The command line; ``prog``: the name usage lines give it (``foldermill`` when installed)."""
    parser = argparse.ArgumentParser(prog=prog, description="foldermill hot-folder processor")
    parser.add_argument("-c", "--config", default="config.toml", help="path to config.toml (default: %(default)s)")
    parser.add_argument("--once", action="store_true", help="process what is ready, wait for it, exit 0")
    parser.add_argument("--trace", action="store_true", help="trace line routes and log every file transition")
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes (overrides [workers] count)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines on stderr")
    parser.add_argument("--version", action="version", version=f"foldermill {__version__}")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="validate the config, print the routes and each pipeline's graph")
    check.add_argument("paths", nargs="*", metavar="PATH",
                       help="also say which route a file of this name takes (a path relative to unprocessed/)")
    status = sub.add_parser("status", help="queue counts, workers, recent failures (running or not)")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    retry = sub.add_parser("retry", help="move failed files back to unprocessed/ with fresh attempts")
    retry.add_argument("names", nargs="*", metavar="NAME", help=NAME_HELP.format(folder="failed/"))
    retry.add_argument("--all", action="store_true", help="every file in failed/")
    discard = sub.add_parser("discard", help="move failed files to discarded/ (never deleted), journalled")
    discard.add_argument("names", nargs="+", metavar="NAME", help=NAME_HELP.format(folder="failed/"))
    replay = sub.add_parser("replay", help="process processed files again with the current pipeline "
                                           "(new outputs get new names; the earlier ones stay)")
    replay.add_argument("names", nargs="+", metavar="NAME", help=NAME_HELP.format(folder="processed/"))
    history = sub.add_parser("history", help="every journal entry for one file")
    history.add_argument("name", metavar="NAME", help="the file's name as it came in, or its final name")
    history.add_argument("--json", action="store_true", help="JSON lines")
    run = sub.add_parser("run", help="run files through their pipelines directly (no folders, no pool)")
    run.add_argument("files", nargs="+", type=Path, metavar="FILE")
    run.add_argument("--pipeline", metavar="NAME", help="this pipeline for every file (default: by the routes)")
    run.add_argument("--output-dir", type=Path, help="where outputs go (default: the watch dir's output/)")
    run.add_argument("--trace", action="store_true", help="print the route of sampled lines")
    return parser


def cmd_ops(config: Config, args: argparse.Namespace) -> int:
    """status, retry, discard, replay, history: the operator's verbs (workers/ops.py)."""
    from workers import ops

    if args.command == "status":
        s = ops.status(config)
        print(json.dumps(s) if args.json else ops.format_status(s))
        return EXIT_OK
    if args.command in ("retry", "discard", "replay"):
        every = getattr(args, "all", False)
        if bool(args.names) == every:
            print("foldermill: retry needs NAME... or --all (not both)", file=sys.stderr)
            return EXIT_USAGE
        try:
            done, problems = ops.act(config, args.command, args.names, every)
        except StateError as exc:  # a replay marks its file's record: one line, no traceback
            print(f"foldermill: {exc}", file=sys.stderr)
            return EXIT_FATAL
        said = {"retry": "back in unprocessed/, with fresh attempts", "discard": "discarded",
                "replay": "back in unprocessed/, to be processed again"}[args.command]
        for name in done:
            print(f"{name}: {said}")
        for problem in problems:
            print(f"foldermill: {problem}", file=sys.stderr)
        return EXIT_FILES_FAILED if problems else EXIT_OK
    problem = plain(args.name) and plain(unshown(args.name))  # as typed, or in its shown form
    if problem:
        print(f"foldermill: {shown(args.name)}: {problem}", file=sys.stderr)
        return EXIT_FILES_FAILED
    entries = ops.history(config, args.name)
    if not entries:
        print(f"foldermill: no journal entry for {args.name!r}", file=sys.stderr)
        return EXIT_FILES_FAILED
    print("\n".join(json.dumps(e) for e in entries) if args.json else ops.format_history(entries))
    return EXIT_OK


def cmd_check(config: Config, pipelines: Pipelines, paths: list[str] | None = None) -> int:
    print(f"config {config.path} is valid")
    print(f"watch dir: {config.watch.dir}")
    unprocessed = config.watch.dir / "unprocessed"
    if unprocessed.is_dir():  # how a daemon of this user would see writers there
        sight = see_writers(str(unprocessed), True, config.watch.settle)
        print(f"writers, as user {sight.user} sees them:" + "".join(f"\n  - {w}" for w in sight.describe()))
    for line in pipelines.describe():
        print(line)
    for path in paths or []:
        print(pipelines.explain(unshown(path)))
    return EXIT_OK


def cmd_run(config: Config, pipelines: Pipelines, files: list[Path], output_dir: Path | None, trace: bool,
            pipeline: str | None = None) -> int:
    """Each file through the pipeline its name routes it to (or ``pipeline``)."""
    if pipeline is not None and pipeline not in pipelines.graphs:
        print(f"foldermill: --pipeline {pipeline}: there is no such pipeline "
              f"(configured: {', '.join(pipelines.graphs)})", file=sys.stderr)
        return EXIT_USAGE
    out_dir = output_dir or config.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [_size(p) for p in files]
    view = Progress(sys.stderr)
    failed, done_bytes = 0, 0
    for i, (path, size) in enumerate(zip(files, sizes, strict=True)):
        def report(bytes_done: int, _lines: int, path: Path = path, size: int = size, i: int = i,
                   before: int = done_bytes) -> None:
            view.update(i, len(files), before + bytes_done, sum(sizes), [(shown(path.name), bytes_done, size)])

        name = route_name(config, path)
        chosen = pipeline or pipelines.route(name)
        if chosen is None:
            print(f"{shown(str(path))}: failed: {pipelines.unrouted(name)}", file=sys.stderr)
            failed += 1
        else:
            if not pipeline and len(pipelines.routes) > 1:  # which route, and why
                print(pipelines.explain(name))
            if not _run_one(pipelines.graphs[chosen], path, out_dir, trace, report):
                failed += 1
        done_bytes += size
    view.update(len(files), len(files), done_bytes, sum(sizes), [], final=True)
    return EXIT_FILES_FAILED if failed else EXIT_OK


def route_name(config: Config, path: Path) -> str:
    """The name a route matches for ``run FILE``: its path relative to a queue folder of
    the watch dir when it is in one (``unprocessed/acme/x.csv`` -> ``acme/x.csv``), the
    path as typed when it is relative and stays below here (``acme/x.csv``), else its
    base name."""
    try:
        rel = path.resolve().relative_to(config.watch.dir.resolve())
        if len(rel.parts) > 1:
            return str(Path(*rel.parts[1:]))
    except ValueError:
        pass
    if not path.is_absolute() and ".." not in path.parts:
        return str(path)
    return path.name


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _run_one(graph: Graph, path: Path, out_dir: Path, trace: bool, report: Any = None) -> bool:
    suffixes = graph.side_outputs()

    def taken(name: str) -> bool:
        return any(os.path.lexists(out_dir / output_name(name, s)) for s in ("", *suffixes))

    started = time.monotonic()
    where = shown(str(path))
    try:
        source = open(path, "rb")  # noqa: SIM115 - the with block below closes it
    except OSError as exc:
        print(f"{where}: cannot open: {exc.strerror}", file=sys.stderr)
        return False
    with source:
        staged = StagedOutputs(out_dir, unique_name(path.name, taken), graph.settings.encoding,
                               token=f"run-{os.getpid()}")  # a start-up sweep of the daemon keeps them while we live
        try:
            result = run_file(graph, path.name, source, staged.sink, report, trace_every=100 if trace else 0)
        except InputError as exc:
            staged.abort()
            print(f"{where}: failed: {exc}", file=sys.stderr)
            return False
        except BaseException:
            staged.abort()
            raise
    finals = staged.commit()
    seconds = time.monotonic() - started
    for error in result.errors:
        print(f"{where}: line {error['line']} (node {error['node']!r}) skipped: {error['message']}", file=sys.stderr)
    finals_shown = ", ".join(shown(str(p)) for p in finals)
    print(f"{where}: {result.lines_in} lines in, {result.lines_out} out, "
          f"{result.error_count} skipped, {seconds:.3f}s -> {finals_shown}")
    for line_no, route in result.routes:
        print(f"  trace line {line_no}: {' -> '.join(route)}")
    return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record), "level": record.levelname.lower(), "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
