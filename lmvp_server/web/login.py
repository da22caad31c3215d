"""The login form, logging in and logging out of the web console (see `session` for how a
browser session is kept)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from lmvp_server.deps import CtxDep, SessionDep
from lmvp_server.login_guard import LoginRefused, check_login
from lmvp_server.services import tokens
from lmvp_server.web.rendering import PageRoute, render
from lmvp_server.web.session import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_TOKEN_NAME,
    CheckedFormDep,
    checked_login_form,
    clear_cookie,
    new_login_csrf,
    safe_next,
    set_cookie,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    """The login form, with a fresh double-submit CSRF token."""
    return _login_form(request, next_page=safe_next(next))


@router.post("/login")
async def log_in(
    request: Request,
    ctx: CtxDep,
    session: SessionDep,
    form: Annotated[FormData, Depends(checked_login_form)],
) -> Response:
    """Check the password (throttled like the API's login, see `login_guard`); on success
    start a session and go where the user was going."""
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    next_page = safe_next(str(form.get("next", "/")))
    try:
        user_id = await check_login(request, username, password)
    except LoginRefused as refused:
        response = _login_form(
            request,
            next_page=next_page,
            username=username,
            error=refused.message[0].upper() + refused.message[1:] + ".",
            status=refused.status,
        )
        response.headers["Retry-After"] = str(refused.retry_after)
        return response
    if user_id is None:
        return _login_form(
            request,
            next_page=next_page,
            username=username,
            error="Wrong username or password.",
            status=401,
        )
    days = ctx.settings.login_token_days
    secret = await run_in_threadpool(_start_session, session, user_id, days)
    if secret is None:
        return _login_form(request, next_page=next_page, username=username, status=401)
    response = RedirectResponse(next_page, status_code=303)
    set_cookie(request, response, SESSION_COOKIE, secret, max_age=days * 86400)
    clear_cookie(request, response, LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
def log_out(request: Request, session: SessionDep, _form: CheckedFormDep) -> Response:
    """End the session: its token is revoked, so the cookie is worthless even if kept."""
    tokens.revoke_by_secret(session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    clear_cookie(request, response, SESSION_COOKIE)
    return response


def _start_session(session: Session, user_id: int, days: int) -> str | None:
    """A session token for the user (None if the account went away meanwhile)."""
    issued = tokens.issue_login_token(session, user_id, SESSION_TOKEN_NAME, days)
    return issued.secret if issued is not None else None


def _login_form(
    request: Request,
    *,
    next_page: str,
    username: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    csrf = new_login_csrf()
    response = render(
        request,
        "login.html",
        {"login_csrf": csrf, "next_page": next_page, "username": username, "error": error},
        status=status,
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, csrf, max_age=3600)
    return response
