"""Logging in, the caller's own account and tokens, and (for admins) creating users: the HTTP
face of `services.tokens` and `services.users`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from lmvp_server.deps import CallerDep, CtxDep, SessionDep
from lmvp_server.errors import APIError
from lmvp_server.login_guard import LoginRefused, check_login
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
from lmvp_server.services import tokens, users

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/login",
    response_model=LoginResponse,
    responses=errors(
        400, 401, 413, 422, 429, notes={401: "Wrong username or password (no token is needed)."}
    ),
)
async def login(
    body: LoginRequest, request: Request, ctx: CtxDep, session: SessionDep
) -> LoginResponse:
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
    days = ctx.settings.login_token_days
    return await run_in_threadpool(_issue_login_token, session, user_id, body.token_name, days)


def _issue_login_token(session: Session, user_id: int, name: str, days: int) -> LoginResponse:
    issued = tokens.issue_login_token(session, user_id, name, days)
    if issued is None:  # deleted while its password was checked
        raise APIError(401, "invalid_credentials", "wrong username or password")
    return LoginResponse(
        token=issued.secret,
        expires_at=issued.token.expires_at,
        user=UserOut.model_validate(issued.user),
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
    return users.create_user(session, caller, body)


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(caller: CallerDep, session: SessionDep) -> list[TokenOut]:
    return tokens.list_tokens(session, caller)


@router.post(
    "/tokens", response_model=TokenCreated, status_code=201, responses=errors(400, 403, 413, 422)
)
def create_token(body: TokenCreate, caller: CallerDep, session: SessionDep) -> TokenCreated:
    """Create a token for the caller; the secret is in this response and nowhere else."""
    return tokens.create_token(session, caller, body.name, body.scope, body.expires_in_days)


@router.delete("/tokens/{token_id}", status_code=204, responses=errors(403, 404, 422))
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_INT)], caller: CallerDep, session: SessionDep
) -> None:
    tokens.revoke_token(session, caller, token_id)
