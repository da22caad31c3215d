"""The search page behind the box at the top of every page: projects, models and versions
(by message, alias, author or metadata) that the user can read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from lmvp_server.deps import SessionDep
from lmvp_server.services import search
from lmvp_server.web.rendering import PageRoute, render
from lmvp_server.web.session import WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/search")
def search_page(
    request: Request,
    caller: WebCallerDep,
    session: SessionDep,
    q: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """What matches every word of `q`, by kind."""
    results = search.search(session, caller, q)
    return render(request, "search.html", {"query": q, "results": results, "limit": search.LIMIT})
