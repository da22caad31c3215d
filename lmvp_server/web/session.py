"""Browser sessions of the web console: a session is an API token, and the cookie holds its
secret.

Logging in on the web issues a token in the `tokens` table like `POST /auth/login` does (stored
only as a sha256 hash, expiring, revocable, listed among the user's tokens); its secret goes
into an HttpOnly, SameSite=Lax cookie (Secure when the page came over HTTPS) and nowhere else.
Every page authenticates the cookie exactly as the API authenticates a Bearer header, so a
revoked or expired session is refused the same way. Logging out revokes the token.

Forms carry a CSRF token derived from the session secret (an HMAC of it): a page from another
site can neither read the cookie nor the token, and a POST without the right token gets 403.
The login form, which has no session yet, uses a double-submit cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request, Response
from starlette.datastructures import FormData

from lmvp_server.deps import Caller, SessionDep, authenticate
from lmvp_server.errors import APIError
from lmvp_server.security import looks_like_token
from lmvp_server.web.rendering import LoginRequired, PageError

SESSION_COOKIE = "lmvp_session"
LOGIN_CSRF_COOKIE = "lmvp_login_csrf"
CSRF_FIELD = "csrf"
SESSION_TOKEN_NAME = "web console session"  # noqa: S105 - a label, not a secret


def csrf_token_for(secret: str) -> str:
    """The CSRF token of the session whose cookie holds `secret`."""
    return hmac.new(secret.encode(), b"lmvp web console csrf", hashlib.sha256).hexdigest()


def web_caller(request: Request, session: SessionDep) -> Caller:
    """The signed-in caller of a page; raises `LoginRequired` without a valid session.

    Also puts the user and the CSRF token on `request.state` for the templates."""
    secret = request.cookies.get(SESSION_COOKIE, "")
    if not looks_like_token(secret):
        raise LoginRequired
    try:
        caller = authenticate(session, f"Bearer {secret}")
    except APIError:
        raise LoginRequired from None
    request.state.web_user = caller.user
    request.state.web_csrf = csrf_token_for(secret)
    return caller


WebCallerDep = Annotated[Caller, Depends(web_caller)]


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token matches the session's; 403 otherwise.

    Checked before anything else about the request, so a forged post learns nothing."""
    form = await request.form()
    secret = request.cookies.get(SESSION_COOKIE, "")
    given = form.get(CSRF_FIELD)
    if (
        not looks_like_token(secret)
        or not isinstance(given, str)
        or not hmac.compare_digest(given, csrf_token_for(secret))
    ):
        raise PageError(
            403,
            "this form was refused: its security token is missing or does not belong to your "
            "session. Reload the page and send it again.",
        )
    return form


CheckedFormDep = Annotated[FormData, Depends(checked_form)]


async def checked_login_form(request: Request) -> FormData:
    """The login form, once its token matches the double-submit cookie set with the form."""
    form = await request.form()
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = form.get(CSRF_FIELD)
    if not expected or not isinstance(given, str) or not hmac.compare_digest(given, expected):
        raise PageError(
            403,
            "the login form was refused: its security token is missing or stale "
            "(are cookies blocked?). Open the login page again.",
        )
    return form


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


def set_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int | None
) -> None:
    """Set a cookie the way every console cookie is set: HttpOnly, SameSite=Lax, Secure over
    HTTPS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
    )


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
