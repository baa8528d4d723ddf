"""foldermill: a fault-tolerant hot-folder processor.

    python supervisor.py -c config.toml [--once] [--trace] [--workers N]   the daemon
    python supervisor.py -c config.toml check          validate, print the routes and each pipeline's graph
    python supervisor.py -c config.toml run FILE...    run the pipeline on files directly
    python supervisor.py -c config.toml status | retry NAME... | discard NAME... | replay NAME... | history NAME

Exit status: 0 success or a clean stop, 1 some file failed (``run``), 2 bad
configuration or usage, 3 a failure that needs a person, 75 a fault of the machine
at start-up (a full disk...): start again once it clears.

This module is the entry point and what the daemon gets from outside: the
multiprocessing manager (created here only, its proxies passed down) and the
dashboard's process (``web/``). The verbs live in ``workers/cli.py``, the daemon's
parts and its loop in ``workers/daemon/``.
"""

from __future__ import annotations

import signal

# The first thing the supervisor does: SIGTERM and SIGINT are only counted until the
# daemon takes them over (Daemon.catch_signals), so a stop that arrives while modules
# are still being imported (a few hundred milliseconds) is a clean stop, exit 0, not a
# death by the signal. Only the interpreter's own start-up, before this line, is left.
# Not in a process that multiprocessing spawns (the dashboard's, the workers'): they run
# this module as __mp_main__ and set their own.
EARLY_SIGNALS: list[int] = []
if __name__ == "__main__":
    for _sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_sig, lambda signum, _frame: EARLY_SIGNALS.append(signum))

import logging
import os
import sqlite3
import sys
from multiprocessing.managers import SyncManager
from typing import Any

from workers.cli import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    build_parser,
    cmd_check,
    cmd_ops,
    cmd_run,
    setup_logging,
)
from workers.config import Config, load_config
from workers.daemon.service import Daemon, StartInterrupted
from workers.daemon.types import Options
from workers.errors import ConfigError, SystemFailure
from workers.faults import fault_of
from workers.pipelines import compile_pipelines
from workers.queue import QueueSetupError
from workers.store import StateError, state_db_path
from workers.worker import manager_init

log = logging.getLogger("foldermill")


def main(argv: list[str] | None = None, prog: str = "supervisor.py", early_signals: list[int] | None = None) -> int:
    """``early_signals``: those counted before this module was imported (foldermill.py's)."""
    early = EARLY_SIGNALS if early_signals is None else early_signals
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        config = load_config(args.config)
        pipelines = compile_pipelines(config, str(config.base_dir))
    except ConfigError as exc:
        print(f"foldermill: configuration error in {args.config}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command is not None:  # a verb, not the daemon: signals act as usual again
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if early:
            return EXIT_OK
    if args.command == "check":
        return cmd_check(config, pipelines, args.paths)
    if args.command == "run":
        return cmd_run(config, pipelines, args.files, args.output_dir, args.trace, args.pipeline)
    if args.command in ("status", "retry", "discard", "replay", "history"):
        return cmd_ops(config, args)
    setup_logging(args.log_format)
    options = Options(once=args.once, trace=args.trace, workers=args.workers or config.workers.worker_count())
    daemon = Daemon(config, pipelines, options, open_shared, start_dashboard)
    daemon.catch_signals(early)  # before anything starts: a SIGTERM during start-up stops cleanly
    try:
        daemon.start()
    except (QueueSetupError, SystemFailure, StateError, OSError, sqlite3.OperationalError) as exc:
        fault = fault_of(exc, str(state_db_path(config.watch.dir)))
        if fault is not None:  # the machine's, for now: systemd's Restart= tries again
            log.error("cannot start now: %s; exit %d: start it again once that clears", fault.describe(),
                      EXIT_TEMPFAIL)
        else:
            log.error("cannot start: %s", exc)
        daemon.shutdown()
        return EXIT_TEMPFAIL if fault is not None else EXIT_FATAL
    except StartInterrupted:
        log.info("stopped by a signal while starting")
        daemon.shutdown()
        return EXIT_OK
    return daemon.run()


class Manager:
    """The multiprocessing manager and its proxies: the state dict the dashboard reads,
    the queue of job results, the queue of dashboard actions (``Shared``)."""

    def __init__(self, ctx: Any) -> None:
        self.manager = SyncManager(ctx=ctx)
        self.manager.start(initializer=manager_init, initargs=(os.getpid(),))
        self.state = self.manager.dict()
        self.results = self.manager.Queue()
        self.commands = self.manager.Queue()

    def new_queue(self) -> Any:
        return self.manager.Queue()

    def died(self) -> int | None:
        process = getattr(self.manager, "_process", None)
        return process.exitcode if process is not None and not process.is_alive() else None

    def shutdown(self) -> None:
        self.manager.shutdown()


def open_shared(ctx: Any) -> Manager:
    return Manager(ctx)


def start_dashboard(ctx: Any, config: Config, port: int, shared: Manager) -> tuple[Any, Any]:
    """The dashboard's own process (Flask and waitress are imported only when serving)."""
    from web.server import WebArgs, serve_web

    ready = ctx.Event()
    process = ctx.Process(target=serve_web, name="foldermill-web", daemon=True,
                          args=(WebArgs(os.getpid(), str(config.path), dict(config.raw), config.web.host, port),
                                shared.state, shared.commands, ready))
    process.start()
    return process, ready


if __name__ == "__main__":
    sys.exit(main())
