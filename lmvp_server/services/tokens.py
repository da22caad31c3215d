"""Tokens: the ones a login or the console's session issues, and the caller's own (list, create,
revoke). A token's secret is shown once, when it is made; only its hash is stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.db import utcnow
from lmvp_server.errors import not_found
from lmvp_server.models import Token, TokenScope, User
from lmvp_server.schemas import TokenCreated, TokenOut
from lmvp_server.security import find_token, issue_token, looks_like_token
from lmvp_server.services.access import Caller


@dataclass(frozen=True)
class IssuedToken:
    """A token just made for `user`, with its secret (never stored)."""

    user: User
    token: Token
    secret: str


def issue_login_token(session: Session, user_id: int, name: str, days: int) -> IssuedToken | None:
    """A write token named `name` for the user whose password was just checked, valid for
    `days`; None when the account was deleted while its password was checked."""
    user = session.get(User, user_id)
    if user is None:
        return None
    token, secret = issue_token(session, user, name=name, expires_in=timedelta(days=days))
    session.commit()
    return IssuedToken(user, token, secret)


def revoke_by_secret(session: Session, secret: str) -> None:
    """Revoke the token whose secret this is, if there is one still valid (a console logout)."""
    token = find_token(session, secret) if looks_like_token(secret) else None
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()
        session.commit()


def list_tokens(session: Session, caller: Caller) -> list[TokenOut]:
    """The caller's tokens, oldest first (revoked and expired ones included)."""
    rows = session.scalars(select(Token).where(Token.user_id == caller.user.id).order_by(Token.id))
    return [TokenOut.model_validate(t) for t in rows]


def create_token(
    session: Session, caller: Caller, name: str, scope: str, expires_in_days: int | None
) -> TokenCreated:
    """A new token of the caller's; its secret is in the answer and nowhere else."""
    expires = timedelta(days=expires_in_days) if expires_in_days else None
    token, secret = issue_token(
        session, caller.user, name=name, scope=TokenScope(scope), expires_in=expires
    )
    session.commit()
    return TokenCreated(**TokenOut.model_validate(token).model_dump(), token=secret)


def revoke_token(session: Session, caller: Caller, token_id: int) -> None:
    """Revoke one of the caller's tokens (again is fine); APIError 404 for anyone else's."""
    token = session.get(Token, token_id)
    if token is None or token.user_id != caller.user.id:
        raise not_found(f"token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.commit()
