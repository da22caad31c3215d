"""Projects and their members."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lmvp_server.deps import Caller, CallerDep, SessionDep, load_project, name_taken_is_conflict
from lmvp_server.errors import APIError, not_found
from lmvp_server.events import record_event
from lmvp_server.models import Membership, Project, Role, User
from lmvp_server.openapi import errors
from lmvp_server.schemas import (
    MemberOut,
    MemberPut,
    ProjectCreate,
    ProjectName,
    ProjectOut,
    ProjectUpdate,
    Username,
)

router = APIRouter(tags=["projects"])
_LAST_OWNER = "The project would be left without an owner: make someone else owner first."


def _project_out(project: Project, role: Role) -> ProjectOut:
    return ProjectOut(
        name=project.name,
        description=project.description,
        created_at=project.created_at,
        role=role.name,
    )


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(caller: CallerDep, session: SessionDep) -> list[ProjectOut]:
    """The projects the caller is a member of (all of them, for admins), by name."""
    if caller.user.is_admin:
        projects = session.scalars(select(Project).order_by(Project.name))
        return [_project_out(p, Role.owner) for p in projects]
    rows = session.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == caller.user.id)
        .order_by(Project.name)
    )
    return [_project_out(p, Role[role]) for p, role in rows]


@router.post(
    "/projects",
    response_model=ProjectOut,
    status_code=201,
    responses=errors(400, 403, 409, 413, 422, notes={409: "A project of that name exists."}),
)
def create_project(body: ProjectCreate, caller: CallerDep, session: SessionDep) -> ProjectOut:
    """Create a project; the caller becomes its owner."""
    taken = f"a project named '{body.name}' already exists"
    if session.scalar(select(Project.id).where(Project.name == body.name)) is not None:
        raise APIError(409, "conflict", taken)
    project = Project(name=body.name, description=body.description)
    with name_taken_is_conflict(session, taken):
        session.add(project)
        session.flush()
        owner = Membership(project_id=project.id, user_id=caller.user.id, role=Role.owner.name)
        session.add(owner)
        record_event(session, project=project, actor=caller.user, kind="project.created")
        session.commit()
    return _project_out(project, Role.owner)


@router.get("/projects/{project}", response_model=ProjectOut, responses=errors(404, 422))
def get_project(project: ProjectName, caller: CallerDep, session: SessionDep) -> ProjectOut:
    row, role = load_project(session, caller, project, Role.viewer)
    return _project_out(row, role)


@router.patch(
    "/projects/{project}", response_model=ProjectOut, responses=errors(400, 403, 404, 413, 422)
)
def update_project(
    project: ProjectName, body: ProjectUpdate, caller: CallerDep, session: SessionDep
) -> ProjectOut:
    row, role = load_project(session, caller, project, Role.owner)
    row.description = body.description
    record_event(session, project=row, actor=caller.user, kind="project.updated")
    session.commit()
    return _project_out(row, role)


@router.delete("/projects/{project}", status_code=204, responses=errors(403, 404, 422))
def delete_project(project: ProjectName, caller: CallerDep, session: SessionDep) -> None:
    """Delete a project with its models and versions. Its events stay in the audit log."""
    row, _ = load_project(session, caller, project, Role.owner)
    record_event(session, project=row, actor=caller.user, kind="project.deleted")
    session.flush()
    session.delete(row)
    session.commit()


@router.get(
    "/projects/{project}/members", response_model=list[MemberOut], responses=errors(404, 422)
)
def list_members(project: ProjectName, caller: CallerDep, session: SessionDep) -> list[MemberOut]:
    row, _ = load_project(session, caller, project, Role.viewer)
    members = session.scalars(
        select(Membership)
        .where(Membership.project_id == row.id)
        .join(Membership.user)
        .order_by(User.username)
    )
    return [_member_out(m) for m in members]


@router.put(
    "/projects/{project}/members/{username}",
    response_model=MemberOut,
    responses=errors(400, 403, 404, 409, 413, 422, notes={409: _LAST_OWNER}),
)
def put_member(
    project: ProjectName,
    username: Username,
    body: MemberPut,
    caller: CallerDep,
    session: SessionDep,
) -> MemberOut:
    """Add a user to the project or change their role (owners only)."""
    row = _load_project_for_member_change(session, caller, project, Role.owner)
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise not_found(f"user '{username}'")
    membership = session.get(Membership, (row.id, user.id))
    if membership is not None and membership.role == body.role:
        return _member_out(membership)
    if membership is not None and membership.role == Role.owner.name:
        _refuse_removing_last_owner(session, row)
    kind = "member.added" if membership is None else "member.role_changed"
    if membership is None:
        membership = Membership(project_id=row.id, user_id=user.id, role=body.role)
        membership.user = user
        session.add(membership)
    else:
        membership.role = body.role
    record_event(
        session,
        project=row,
        actor=caller.user,
        kind=kind,
        payload={"username": user.username, "role": body.role},
    )
    session.commit()
    return _member_out(membership)


@router.delete(
    "/projects/{project}/members/{username}",
    status_code=204,
    responses=errors(403, 404, 409, 422, notes={409: _LAST_OWNER}),
)
def remove_member(
    project: ProjectName, username: Username, caller: CallerDep, session: SessionDep
) -> None:
    """Remove someone from the project (owners; anyone may remove themselves)."""
    need = Role.viewer if username == caller.user.username else Role.owner
    row = _load_project_for_member_change(session, caller, project, need)
    user = session.scalar(select(User).where(User.username == username))
    membership = session.get(Membership, (row.id, user.id)) if user is not None else None
    if user is None or membership is None:
        raise not_found(f"member '{username}' of project '{project}'")
    if membership.role == Role.owner.name:
        _refuse_removing_last_owner(session, row)
    session.delete(membership)
    record_event(
        session,
        project=row,
        actor=caller.user,
        kind="member.removed",
        payload={"username": username},
    )
    session.commit()


def _member_out(m: Membership) -> MemberOut:
    return MemberOut(
        username=m.user.username,
        display_name=m.user.display_name,
        role=m.role,
        created_at=m.created_at,
    )


def _load_project_for_member_change(
    session: Session, caller: Caller, name: str, need: Role
) -> Project:
    """Load the project and lock it against concurrent changes of its members until commit.

    Without the lock, two owners demoting each other at the same moment would both see the
    other one still owner, and the project would be left with none.
    """
    project, _ = load_project(session, caller, name, need)
    # A no-op UPDATE: a row lock on PostgreSQL, the write lock on SQLite.
    session.execute(update(Project).where(Project.id == project.id).values(name=Project.name))
    # The caller's own role may have changed while we waited for the lock.
    load_project(session, caller, name, need)
    return project


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


__all__ = ["Caller", "router"]
