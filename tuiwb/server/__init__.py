"""The browser companion: a FastAPI app + WebSocket hub on the same ``Session`` the TUI uses.

The only package that imports fastapi, uvicorn or starlette. ``create_app`` (``app.py``) builds the
app, ``start_server`` (``run.py``) runs it in a daemon thread (``tuiwb serve``, ``tuiwb ui
--companion``, the tests and benchmarks). The protocol and the security model: docs/companion.md.
"""

from tuiwb._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "create_app": "app", "start_server": "run", "ServerHandle": "run",
})
