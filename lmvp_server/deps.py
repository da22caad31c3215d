"""Request dependencies: the database session, the calling user, and project role checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmvp_server.db import utcnow
from lmvp_server.errors import APIError, forbidden, not_found
from lmvp_server.models import Membership, Model, Project, Role, Token, TokenScope, User
from lmvp_server.security import find_token, looks_like_token

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# last_used_at is written at most this often per token, to keep reads free of writes.
_LAST_USED_GRANULARITY = timedelta(minutes=1)


def get_session(request: Request) -> Iterator[Session]:
    """A session per request. Endpoints commit what they change; anything else is rolled back."""
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Caller:
    user: User
    token: Token

    @property
    def can_write(self) -> bool:
        return self.token.scope == TokenScope.write.value


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
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_GRANULARITY:
        token.last_used_at = now
        session.commit()
    return Caller(user=token.user, token=token)


def get_caller(request: Request, session: SessionDep) -> Caller:
    caller = authenticate(session, request.headers.get("authorization"))
    if request.method not in _SAFE_METHODS and not caller.can_write:
        raise forbidden("this token is read-only; create a write token to change anything")
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def role_in(session: Session, caller: Caller, project: Project) -> Role | None:
    """The caller's role in the project; server admins act as owners everywhere."""
    if caller.user.is_admin:
        return Role.owner
    role = session.scalar(
        select(Membership.role).where(
            Membership.project_id == project.id, Membership.user_id == caller.user.id
        )
    )
    return Role[role] if role else None


def load_project(session: Session, caller: Caller, name: str, need: Role) -> tuple[Project, Role]:
    """The project and the caller's role, if the role is at least `need`.

    Raises 404 for a project that does not exist *or* that the caller is not a member of, so
    that project names do not leak; 403 for a member whose role is too low.
    """
    project = session.scalar(select(Project).where(Project.name == name))
    role = role_in(session, caller, project) if project is not None else None
    if project is None or role is None:
        raise APIError(
            404, "not_found", f"project '{name}' not found, or you are not a member of it"
        )
    if role < need:
        raise forbidden(
            f"you are a {role.name} in project '{name}'; this needs the {need.name} role or above"
        )
    return project, role


def load_model(session: Session, project: Project, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.project_id == project.id, Model.name == name))
    if model is None:
        raise not_found(f"model '{project.name}/{name}'")
    return model


def lock_model(session: Session, model: Model) -> None:
    """Hold the model's row (PostgreSQL) or the database (SQLite) until commit, so that changes
    to its versions and aliases happen one after the other; read what you change after this.

    Also bumps the model's revision, which tells cached version listings they are stale.
    """
    session.execute(update(Model).where(Model.id == model.id).values(revision=Model.revision + 1))


@contextmanager
def name_taken_is_conflict(session: Session, message: str) -> Iterator[None]:
    """Turn a unique-name violation into 409 `message`.

    Checking that a name is free and then inserting it races with a request doing the same;
    the database's unique constraint decides, and the loser gets the same 409 as if it had
    come second.
    """
    try:
        yield
    except IntegrityError as exc:
        session.rollback()
        raise APIError(409, "conflict", message) from exc


def require_admin(caller: Caller) -> None:
    if not caller.user.is_admin:
        raise forbidden("only a server admin can do this")
