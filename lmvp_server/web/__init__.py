"""The web console: server-rendered pages at `/` for projects, models, versions, runs, members,
tokens, search, the trash, retention policies and the audit log, served by the LMVP server
itself (templates, stylesheet, scripts and the vendored chart library included: nothing comes
from another site).

`install_web_console(app)` adds its routes and `/static`; the JSON API stays under `/api/v1`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from lmvp_server.web import (
    actions,
    audit,
    charts,
    login,
    manage,
    pages,
    retention,
    search,
    trash,
)
from lmvp_server.web.rendering import STATIC_DIR

__all__ = ["install_web_console"]


def install_web_console(app: FastAPI) -> None:
    """Serve the console's pages and its static files from `app`."""
    for module in (login, pages, actions, manage, audit, charts, search, trash, retention):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
