"""A project's members: list them, add or re-role one (owners), remove one (owners, or anyone
leaving). A project never loses its last owner."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lmvp_server.errors import APIError, not_found
from lmvp_server.models import Membership, Project, Role, User
from lmvp_server.schemas import MemberOut
from lmvp_server.services.access import Caller, ProjectScope, open_project


def list_members(session: Session, caller: Caller, project: str) -> list[MemberOut]:
    """The project's members by username (viewers and up)."""
    scope = open_project(session, caller, project, Role.viewer)
    members = session.scalars(
        select(Membership)
        .where(Membership.project_id == scope.project.id)
        .join(Membership.user)
        .order_by(User.username)
    )
    return [member_out(m) for m in members]


def put_member(
    session: Session, caller: Caller, project: str, username: str, role: str
) -> MemberOut:
    """Add `username` to the project with `role`, or change their role (owners only).

    Raises APIError 404 for an unknown user, 409 `last_owner` when the project would be left
    without an owner."""
    scope = _open_for_member_change(session, caller, project, Role.owner)
    row = scope.project
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise not_found(f"user '{username}'")
    membership = session.get(Membership, (row.id, user.id))
    if membership is not None and membership.role == role:
        return member_out(membership)
    if membership is not None and membership.role == Role.owner.name:
        _refuse_removing_last_owner(session, row)
    kind = "member.added" if membership is None else "member.role_changed"
    if membership is None:
        membership = Membership(project_id=row.id, user_id=user.id, role=role)
        membership.user = user
        session.add(membership)
    else:
        membership.role = role
    scope.record(kind, payload={"username": user.username, "role": role})
    session.commit()
    return member_out(membership)


def remove_member(session: Session, caller: Caller, project: str, username: str) -> None:
    """Remove someone from the project (owners; anyone may remove themselves).

    Raises APIError 404 when they are no member, 409 `last_owner` for the last owner."""
    need = Role.viewer if username == caller.user.username else Role.owner
    scope = _open_for_member_change(session, caller, project, need)
    row = scope.project
    user = session.scalar(select(User).where(User.username == username))
    membership = session.get(Membership, (row.id, user.id)) if user is not None else None
    if user is None or membership is None:
        raise not_found(f"member '{username}' of project '{project}'")
    if membership.role == Role.owner.name:
        _refuse_removing_last_owner(session, row)
    session.delete(membership)
    scope.record("member.removed", payload={"username": username})
    session.commit()


def member_out(m: Membership) -> MemberOut:
    """The API's view of a membership."""
    return MemberOut(
        username=m.user.username,
        display_name=m.user.display_name,
        role=m.role,
        created_at=m.created_at,
    )


def _open_for_member_change(
    session: Session, caller: Caller, name: str, need: Role
) -> ProjectScope:
    """Load the project and lock it against concurrent changes of its members until commit.

    Without the lock, two owners demoting each other at the same moment would both see the
    other one still owner, and the project would be left with none.
    """
    scope = open_project(session, caller, name, need)
    # A no-op UPDATE: a row lock on PostgreSQL, the write lock on SQLite.
    session.execute(update(Project).where(Project.id == scope.project.id).values(name=Project.name))
    # The caller's own role may have changed while we waited for the lock.
    open_project(session, caller, name, need)
    return scope


def _refuse_removing_last_owner(session: Session, project: Project) -> None:
    owners = session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.project_id == project.id, Membership.role == Role.owner.name)
    )
    if (owners or 0) <= 1:
        raise APIError(
            409,
            "last_owner",
            f"'{project.name}' would have no owner left: make someone else owner first",
        )
