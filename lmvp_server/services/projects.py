"""Projects: list the caller's, create one (the caller becomes owner), read, describe, delete."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmvp_server.errors import APIError
from lmvp_server.models import Membership, Project, Role
from lmvp_server.schemas import ProjectOut
from lmvp_server.services import trash
from lmvp_server.services.access import Caller, ProjectScope, name_taken_is_conflict, open_project


def list_projects(session: Session, caller: Caller) -> list[ProjectOut]:
    """The projects the caller is a member of (all of them, for admins), by name."""
    if caller.user.is_admin:
        projects = session.scalars(
            select(Project).where(Project.deleted_at.is_(None)).order_by(Project.name)
        )
        return [project_out(p, Role.owner) for p in projects]
    rows = session.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == caller.user.id, Project.deleted_at.is_(None))
        .order_by(Project.name)
    )
    return [project_out(p, Role[role]) for p, role in rows]


def create_project(session: Session, caller: Caller, name: str, description: str) -> ProjectOut:
    """Create a project owned by the caller; raises APIError 409 when the name is taken."""
    taken = f"a project named '{name}' already exists"
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise APIError(409, "conflict", taken)
    project = Project(name=name, description=description)
    with name_taken_is_conflict(session, taken):
        session.add(project)
        session.flush()
        owner = Membership(project_id=project.id, user_id=caller.user.id, role=Role.owner.name)
        session.add(owner)
        ProjectScope(session, caller, project, Role.owner).record("project.created")
        session.commit()
    return project_out(project, Role.owner)


def get_project(session: Session, caller: Caller, name: str) -> ProjectOut:
    """The project as the caller sees it (with their role); 404 for non-members."""
    scope = open_project(session, caller, name, Role.viewer)
    return project_out(scope.project, scope.role)


def update_project(session: Session, caller: Caller, name: str, description: str) -> ProjectOut:
    """Change the project's description (owners)."""
    scope = open_project(session, caller, name, Role.owner)
    scope.project.description = description
    scope.record("project.updated")
    session.commit()
    return project_out(scope.project, scope.role)


def delete_project(session: Session, caller: Caller, name: str) -> None:
    """Move a project with its models and versions to the trash (owners; see
    `services.trash`). Its events stay."""
    scope = open_project(session, caller, name, Role.owner)
    trash.delete_project(session, scope)


def project_out(project: Project, role: Role) -> ProjectOut:
    """The API's view of a project, with the caller's role in it."""
    return ProjectOut(
        name=project.name,
        description=project.description,
        created_at=project.created_at,
        role=role.name,
    )
