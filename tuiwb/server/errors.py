"""Every failure as a 4xx with a one-line ``detail`` (what to fix); never a traceback in a response.

A ``TuiwbError`` (a bad layer, feature, patch name, prompt...) is the client's to fix: 400. A body
or query that does not parse: 422 with the field named. Anything else is our bug: a 500 that says
so in one line (the traceback goes to the server's log, not to the client).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tuiwb.errors import TuiwbError

log = logging.getLogger("tuiwb.server")


def one_line(e: BaseException) -> str:
    """An exception as one line: a ``TuiwbError``'s own message, else ``internal error: Type: first line``."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(e, TuiwbError):
        return first or type(e).__name__
    return f"internal error: {type(e).__name__}: {first}" if first else f"internal error: {type(e).__name__}"


def _validation_line(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"`{where}`: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "bad request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(TuiwbError)
    async def _tuiwb(request: Request, e: TuiwbError):
        return JSONResponse({"detail": one_line(e)}, status_code=400)

    @app.exception_handler(ValueError)
    async def _value(request: Request, e: ValueError):  # a bad search query (parse_query)
        return JSONResponse({"detail": str(e).strip().splitlines()[0] if str(e).strip() else "bad value"},
                            status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        return JSONResponse({"detail": _validation_line(e)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        detail = e.detail if isinstance(e.detail, str) else str(e.detail)
        return JSONResponse({"detail": detail.splitlines()[0] if detail else "error"}, status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("request %s failed", request.url.path)
        return JSONResponse({"detail": one_line(e)}, status_code=500)
