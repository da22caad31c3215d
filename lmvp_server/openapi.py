"""What the OpenAPI document (`/api/v1/openapi.json`) says beyond what FastAPI infers, so that a
generated client or a tus client can trust it: every status an operation can answer, with the
one error body all errors share (`{"error": {"code", "message"}}`); the headers of the tus upload
protocol; and the bearer token most operations need.

Routes declare their statuses with `errors(...)` (and the tus operations their headers with
`tus_request(...)` and `tus_response(...)`); `install_openapi` adds what holds for every
operation: the token requirement, the answer to oversized headers, the error body of 422.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute

BEARER_SCHEME = "bearer"
# In `openapi_extra` of an operation that reads the token itself instead of through `CallerDep`.
NEEDS_TOKEN: dict[str, Any] = {"security": [{BEARER_SCHEME: []}]}


class ErrorInfo(BaseModel):
    code: str = Field(description="stable, machine-readable: `not_found`, `conflict`, ...")
    message: str = Field(description="what went wrong and what to do, for a person")
    details: dict[str, Any] | None = Field(
        default=None, description="more for a program, on some errors (e.g. `missing` blobs)"
    )


class ErrorBody(BaseModel):
    """The body of every error answer of the API."""

    error: ErrorInfo


_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}

# What each status means in this API; a route may say more with `notes`.
_MEANINGS = {
    400: "Malformed request: a header or parameter that is not what it must be (e.g. a number "
    "that is not plain digits), or a body that is not UTF-8 JSON.",
    401: "No token, or an unknown, expired or revoked one; `error.code` says which.",
    403: "The token is read-only, or the caller's role in the project is too low.",
    404: "Not found, or in a project the caller is not a member of (names do not leak).",
    408: "The request's body stopped arriving: what came before was kept.",
    409: "Conflicts with the current state.",
    412: "`Tus-Resumable` is missing or not a version this server speaks (see `Tus-Version`).",
    413: "Too large: the request body, or what it declares.",
    415: "The body's `Content-Type` is not the one this operation takes.",
    416: "No range of `Range` lies inside the blob.",
    422: "Well formed but invalid: `error.message` names the field and why.",
    423: "Another request is writing to this upload right now: retry.",
    429: "Too many failed logins for this account or address: retry after `Retry-After` seconds.",
    431: "The request's headers are too large or too many.",
    503: "Unavailable for a moment (the database or the object store did not answer; for a "
    "login, too many passwords being checked at once): nothing was changed, retry after "
    "`Retry-After` seconds.",
    460: "The bytes received do not hash to the declared sha256: nothing was stored; upload "
    "again (tus checksum extension's status).",
    507: "The server's disk is full: the upload was dropped.",
}

_INTEGER_HEADER = {"type": "string", "pattern": r"^[0-9]+$"}
# Headers an error answer always carries.
_ERROR_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    416: {
        "Content-Range": {
            "description": "`bytes */<size>`: the blob's size",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "seconds until a login may be tried again",
            "required": True,
            "schema": _INTEGER_HEADER,
        }
    },
    503: {
        "Retry-After": {
            "description": "seconds to wait before trying again",
            "required": True,
            "schema": _INTEGER_HEADER,
        }
    },
}


def errors(*statuses: int, notes: Mapping[int, str] | None = None) -> dict[int | str, Any]:
    """`responses=` of a route: each status with its meaning, the error body and the headers it
    always carries. `notes` says what a status means for this operation, instead of the
    general meaning. (401 with `WWW-Authenticate` is added to every operation that takes a
    token by `install_openapi`.)"""
    notes = notes or {}
    out: dict[int | str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": notes.get(status, _MEANINGS[status]),
            "model": ErrorBody,
        }
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        out[status] = response
    return out


# --- tus ----------------------------------------------------------------------------------------

TUS_VERSION_VALUE = "1.0.0"
# Request headers of the tus operations, as OpenAPI parameters.
_TUS_PARAMETERS: dict[str, dict[str, Any]] = {
    "Tus-Resumable": {
        "description": "The tus version the client speaks; this server speaks 1.0.0 only.",
        "required": True,
        "schema": {"type": "string", "enum": [TUS_VERSION_VALUE]},
    },
    "Upload-Length": {
        "description": "The file's size in bytes (at most `Tus-Max-Size`). "
        "`Upload-Defer-Length` is not supported.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "Upload-Metadata": {
        "description": "Comma-separated `key base64(value)` pairs: `project` (required), "
        "`sha256` (the file's, 64 lowercase hex digits; may be left out, then the server "
        "tells the stored blob's hash in `LMVP-Blob-Sha256`), `filename`. Values are UTF-8 "
        "without control characters.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Upload-Offset": {
        "description": "Where the body goes in the file: the offset the server holds (ask `HEAD`).",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
}
# Response headers of the tus operations.
_TUS_HEADERS: dict[str, dict[str, Any]] = {
    "Tus-Resumable": {"description": "1.0.0", "schema": {"type": "string"}},
    "Tus-Version": {"description": "The tus versions this server speaks.", "schema": {}},
    "Tus-Extension": {"description": "creation,termination", "schema": {"type": "string"}},
    "Tus-Max-Size": {
        "description": "The largest file this server takes, in bytes.",
        "schema": _INTEGER_HEADER,
    },
    "Location": {
        "description": "The upload's URL, for PATCH, HEAD and DELETE.",
        "schema": {"type": "string"},
    },
    "Upload-Offset": {
        "description": "How many bytes of the upload the server holds.",
        "schema": _INTEGER_HEADER,
    },
    "Upload-Length": {"description": "The upload's declared size.", "schema": _INTEGER_HEADER},
    "LMVP-Blob-Sha256": {
        "description": "Once the last byte arrived: the sha256 of the blob the upload became "
        "(the hash of the bytes received, which an upload that declared none learns here).",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
    "LMVP-Local-Uploads": {
        "description": "To a client on the server's own machine: the Unix socket that takes "
        "the file's descriptor instead of its bytes.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "no-store", "schema": {"type": "string"}},
}
TUS_PATCH_MEDIA_TYPE = "application/offset+octet-stream"
# Headers whose largest meaningful value is the server's `max_upload_size` (`Tus-Max-Size`).
_BOUNDED_BY_SIZE = frozenset({"Upload-Length", "Upload-Offset"})


def tus_request(*headers: str, body: bool = False) -> dict[str, Any]:
    """`openapi_extra=` of a tus operation: the request headers it reads (and for PATCH the
    body's media type), which the route takes from the raw request, not as FastAPI
    parameters, so that errors follow tus (412 for `Tus-Resumable`, 400 for numbers)."""
    extra: dict[str, Any] = {
        "parameters": [{"name": h, "in": "header", **_TUS_PARAMETERS[h]} for h in headers]
    }
    if body:
        extra["requestBody"] = {
            "required": True,
            "content": {TUS_PATCH_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    return extra


def tus_response(
    status: int, description: str, *, always: Iterable[str] = (), sometimes: Iterable[str] = ()
) -> dict[int | str, Any]:
    """The success answer of a tus operation (no body) and the headers it carries: `always`
    are in every such answer, `sometimes` only when they apply."""
    headers = {h: {**_TUS_HEADERS[h], "required": True} for h in always}
    headers.update({h: _TUS_HEADERS[h] for h in sometimes})
    return {status: {"description": description, "headers": headers, "content": {}}}


# --- the whole document -------------------------------------------------------------------------


def install_openapi(app: FastAPI, *, prefix: str) -> None:
    """Make `app.openapi()` add, to FastAPI's document, what holds for every operation under
    `prefix`: the bearer token of those that need one (401 then), 431, 503 (the database out of
    reach for a moment), 400 where a JSON body is read (one that does not parse), and the
    project's error body for 422 (FastAPI documents its own, which this API never sends)."""
    from lmvp_server.deps import get_caller

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        info = schema.setdefault("info", {})
        info["description"] = f"{info.get('description', '')}\n\n{_CONVENTIONS}".strip()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `POST /api/v1/auth/login`, `POST /api/v1/tokens` or "
            "`lmvp login` (`lmvp_...`). Read tokens may only read.",
        }
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        error_schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(error_schema.pop("$defs", {}))
        schemas["ErrorBody"] = error_schema
        with_token = {
            (route.path, method.lower())
            for route in route_table(app.routes)
            if isinstance(route.route, APIRoute) and _depends_on(route.route.dependant, get_caller)
            for method in route.methods
        }
        max_upload = app.state.context.settings.max_upload_size
        for path, item in schema.get("paths", {}).items():
            if not path.startswith(prefix):
                continue
            for method, operation in item.items():
                responses = operation.setdefault("responses", {})
                if (path, method) in with_token:
                    operation.setdefault("security", NEEDS_TOKEN["security"])
                if "security" in operation:
                    responses.setdefault("401", _response(401))
                responses.setdefault("431", _response(431))
                responses.setdefault("503", _response(503))  # the database, for a moment
                body = operation.get("requestBody", {}).get("content", {})
                if "application/json" in body:  # a body that is no JSON at all
                    responses.setdefault("400", _response(400))
                if "422" in responses:
                    responses["422"]["content"] = {"application/json": {"schema": _ERROR_REF}}
                for parameter in operation.get("parameters", []):
                    parameter["schema"] = _not_null(parameter.get("schema", {}))
                    # No file is longer than the server takes, and no offset lies past its end.
                    if parameter.get("in") == "header" and parameter["name"] in _BOUNDED_BY_SIZE:
                        parameter["schema"] = {**parameter["schema"], "maximum": max_upload}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_CONVENTIONS = (
    'Errors answer `{"error": {"code", "message"}}` (some with `details`). Text in '
    "request bodies and parameters may not contain NUL characters or lone surrogates, numbers "
    "must be finite and integers fit in 64 bits (422): databases store nothing else. "
    "Non-members of a project get 404 for everything in it."
)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without FastAPI's `null` branch (`x: T | None = None`): a query
    parameter or header is absent or text, never JSON null, and a fuzzer that "violates" the
    schema by leaving the `T` branch sends text that is a valid `T` after all."""
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return schema
    kept = [b for b in branches if b != {"type": "null"}]
    if len(kept) != 1 or len(kept) == len(branches):
        return schema
    out = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**kept[0], **out}


def _response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _MEANINGS[status],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }
    if status == 401:
        response["headers"] = _WWW_AUTHENTICATE
    elif status in _ERROR_HEADERS:
        response["headers"] = _ERROR_HEADERS[status]
    return response


_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": '`Bearer realm="lmvp"`',
        "required": True,
        "schema": {"type": "string"},
    }
}


@dataclass(frozen=True)
class RouteEntry:
    route: BaseRoute
    # The full path (with the prefixes of the routers it was included through).
    path: str
    path_regex: re.Pattern[str]
    methods: frozenset[str]


def route_table(routes: Sequence[BaseRoute]) -> Iterator[RouteEntry]:
    """The app's HTTP routes with their full paths and methods. FastAPI from 0.13x keeps an
    included router as one route (its routes are reached through it); earlier ones copied
    its routes into the app's list."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI
        contexts: Iterable[Any] = routes
    else:
        contexts = iter_route_contexts(routes)
    for context in contexts:
        methods = getattr(context, "methods", None)
        regex = getattr(context, "path_regex", None)
        if methods and regex is not None:
            route = getattr(context, "original_route", context)
            yield RouteEntry(route, context.path_format, regex, frozenset(methods))


def _depends_on(dependant: Dependant, call: object) -> bool:
    return dependant.call is call or any(_depends_on(d, call) for d in dependant.dependencies)


__all__ = [
    "NEEDS_TOKEN",
    "ErrorBody",
    "RouteEntry",
    "errors",
    "install_openapi",
    "route_table",
    "tus_request",
    "tus_response",
]
