"""Who may do what in a project: the caller, their role, and the preamble every service call
starts with (load the project, check the role, load the model, record what changed).

`open_project` and `open_model` give a `ProjectScope` / `ModelScope` that carries the session,
the caller, the project (and model) and the caller's role, and records events in the name of
the caller, so a service does not repeat the four steps by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmvp_server.errors import APIError, forbidden, not_found
from lmvp_server.events import record_event
from lmvp_server.models import Event, Membership, Model, Project, Role, Token, TokenScope, User


@dataclass(frozen=True)
class Caller:
    """The authenticated user and the token they came with."""

    user: User
    token: Token

    @property
    def can_write(self) -> bool:
        return self.token.scope == TokenScope.write.value


@dataclass(frozen=True)
class ProjectScope:
    """A project the caller may act in with `role`, inside one session."""

    session: Session
    caller: Caller
    project: Project
    role: Role

    def record(
        self,
        kind: str,
        *,
        model: str | None = None,
        version: int | None = None,
        payload: dict[str, Any] | None = None,
    ) -> Event:
        """Record an event by the caller in this project; visible once the session commits."""
        return record_event(
            self.session,
            project=self.project,
            actor=self.caller.user,
            kind=kind,
            model=model,
            version=version,
            payload=payload,
        )


@dataclass(frozen=True)
class ModelScope(ProjectScope):
    """A model of a project the caller may act in with `role`."""

    model: Model

    def record_model_event(
        self, kind: str, *, version: int | None = None, payload: dict[str, Any] | None = None
    ) -> Event:
        """Record an event about this model by the caller."""
        return self.record(kind, model=self.model.name, version=version, payload=payload)


def open_project(session: Session, caller: Caller, name: str, need: Role) -> ProjectScope:
    """The project `name` with the caller's role, if that role is at least `need`.

    Raises APIError 404 (unknown project, or the caller is no member) or 403 (role too low).
    """
    project, role = load_project(session, caller, name, need)
    return ProjectScope(session, caller, project, role)


def open_model(
    session: Session, caller: Caller, project: str, model: str, need: Role
) -> ModelScope:
    """The model `project/model`, if the caller's role in the project is at least `need`.

    Raises APIError 404 (unknown project or model, or no member) or 403 (role too low).
    """
    row, role = load_project(session, caller, project, need)
    return ModelScope(session, caller, row, role, load_model(session, row, model))


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
        _raise_if_in_trash(session, caller, name)
        raise APIError(
            404, "not_found", f"project '{name}' not found, or you are not a member of it"
        )
    if role < need:
        raise forbidden(
            f"you are a {role.name} in project '{name}'; this needs the {need.name} role or above"
        )
    return project, role


def load_model(session: Session, project: Project, name: str) -> Model:
    """The model `name` of the project; raises APIError 404 when it has none of that name."""
    model = session.scalar(select(Model).where(Model.project_id == project.id, Model.name == name))
    if model is None:
        ref = f"{project.name}/{name}"
        trashed = session.scalar(
            select(Model)
            .where(Model.project_id == project.id, Model.deleted_name == name)
            .order_by(Model.deleted_at.desc())
            .limit(1)
        )
        if trashed is not None:
            raise in_trash_error(f"model '{ref}'", ref, trashed.deleted_by)
        raise not_found(f"model '{ref}'")
    return model


def _raise_if_in_trash(session: Session, caller: Caller, name: str) -> None:
    """404 `in_trash` when a project the caller is a member of was named `name` and is in the
    trash (its row's name is then `<name>~<id>`, see `services.trash`)."""
    for project in session.scalars(
        select(Project).where(Project.deleted_name == name).order_by(Project.deleted_at.desc())
    ):
        if role_in(session, caller, project) is not None:
            raise in_trash_error(f"project '{name}'", name, project.deleted_by)


def in_trash_error(
    what: str, ref: str, deleted_by: str | None, reason: str | None = None
) -> APIError:
    """404 `in_trash` for a project, model or version in the trash (see `services.trash`):
    who put it there, why, and how to get it back."""
    who = f" by {deleted_by}" if deleted_by else ""
    why = f", {reason}" if reason else ""
    return APIError(
        404,
        "in_trash",
        f"{what} is in the trash (deleted{who}{why}): restore it with "
        f"`lmvp trash restore {ref}` before it is purged",
        details={"ref": ref},
    )


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
    """Raise APIError 403 unless the caller is a server admin."""
    if not caller.user.is_admin:
        raise forbidden("only a server admin can do this")
