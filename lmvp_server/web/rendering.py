"""Turning page data into HTML: the Jinja2 environment, its filters, and the route class that
renders every failure of a page as an HTML error page instead of the API's JSON.

Templates live in `templates/` beside this file and are compiled once per process. Everything
is autoescaped; nothing user-supplied is ever marked safe.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from lmvp_server import __version__
from lmvp_server.errors import APIError, error_body

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


class PageError(Exception):
    """A page cannot be shown: rendered as an HTML page with `status` and `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LoginRequired(Exception):
    """No valid session: pages redirect to the login form, JSON endpoints answer 401."""


def render(
    request: Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> HTMLResponse:
    """Render `template` with `context` plus what every page needs (the signed-in user, the
    CSRF token for its forms); returns the HTML response."""
    page = _environment().get_template(template)
    html = page.render(
        {
            "request": request,
            "user": getattr(request.state, "web_user", None),
            "csrf": getattr(request.state, "web_csrf", ""),
            "version": __version__,
            "problem": None,
            **context,
        }
    )
    return HTMLResponse(html, status_code=status, headers=_NO_STORE)


def render_error(request: Request, status: int, message: str) -> HTMLResponse:
    titles = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Not accepted"}
    title = titles.get(status, "Something went wrong")
    return render(request, "error.html", {"title": title, "message": message}, status=status)


class PageRoute(APIRoute):
    """A route of the web console. Errors become HTML pages (a non-member's 404, a viewer's
    403) and a missing session a redirect to the login form; JSON endpoints of the console
    (path ending in `.json`) keep the API's JSON error body. Every response says how long the
    server took in a `Server-Timing` header (read by `bench/web.py`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        wants_json = self.path.endswith(".json")

        async def handle(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except LoginRequired:
                if wants_json:
                    response = JSONResponse(
                        error_body("not_authenticated", "your session ended: log in again"), 401
                    )
                else:
                    target = request.url.path
                    if request.url.query:
                        target += "?" + request.url.query
                    response = RedirectResponse(
                        f"/login?next={quote(target, safe='')}", status_code=303
                    )
            except (APIError, PageError) as exc:
                status = exc.status
                if wants_json:
                    response = JSONResponse(error_body("error", exc.message), status)
                else:
                    response = render_error(request, status, exc.message)
            except RequestValidationError as exc:
                problems = "; ".join(str(e.get("msg")) for e in exc.errors()[:3])
                message = f"this address or form is not valid: {problems}"
                response = render_error(request, 422, message)
            took = (time.perf_counter() - start) * 1000
            response.headers["Server-Timing"] = f"app;dur={took:.2f}"
            return response

        return handle


_NO_STORE = {"Cache-Control": "no-store"}
_environment_cache: list[Environment] = []


def _environment() -> Environment:
    if not _environment_cache:
        env = Environment(
            loader=FileSystemLoader(TEMPLATE_DIR),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(
            size=format_size,
            when=format_time,
            number=format_number,
            precise=format_precise,
            signed=format_signed,
            urlpath=lambda value: quote(str(value)),
            json_script=json_script,
            pretty_json=lambda value: orjson.dumps(
                value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
            ).decode(),
        )
        _environment_cache.append(env)
    return _environment_cache[0]


def format_size(size: int | None) -> str:
    """Bytes for people: `512 B`, `1.5 KiB`, `3.2 GiB`."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def format_time(moment: datetime | None) -> str:
    """A UTC time to the minute, `2024-05-01 14:03 UTC`."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_number(value: Any) -> str:
    """A metric value with four significant digits; NaN and infinities as words."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("∞" if value > 0 else "-∞")
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def format_precise(value: Any) -> str:
    """A value to compare by eye: floats to 6 significant digits, whole, never cut with '…'."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    if value is None:
        return "—"
    return format_number(value)


def format_signed(value: float | None) -> str:
    """A difference with its sign (`+0.0123`, `-2`); empty for none, `0` for none at all."""
    if value is None:
        return ""
    if value == 0:
        return "0"
    return f"{value:+.4g}"


def json_script(value: Any) -> Markup:
    """`value` as JSON that is safe inside a `<script type="application/json">` element."""
    text = orjson.dumps(value).decode()
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)  # noqa: S704 - JSON with every markup character escaped above
