"""The dashboard, the JSON API and /metrics: a Flask app built by ``create_app``.

The app reads one plain snapshot that the supervisor publishes into the manager dict
(``workers/state.py``) and never touches queues, locks or processes: an action (retry,
discard or replay a file, pause or resume intake) is checked here (``web/guard.py``:
Host, origin, token; ``workers/actions.py``: the file) and handed to the supervisor
through ``actions``, which performs it. The console's reads (failed files, search,
timelines, output heads) come from the watch dir itself (``web/lookup.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from workers.config import Config
from workers.messages import Command


def create_app(state: Mapping[str, Any], config: Config,
               actions: Callable[[Command], None] | None = None) -> Flask:
    """Build the app. ``state`` is the manager dict (or any mapping holding "snapshot");
    ``actions`` receives commands (``workers.messages.Command``: "retry" of a name, "pause")."""
    from web.audit import Audit
    from web.console import NameConverter
    from web.console import bp as console
    from web.dashboard import bp as dashboard
    from web.guard import install
    from web.metrics import bp as metrics

    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config["FOLDERMILL_STATE"] = state
    app.config["FOLDERMILL_CONFIG"] = config
    app.config["FOLDERMILL_ACTIONS"] = actions or (lambda command: None)
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False
    app.config["FOLDERMILL_AUDIT"] = Audit(config.watch.dir / "audit.log")
    app.url_map.converters["name"] = NameConverter  # a file's name: "/" and all
    install(app, config.web)
    app.register_blueprint(dashboard)
    app.register_blueprint(console)
    app.register_blueprint(metrics)
    return app
