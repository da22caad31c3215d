"""Password hashing (argon2) and API tokens (random, stored only as a sha256 hash)."""

from __future__ import annotations

import functools
import hashlib
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.db import utcnow
from lmvp_server.models import Token, TokenScope, User

TOKEN_PREFIX = "lmvp_"  # noqa: S105 - the public marker every token starts with
_PREFIX_SHOWN = 12
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(user: User | None, password: str) -> bool:
    """True when `password` is the user's; takes as long for unknown users as for known ones."""
    stored = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    try:
        ok = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and user is not None and bool(user.password_hash)


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the user does not exist, so that timing does not reveal
    usernames. Made on first use: at import it would slow every `lmvp-server` command."""
    return _hasher.hash("lmvp-no-such-user")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX) and 20 <= len(token) <= 100 and token.isascii()


def issue_token(
    session: Session,
    user: User,
    *,
    name: str = "",
    scope: TokenScope = TokenScope.write,
    expires_in: timedelta | None = None,
) -> tuple[Token, str]:
    """Create a token for `user`; returns the row and the secret, which is never stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at: datetime | None = utcnow() + expires_in if expires_in else None
    token = Token(
        user_id=user.id,
        name=name,
        prefix=secret[:_PREFIX_SHOWN],
        token_hash=hash_token(secret),
        scope=scope.value,
        expires_at=expires_at,
    )
    token.user = user
    session.add(token)
    session.flush()
    return token, secret


def find_token(session: Session, secret: str) -> Token | None:
    return session.scalar(select(Token).where(Token.token_hash == hash_token(secret)))
