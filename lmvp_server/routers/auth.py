"""Logging in, the caller's own account and tokens, and (for admins) creating users."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.db import utcnow
from lmvp_server.deps import CallerDep, SessionDep, name_taken_is_conflict, require_admin
from lmvp_server.errors import APIError, not_found
from lmvp_server.login_guard import LoginRefused, check_login
from lmvp_server.models import Token, TokenScope, User
from lmvp_server.openapi import errors
from lmvp_server.schemas import (
    MAX_INT,
    LoginRequest,
    LoginResponse,
    TokenCreate,
    TokenCreated,
    TokenOut,
    UserCreate,
    UserOut,
)
from lmvp_server.security import hash_password, issue_token

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/login",
    response_model=LoginResponse,
    responses=errors(
        400, 401, 413, 422, 429, notes={401: "Wrong username or password (no token is needed)."}
    ),
)
async def login(body: LoginRequest, request: Request, session: SessionDep) -> LoginResponse:
    """Exchange a username and password for a write token. Throttled: after 10 failed logins
    of an account within 15 minutes (or 50 from one address), 429 with `Retry-After` whatever
    the password; 429 with `Retry-After` too when the server is checking too many passwords at
    once."""
    try:
        user_id = await check_login(request, body.username, body.password)
    except LoginRefused as refused:
        raise refused.api_error() from None
    if user_id is None:
        raise APIError(401, "invalid_credentials", "wrong username or password")
    days = request.app.state.settings.login_token_days
    return await run_in_threadpool(_issue_login_token, session, user_id, body.token_name, days)


def _issue_login_token(session: Session, user_id: int, name: str, days: int) -> LoginResponse:
    user = session.get(User, user_id)
    if user is None:  # deleted while its password was checked
        raise APIError(401, "invalid_credentials", "wrong username or password")
    token, secret = issue_token(session, user, name=name, expires_in=timedelta(days=days))
    session.commit()
    return LoginResponse(
        token=secret, expires_at=token.expires_at, user=UserOut.model_validate(user)
    )


@router.get("/me", response_model=UserOut)
def me(caller: CallerDep) -> UserOut:
    return UserOut.model_validate(caller.user)


@router.post(
    "/users",
    response_model=UserOut,
    status_code=201,
    responses=errors(
        400,
        403,
        409,
        413,
        422,
        notes={403: "Only server admins create users.", 409: "The username is taken."},
    ),
)
def create_user(body: UserCreate, caller: CallerDep, session: SessionDep) -> UserOut:
    """Create an account (server admins only; `lmvp-server user create` does the same)."""
    require_admin(caller)
    if session.scalar(select(User.id).where(User.username == body.username)) is not None:
        raise APIError(409, "conflict", f"user '{body.username}' already exists")
    user = User(
        username=body.username,
        display_name=body.display_name,
        password_hash=hash_password(body.password),
        is_admin=body.is_admin,
    )
    with name_taken_is_conflict(session, f"user '{body.username}' already exists"):
        session.add(user)
        session.commit()
    return UserOut.model_validate(user)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(caller: CallerDep, session: SessionDep) -> list[TokenOut]:
    rows = session.scalars(select(Token).where(Token.user_id == caller.user.id).order_by(Token.id))
    return [TokenOut.model_validate(t) for t in rows]


@router.post(
    "/tokens", response_model=TokenCreated, status_code=201, responses=errors(400, 403, 413, 422)
)
def create_token(body: TokenCreate, caller: CallerDep, session: SessionDep) -> TokenCreated:
    """Create a token for the caller; the secret is in this response and nowhere else."""
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    token, secret = issue_token(
        session, caller.user, name=body.name, scope=TokenScope(body.scope), expires_in=expires
    )
    session.commit()
    return TokenCreated(**TokenOut.model_validate(token).model_dump(), token=secret)


@router.delete("/tokens/{token_id}", status_code=204, responses=errors(403, 404, 422))
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_INT)], caller: CallerDep, session: SessionDep
) -> None:
    token = session.get(Token, token_id)
    if token is None or token.user_id != caller.user.id:
        raise not_found(f"token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.commit()
