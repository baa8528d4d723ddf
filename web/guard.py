"""What a request must be before the app answers it, and what every response carries.

- **Host.** Every request names a ``Host`` on the allow-list: the loopback names and
  addresses, the configured ``[web] host`` and ``[web] allowed_hosts``. Anything else
  (an empty Host, ``:8000``, a name an attacker's DNS rebound to 127.0.0.1) gets 400
  and no data. Flask 3.1's ``TRUSTED_HOSTS`` would do this for names, but the pinned
  Werkzeug compares a configured entry only up to its first colon, so ``[::1]`` can
  never match; names and IPv4 go through Werkzeug's own ``host_is_trusted`` (which
  also validates the characters and the port), bracketed IPv6 is compared here.
- **Origin.** A state-changing request (POST: the only method actions accept) from
  another origin is refused with 403, the way Go's ``http.CrossOriginProtection`` and
  Sidekiq 8.1 do it: ``Sec-Fetch-Site`` must be ``same-origin`` or ``none``; a browser
  that sends none must send an ``Origin`` equal to the dashboard's own. A browser's
  request must also carry ``X-Foldermill-Action: 1``, which a form cannot send and a
  cross-origin ``fetch`` cannot send without a CORS preflight we never grant. A
  request with neither header is no browser's (curl, a script): it needs the token
  when one is set, and loopback when none is, as before.
- **Token.** With ``[web] token``, actions need ``Authorization: Bearer <token>``
  (compared in constant time); ``protect_reads`` puts the JSON API and ``/metrics``
  behind it too (the page itself, its static files and ``/health`` stay open).
- **Headers.** A Content-Security-Policy with no inline script and
  ``frame-ancestors 'none'``, ``X-Content-Type-Options: nosniff``, a
  ``Referrer-Policy``, ``Cross-Origin-Resource-Policy: same-origin``; never
  ``Access-Control-Allow-Origin``.
- **Audit.** Every action, accepted or refused, is one JSON line in
  ``watch_dir/audit.log`` (``web/audit.py``).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterable

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.sansio.utils import host_is_trusted

from workers.config import WebConfig

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ACTION_HEADER = "X-Foldermill-Action"
OPEN_PATHS = ("/", "/health")  # with protect_reads: the page must load to ask for the token
_IPV6_HOST = re.compile(r"\[([0-9a-f:.]+)\](?::([1-9][0-9]{0,4}))?", re.IGNORECASE)
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Hosts:
    """The Host names the dashboard answers to."""

    def __init__(self, web: WebConfig) -> None:
        names = [*LOOPBACK_HOSTS, *web.allowed_hosts]
        if web.host not in ("0.0.0.0", "::", ""):
            names.append(f"[{web.host}]" if ":" in web.host else web.host)
        self.names = [n.lower() for n in names if not n.startswith("[")]
        self.v6 = {_v6(n[1:-1]) for n in names if n.startswith("[")} - {None}

    def allow(self, host: str | None) -> bool:
        if not host:
            return False
        host = host.lower()  # host names are not case-sensitive
        m = _IPV6_HOST.fullmatch(host)
        if m:
            return (not m.group(2) or int(m.group(2)) <= 65535) and _v6(m.group(1)) in self.v6
        return host_is_trusted(host, self.names)


def _v6(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def install(app: Flask, web: WebConfig) -> None:
    """The checks before every request and the headers after every response."""
    hosts = Hosts(web)

    @app.before_request
    def check() -> tuple[Response, int] | None:
        if not hosts.allow(request.headers.get("Host")):
            return _refuse(400, "this dashboard does not answer to that Host name (add it to [web] allowed_hosts)")
        if request.method == "POST":
            return _check_action(web)
        open_path = request.path in OPEN_PATHS or request.path.startswith("/static/")
        if web.protect_reads and not open_path and not _token_ok(web.token):
            return _refuse(401, "a valid 'Authorization: Bearer <token>' header is required ([web] protect_reads)")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            response.headers[key] = value
        response.headers.pop("Access-Control-Allow-Origin", None)
        if request.method == "POST":
            current_app.config["FOLDERMILL_AUDIT"].record(response)
        return response


def _check_action(web: WebConfig) -> tuple[Response, int] | None:
    """None if this POST may act; how it was let in is kept in ``g.auth`` for the audit."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    browser = site is not None or origin is not None
    if site is not None and site not in ("same-origin", "none"):
        return _refuse(403, f"refused: a request from another origin (Sec-Fetch-Site: {site[:40]})")
    if site is None and origin is not None and origin.lower() != request.host_url.rstrip("/").lower():
        return _refuse(403, "refused: a request from another origin (Origin is not this dashboard's)")
    if browser and request.headers.get(ACTION_HEADER) != "1":
        return _refuse(403, f"refused: the {ACTION_HEADER}: 1 header is missing (the dashboard's page sends it)")
    if web.token:
        if not _token_ok(web.token):
            return _refuse(401, "a valid 'Authorization: Bearer <token>' header is required")
        g.auth = "token"
        return None
    if not _loopback(request.remote_addr):
        return _refuse(403, "actions are accepted from loopback only when [web] token is not set")
    g.auth = "loopback, same origin" if browser else "loopback"
    return None


def _token_ok(token: str) -> bool:
    given = request.headers.get("Authorization", "")
    return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())


def _loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def _refuse(status: int, message: str) -> tuple[Response, int]:
    g.refused = message
    return jsonify({"error": message}), status


def audit_targets(names: Iterable[str], action: str) -> None:
    """What the view is about to do, for the audit line (set before it validates)."""
    g.action = action
    g.targets = list(names)
