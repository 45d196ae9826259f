"""Helpers of the server tests: the token, the served origin, and the page's way to open the socket."""

from __future__ import annotations

TOKEN = "test-token"
BASE = "http://127.0.0.1:8765"
ORIGIN = BASE


def open_ws(client, token: str | None = TOKEN, origin: str | None = ORIGIN, headers: dict | None = None):
    """The socket as the page opens it (token in the query, the page's Origin)."""
    h = {"origin": origin} if origin is not None else {}
    h.update(headers or {})
    url = BASE.replace("http", "ws", 1) + "/ws" + (f"?token={token}" if token is not None else "")
    return client.websocket_connect(url, headers=h)


def receive_until(ws, pred, limit: int = 50):
    """Messages until one satisfies ``pred``; returns it (the others are dropped)."""
    for _ in range(limit):
        msg = ws.receive_json()
        if pred(msg):
            return msg
    raise AssertionError("no matching message")
