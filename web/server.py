"""The dashboard's own process: waitress serving the Flask app over the manager's state.

Started (spawned) and restarted by the supervisor; a slow or hostile client can only
tie up this process's threads, never the supervisor's loop.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waitress import create_server

from web import create_app
from workers.config import parse_config
from workers.lifecycle import die_with_parent

WEB_THREADS = 8


@dataclass(frozen=True)
class WebArgs:
    parent_pid: int
    config_path: str
    config_data: dict[str, Any]
    host: str
    port: int


def serve_web(args: WebArgs, state: Any, commands: Any, ready: Any) -> None:
    """Entry point of the dashboard process."""
    die_with_parent(args.parent_pid, "fm-web")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("waitress").setLevel(logging.ERROR)
    config = parse_config(args.config_data, Path(args.config_path))
    app = create_app(state, config, commands.put)
    server = create_server(app, host=args.host, port=args.port, threads=WEB_THREADS, ident="foldermill",
                           channel_timeout=30, connection_limit=200)
    ready.set()
    server.run()
