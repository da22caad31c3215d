"""Accounts: creating users (server admins; `lmvp-server user create` does the same)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.errors import APIError
from lmvp_server.models import User
from lmvp_server.schemas import UserCreate, UserOut
from lmvp_server.security import hash_password
from lmvp_server.services.access import Caller, name_taken_is_conflict, require_admin


def create_user(session: Session, caller: Caller, body: UserCreate) -> UserOut:
    """Create an account (server admins only); APIError 403 for others, 409 for a taken name."""
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
