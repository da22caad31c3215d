"""API errors: one exception type carrying an HTTP status, a stable code and a message a user can
act on, and the handlers that turn every failure into `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmvp_server.db import database_lost
from lmvp_server.storage import StoreUnavailable

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error the client caused or must know about; never carries a stack trace out."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def not_found(what: str) -> APIError:
    return APIError(404, "not_found", f"{what} not found")


def forbidden(message: str) -> APIError:
    return APIError(403, "forbidden", message)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if details:
        err["details"] = details
    return {"error": err}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers
    )


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path."""
    from lmvp_server.openapi import route_table

    path = request.url.path
    methods: set[str] = set()
    for route in route_table(request.app.router.routes):
        if route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        # The blob store is down or overloaded: nothing stored was touched, try again later.
        return JSONResponse(
            error_body("store_unavailable", exc.message),
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        # The database gone for a moment passes (the pool has replaced its older connections
        # already); anything else is a bug.
        if not database_lost(exc):
            return _failed(request, exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        return JSONResponse(
            error_body(
                "database_unavailable",
                "the server lost its database for a moment (restarting?); nothing was changed: "
                "try again",
            ),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        message = "invalid request: " + "; ".join(problems[:5])
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse(error_body("invalid_request", message, {"errors": errors}), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names only the methods of the first route whose path matched; FastAPI
            # makes a route per method, so `Allow` listed one method of the path's several.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _failed(request, exc)


def _failed(request: Request, exc: BaseException) -> JSONResponse:
    """500 for a bug: the traceback goes to the log, never to the caller."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "the server failed; the error is in its log"), 500
    )
