"""The page: ``GET /`` (web_export/index.html), ``GET /static/...`` (files under web_export/) and
``GET /static/vendor/d3.js`` (d3 from web_export/node_modules, installed by ``make install``).

Paths are confined: a request resolves inside the page directory or gets a 404, node_modules and
dot-files are never served except the one d3 file, and symlinks pointing out do not help.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from tuiwb.server.paths import confined
from tuiwb.server.security import TOKEN_COOKIE, TOKEN_QUERY

D3_FILE = Path("node_modules/d3/dist/d3.min.js")
"""d3's UMD build inside web_export/ (the page loads it with a classic script tag: ``window.d3``)."""
D3_MISSING = "d3 is not installed: run `make install`"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
               ".map": "application/json", ".txt": "text/plain; charset=utf-8"}
CSP = ("default-src 'self' 'unsafe-inline' data: blob:; connect-src 'self'; img-src 'self' data: blob:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
"""Nothing loads from another host, even if a page change tried to (the page must work offline)."""


def default_web_dir() -> Path:
    """web_export/ of this checkout."""
    return Path(__file__).resolve().parents[2] / "web_export"


def d3_path(web_dir: Path) -> Path | None:
    p = web_dir / D3_FILE
    return p if p.is_file() else None


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix.lower()),
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"})


def router(web_dir: Path) -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/")
    def index(request: Request) -> Response:
        page = web_dir / "index.html"
        if not page.is_file():
            return JSONResponse({"detail": f"the page is missing: {page} does not exist (web_export/ is the "
                                           "companion page)"}, status_code=404)
        resp = _file(page)
        token = request.query_params.get(TOKEN_QUERY)
        if token:  # the guard checked it: let the page's assets and socket load without a query
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
        return resp

    @r.get("/static/vendor/d3.js")
    def d3() -> Response:
        p = d3_path(web_dir)
        if p is None:
            return JSONResponse({"detail": D3_MISSING}, status_code=503)
        return _file(p)

    @r.get("/static/{path:path}")
    def static(path: str) -> Response:
        p = confined(web_dir, path)
        if p is None or "node_modules" in p.relative_to(web_dir.resolve()).parts or not p.is_file():
            raise HTTPException(404, f"no such file: /static/{path}")
        return _file(p)

    return r
