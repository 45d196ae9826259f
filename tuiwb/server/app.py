"""``create_app``: the companion's FastAPI app on a Session (routes, the guard, the WebSocket hub)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Sequence

from fastapi import FastAPI, WebSocket

from tuiwb.server import api, errors, static
from tuiwb.server.hub import Hub
from tuiwb.server.security import Guard
from tuiwb.session.adapter import Lab


def create_app(session, *, token: str, roots: Sequence[Path] = (), web_dir: Path | None = None,
               target: dict | None = None, ranked: dict[int, Sequence[int]] | None = None,
               extra_hosts: Iterable[str] = (), top_k: int = 10) -> FastAPI:
    """The app. ``roots``: the directories the server was started with (the only ones an endpoint may
    touch); ``web_dir``: the page (default web_export/ of this checkout); ``target``: ``{"layer",
    "feature"}`` worth showing first; ``ranked``: feature ids to list first per layer (contrast hits);
    ``extra_hosts``: host names allowed besides the loopback ones (an explicit ``--host``)."""
    if not token:
        raise ValueError("create_app needs a token")
    lab = Lab(session, top_k=top_k)
    state_extra = {"target": target, "ranked": {int(k): [int(f) for f in v] for k, v in (ranked or {}).items()}}
    hub = Hub(lab, state_extra)
    web_dir = Path(web_dir) if web_dir is not None else static.default_web_dir()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        hub.start()
        try:
            yield
        finally:
            hub.stop()

    app = FastAPI(title="tuiwb companion", description="The live lab over HTTP and WebSocket (docs/companion.md)",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.lab, app.state.hub, app.state.web_dir = lab, hub, web_dir
    errors.install(app)
    app.include_router(api.router(lab, roots=[Path(r) for r in roots], state_extra=state_extra))
    app.include_router(static.router(web_dir))

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await hub.serve(websocket)

    app.add_middleware(Guard, token=token, extra_hosts=extra_hosts)
    return app
