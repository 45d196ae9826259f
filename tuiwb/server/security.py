"""Who may talk to the server: a pure ASGI middleware in front of every route and the WebSocket.

* ``Host`` must be on the allow-list (loopback names at the served port, plus an explicit ``--host``):
  a DNS-rebinding page can reach 127.0.0.1 but sends its own host name.
* The token, from ``?token=``, the ``X-Tuiwb-Token`` header or the ``tuiwb_token`` cookie (set by
  ``GET /?token=``), compared in constant time.
* A browser request that names an ``Origin`` must come from one of the allowed origins; for the
  WebSocket that is the cross-site hijacking check (a non-browser client sends no Origin and still
  needs the token).

HTTP failures answer 403 ``{"detail": ...}``; a WebSocket is accepted and closed at once with code
1008 (policy violation), so a browser sees the code instead of a bare failed handshake. No CORS
headers are ever sent.
"""

from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Iterable
from urllib.parse import parse_qs

TOKEN_QUERY = "token"
TOKEN_HEADER = "x-tuiwb-token"
TOKEN_COOKIE = "tuiwb_token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WS_POLICY_VIOLATION = 1008


def host_name(host: str) -> str:
    """A host as it appears in a ``Host`` header (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class Guard:
    """ASGI middleware: the checks above, then the wrapped app."""

    def __init__(self, app, *, token: str, extra_hosts: Iterable[str] = ()):
        self.app = app
        self.token = token.encode()
        self.names = {n.lower() for n in LOOPBACK_NAMES} | {host_name(h).lower() for h in extra_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        problem = self.problem(scope)
        if problem is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            msg = await receive()
            if msg["type"] == "websocket.connect":
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": problem[:120]})
            return
        body = json.dumps({"detail": problem}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    # --- the checks ----------------------------------------------------------------------------
    def allowed_hosts(self, scope) -> set[str]:
        """``name:port`` for each allowed name at the port this request was served on."""
        port = (scope.get("server") or (None, None))[1]
        hosts = {f"{n}:{port}" for n in self.names}
        if port in (80, None):  # the default port may be left out of the Host header
            hosts |= self.names
        return hosts

    def problem(self, scope) -> str | None:
        """Why this request is refused (one line), or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        allowed = self.allowed_hosts(scope)
        host = headers.get("host", "").lower()
        if host not in allowed:
            return f"host {host!r} is not allowed: open the URL the server printed (127.0.0.1)"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in {f"http://{h}" for h in allowed}:
            return f"origin {origin!r} is not allowed: only the page this server serves may connect"
        if not hmac.compare_digest(self.request_token(scope, headers), self.token):
            return "missing or wrong token: open the URL the server printed (it ends in ?token=...)"
        return None

    @staticmethod
    def request_token(scope, headers: dict[str, str]) -> bytes:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get(TOKEN_QUERY):
            return query[TOKEN_QUERY][-1].encode()
        if TOKEN_HEADER in headers:
            return headers[TOKEN_HEADER].encode()
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 — a malformed cookie header is simply no token
            return b""
        return cookie[TOKEN_COOKIE].value.encode() if TOKEN_COOKIE in cookie else b""
