"""Projects and their members: the HTTP face of `services.projects` and `services.members`."""

from __future__ import annotations

from fastapi import APIRouter

from lmvp_server.deps import CallerDep, SessionDep
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
from lmvp_server.services import members, projects, usage

router = APIRouter(tags=["projects"])
_LAST_OWNER = "The project would be left without an owner: make someone else owner first."


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(caller: CallerDep, session: SessionDep) -> list[ProjectOut]:
    """The projects the caller is a member of (all of them, for admins), by name, each with
    the bytes its blobs take (`size`)."""
    return usage.with_sizes(session, projects.list_projects(session, caller))


@router.post(
    "/projects",
    response_model=ProjectOut,
    status_code=201,
    responses=errors(400, 403, 409, 413, 422, notes={409: "A project of that name exists."}),
)
def create_project(body: ProjectCreate, caller: CallerDep, session: SessionDep) -> ProjectOut:
    """Create a project; the caller becomes its owner."""
    return projects.create_project(session, caller, body.name, body.description)


@router.get("/projects/{project}", response_model=ProjectOut, responses=errors(404, 422))
def get_project(project: ProjectName, caller: CallerDep, session: SessionDep) -> ProjectOut:
    return projects.get_project(session, caller, project)


@router.patch(
    "/projects/{project}", response_model=ProjectOut, responses=errors(400, 403, 404, 413, 422)
)
def update_project(
    project: ProjectName, body: ProjectUpdate, caller: CallerDep, session: SessionDep
) -> ProjectOut:
    return projects.update_project(session, caller, project, body.description)


@router.delete("/projects/{project}", status_code=204, responses=errors(403, 404, 422))
def delete_project(project: ProjectName, caller: CallerDep, session: SessionDep) -> None:
    """Delete a project with its models and versions. Its events stay in the audit log."""
    projects.delete_project(session, caller, project)


@router.get(
    "/projects/{project}/members", response_model=list[MemberOut], responses=errors(404, 422)
)
def list_members(project: ProjectName, caller: CallerDep, session: SessionDep) -> list[MemberOut]:
    return members.list_members(session, caller, project)


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
    return members.put_member(session, caller, project, username, body.role)


@router.delete(
    "/projects/{project}/members/{username}",
    status_code=204,
    responses=errors(403, 404, 409, 422, notes={409: _LAST_OWNER}),
)
def remove_member(
    project: ProjectName, username: Username, caller: CallerDep, session: SessionDep
) -> None:
    """Remove someone from the project (owners; anyone may remove themselves)."""
    members.remove_member(session, caller, project, username)


__all__ = ["router"]
