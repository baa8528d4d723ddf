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
from urllib.parse import unquote_to_bytes, urlsplit

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.routing import BaseConverter

from web.guard import audit_targets
from web.lookup import PREVIEW_BYTES, failed_files, failed_names, names_digest, output_head, search, timeline
from workers.actions import check
from workers.config import Config
from workers.messages import Command
from workers.names import shown, unshown
from workers.paths import look, plain

bp = Blueprint("console", __name__)


class NameConverter(BaseConverter):
    """A file's name in a URL, "/" and all (``<name:...>``, registered by ``create_app``):
    anything, even what is refused (an absolute path, an empty part), so that a view
    says why; the view reads the name from the path as sent (``path_parts``)."""

    regex = ".+?"
    part_isolating = False

PAGE_MAX = 200
QUERY_MAX = 200


def _config() -> Config:
    return current_app.config["FOLDERMILL_CONFIG"]


def path_parts() -> list[bytes]:
    """The request path's parts as the client sent them (split at each "/" it typed),
    each percent-decoded to its exact bytes: a ref's ``%2F`` stays inside its part. The
    raw URI says that (PATH_INFO is decoded: "a%2Fb" and "a/b" are one there); where
    it is missing or is not the path routed (a prefix, leading slashes merged),
    PATH_INFO's parts are used: the same names, joined by "/"."""
    routed = request.environ.get("PATH_INFO", "").encode("latin-1", "replace")
    raw = request.environ.get("REQUEST_URI") or request.environ.get("RAW_URI") or ""
    path = raw.partition("?")[0] if raw.startswith("/") else urlsplit(raw).path
    parts = [unquote_to_bytes(p) for p in path.encode("latin-1", "replace").split(b"/")]
    sent = b"/".join(parts)
    # Waitress routes the exact bytes; Werkzeug's own server and test client decode the
    # path as UTF-8 first (a byte that is not becomes U+FFFD): the same path either way.
    same = sent == routed or sent.decode("utf-8", "replace").encode() == routed
    return parts if same else routed.split(b"/")


def path_name(parts: list[bytes], exact: bool = False) -> str:
    """The exact name those parts of the path give (``a%2Fb%2Fx.log`` or ``a/b/x.log``:
    ``a/b/x.log``), bytes that are not UTF-8 kept (PEP 3333: latin-1). With
    ``?shown=1`` (unless ``exact``) they are a shown name, and the name is the one it
    stands for."""
    name = os.fsdecode(b"/".join(parts))
    return unshown(name) if not exact and request.args.get("shown") == "1" else name


def _refused(name: str) -> tuple[Response, int] | None:
    """400 with the problem if ``name`` cannot be a file's name (``..``, absolute...)."""
    problem = plain(name)
    return (jsonify({"error": problem, "file": shown(name)}), 400) if problem else None


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


@bp.get("/files/<name:_rest>", endpoint="file", merge_slashes=False)
def file(_rest: str) -> tuple[Response, int]:
    """``/files/<name>``: its timeline; ``/files/<name>/outputs/<output>``: the head of
    one of its outputs (a name or an output with a literal "/" is split at the first
    part "outputs": its ref, with ``%2F``, never is)."""
    parts = path_parts()[2:]
    if b"outputs" in parts[1:-1]:
        cut = parts.index(b"outputs", 1)
        return _output(path_name(parts[:cut]), path_name(parts[cut + 1:], exact=True))  # an output: by its ref
    exact = path_name(parts)
    refused = _refused(exact)
    if refused:
        return refused
    found = timeline(_config(), exact)
    if not found["entries"]:
        return jsonify({"error": f"no journal entry for {shown(exact)}"}), 404
    return jsonify(found), 200


def _output(exact: str, out: str) -> tuple[Response, int]:
    config = _config()
    refused = _refused(exact) or _refused(out)
    if refused:
        return refused
    problem = look(config.watch.dir / "output", out)[1]  # a symlinked directory: said as such
    if problem:
        return jsonify({"error": problem, "file": shown(out)}), 400
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
    watch = _config().watch
    name = path_name(path_parts()[2:-1])
    audit_targets([name], action)
    problem = check(watch.dir, action, name, watch.recursive)
    if problem:
        status = 404 if problem.startswith("no such file") else 409 if "already holds" in problem else 400
        return jsonify({"error": problem, "file": shown(name)}), status
    _act(Command(action, shown(name)))
    return jsonify({"accepted": True, "action": action, "file": shown(name)}), 202


@bp.post("/failed/<name:_name>/retry", endpoint="retry", merge_slashes=False)
def retry(_name: str) -> tuple[Response, int]:
    return _one("retry")


@bp.post("/failed/<name:_name>/discard", endpoint="discard", merge_slashes=False)
def discard(_name: str) -> tuple[Response, int]:
    return _one("discard")


@bp.post("/processed/<name:_name>/replay", endpoint="replay", merge_slashes=False)
def replay(_name: str) -> tuple[Response, int]:
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
