"""The operator's console: what sits in ``failed/`` and why, a search by name and a
file's timeline, the head of its outputs, the audit log, and the actions (retry, retry
all, discard, replay, pause and resume intake). Reads are answered here from the watch
dir (``web/lookup.py``); an action is checked here (``workers/actions.py``, the rule
the CLI shares) and handed to the supervisor, which performs it. ``web/guard.py`` has
already checked the Host, the origin and the token.

A file is named in a URL by its exact bytes, percent-encoded (the ``ref`` every answer
gives), or, with ``?shown=1``, by its shown form (``caf\\xe9.log``, as the journal shows
it). Never both at once: a name and a shown name can be two different files.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify, request

from web.guard import audit_targets
from web.lookup import PREVIEW_BYTES, failed_files, failed_names, names_digest, output_head, search, timeline
from workers.actions import check
from workers.config import Config
from workers.messages import Command
from workers.names import shown, unshown

bp = Blueprint("console", __name__)
PAGE_MAX = 200
QUERY_MAX = 200


def _config() -> Config:
    return current_app.config["FOLDERMILL_CONFIG"]


def path_name(segment: int, exact: bool = False) -> str:
    """The exact name in the request path's ``segment``-th part: PATH_INFO holds the
    percent-decoded bytes (as latin-1, PEP 3333), so bytes that are not UTF-8 survive.
    With ``?shown=1`` (unless ``exact``) the part is a shown name, and the name is the
    one it stands for."""
    raw = request.environ.get("PATH_INFO", "").encode("latin-1", "replace").split(b"/")
    name = os.fsdecode(raw[segment]) if segment < len(raw) else ""
    return unshown(name) if not exact and request.args.get("shown") == "1" else name


def _act(command: Command) -> None:
    current_app.config["FOLDERMILL_ACTIONS"](command)


def _bounded_int(key: str, default: int, high: int) -> int:
    try:
        return max(0, min(high, int(request.args.get(key, default))))
    except ValueError:
        return default


# -- reads -------------------------------------------------------------------------------------


@bp.get("/failed", endpoint="failed")
def failed() -> Response:
    return jsonify(failed_files(_config(), _bounded_int("offset", 0, 1 << 31), _bounded_int("limit", 50, PAGE_MAX)))


@bp.get("/files", endpoint="files")
def files() -> tuple[Response, int]:
    q = request.args.get("q", "")
    if not q or len(q) > QUERY_MAX:
        return jsonify({"error": f"q= must be 1 to {QUERY_MAX} characters of a file name"}), 400
    return jsonify({"q": q, "files": search(_config(), q)}), 200


@bp.get("/files/<name>", endpoint="file")
def file(name: str) -> tuple[Response, int]:
    exact = path_name(2)
    found = timeline(_config(), exact)
    if not found["entries"]:
        return jsonify({"error": f"no journal entry for {shown(exact)}"}), 404
    return jsonify(found), 200


@bp.get("/files/<name>/outputs/<output>", endpoint="output")
def output(name: str, output: str) -> tuple[Response, int]:
    config = _config()
    exact, out = path_name(2), path_name(4, exact=True)  # an output is named by its ref, always
    text = output_head(config, exact, out)
    if text is None:
        return jsonify({"error": f"{shown(out)} is not an output of {shown(exact)} in output/"}), 404
    response = current_app.response_class(text, mimetype="text/plain")
    response.headers["X-Foldermill-Preview"] = f"first 200 lines, at most {PREVIEW_BYTES} bytes"
    return response, 200


@bp.get("/audit", endpoint="audit")
def audit() -> Response:
    return jsonify({"entries": current_app.config["FOLDERMILL_AUDIT"].tail(_bounded_int("limit", 50, 500))})


# -- actions -----------------------------------------------------------------------------------


def _one(action: str) -> tuple[Response, int]:
    """retry, discard or replay of the file named in the path."""
    root = _config().watch.dir
    name = path_name(2)
    audit_targets([name], action)
    problem = check(root, action, name)
    if problem:
        status = 404 if problem.startswith("no such file") else 409 if "already holds" in problem else 400
        return jsonify({"error": problem, "file": shown(name)}), status
    _act(Command(action, shown(name)))
    return jsonify({"accepted": True, "action": action, "file": shown(name)}), 202


@bp.post("/failed/<name>/retry", endpoint="retry")
def retry(name: str) -> tuple[Response, int]:
    return _one("retry")


@bp.post("/failed/<name>/discard", endpoint="discard")
def discard(name: str) -> tuple[Response, int]:
    return _one("discard")


@bp.post("/processed/<name>/replay", endpoint="replay")
def replay(name: str) -> tuple[Response, int]:
    return _one("replay")


@bp.post("/failed/retry-all", endpoint="retry_all")
def retry_all() -> tuple[Response, int]:
    """Every file in failed/, if it still holds the ``count`` the operator confirmed (and,
    when the body says it, the ``set``: the digest ``GET /failed`` gave)."""
    names = failed_names(_config())
    audit_targets(names, "retry-all")
    body = request.get_json(silent=True)
    confirmed = body.get("count") if isinstance(body, dict) else request.args.get("count", type=int)
    if not isinstance(confirmed, int) or isinstance(confirmed, bool):
        return jsonify({"error": 'retry-all needs the count confirmed: {"count": N}'}), 400
    if confirmed != len(names):
        return jsonify({"error": f"failed/ holds {len(names)} files, not the {confirmed} confirmed; "
                                 "nothing was retried", "count": len(names), "set": names_digest(names)}), 409
    seen = body.get("set") if isinstance(body, dict) else None
    if seen is not None and seen != names_digest(names):
        return jsonify({"error": "the files in failed/ changed since they were confirmed; nothing was retried",
                        "count": len(names), "set": names_digest(names)}), 409
    for name in names:
        _act(Command("retry", shown(name)))
    return jsonify({"accepted": True, "action": "retry-all", "count": len(names)}), 202


@bp.post("/intake/<any(pause, resume):action>", endpoint="intake")
def intake(action: str) -> tuple[Response, int]:
    audit_targets([], f"intake-{action}")
    _act(Command(action))
    return jsonify({"accepted": True, "intake": "paused" if action == "pause" else "running"}), 202
