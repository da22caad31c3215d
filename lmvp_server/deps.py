"""Request dependencies: the server context, the database session, the calling user, and
project role checks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from lmvp_server.context import CtxDep, get_context
from lmvp_server.db import close_session, utcnow
from lmvp_server.errors import APIError, forbidden
from lmvp_server.security import find_token, looks_like_token
from lmvp_server.services.access import (
    Caller,
    load_model,
    load_project,
    lock_model,
    name_taken_is_conflict,
    require_admin,
    role_in,
)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# last_used_at is written at most this often per token, to keep reads free of writes.
LAST_USED_GRANULARITY = timedelta(minutes=1)


def get_session(ctx: CtxDep) -> Iterator[Session]:
    """A session per request. Endpoints commit what they change; anything else is rolled back."""
    session = ctx.sessions()
    try:
        yield session
    finally:
        close_session(session)


SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(code: str, message: str) -> APIError:
    return APIError(401, code, message, headers={"WWW-Authenticate": 'Bearer realm="lmvp"'})


def authenticate(session: Session, authorization: str | None) -> Caller:
    """Resolve an `Authorization: Bearer` header to the caller, or raise 401 saying why."""
    if not authorization:
        raise _unauthorized(
            "not_authenticated", "no token given: log in with `lmvp login` or send a Bearer token"
        )
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not looks_like_token(secret):
        raise _unauthorized(
            "invalid_token", "malformed Authorization header: expected 'Bearer lmvp_...'"
        )
    token = find_token(session, secret)
    if token is None:
        raise _unauthorized("invalid_token", "unknown token: log in again with `lmvp login`")
    now = utcnow()
    if token.revoked_at is not None:
        raise _unauthorized("token_revoked", "this token was revoked: log in again")
    if token.expires_at is not None and token.expires_at <= now:
        raise _unauthorized("token_expired", "this token has expired: log in again")
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
        token.last_used_at = now
        session.commit()
    return Caller(user=token.user, token=token)


def get_caller(request: Request, session: SessionDep) -> Caller:
    return get_caller_of(session, request.method, request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_caller_of(session: Session, method: str, authorization: str | None) -> Caller:
    """The caller of a request by `method` with this Authorization header, or 401/403."""
    caller = authenticate(session, authorization)
    if method not in _SAFE_METHODS and not caller.can_write:
        raise forbidden("this token is read-only; create a write token to change anything")
    return caller


__all__ = [
    "LAST_USED_GRANULARITY",
    "Caller",
    "CallerDep",
    "CtxDep",
    "SessionDep",
    "authenticate",
    "get_caller",
    "get_caller_of",
    "get_context",
    "get_session",
    "load_model",
    "load_project",
    "lock_model",
    "name_taken_is_conflict",
    "require_admin",
    "role_in",
]
