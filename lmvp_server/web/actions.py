"""The forms that change something: setting, moving and removing aliases (maintainers), and
adding, re-roling and removing members (owners).

Each form post is CSRF-checked first (`session.checked_form`), then handed to the very service
function that the JSON API calls (`lmvp_server.services`), so roles, validation, locking and the
audit event are the API's own. Success redirects back to the page (post/redirect/get); a
refusal shows the service's message on an error page with its status.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import TypeAdapter, ValidationError

from lmvp_server.deps import SessionDep
from lmvp_server.models import Role
from lmvp_server.schemas import ModelName, ProjectName, Username
from lmvp_server.services import aliases, members
from lmvp_server.services.access import open_project
from lmvp_server.web.rendering import PageError, PageRoute, render
from lmvp_server.web.session import CheckedFormDep, WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)

ROLES = [role.name for role in Role]
_USERNAME: TypeAdapter[str] = TypeAdapter(Username)


@router.post("/projects/{project}/models/{model}/aliases")
def set_alias(
    project: ProjectName,
    model: ModelName,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Point alias `alias` at version `version`, creating or moving it."""
    alias = str(form.get("alias", "")).strip()
    number = _int_field(form.get("version"), "version")
    aliases.put_alias(session, caller, project, model, alias, number)
    return _back_to_version(project, model, number)


@router.post("/projects/{project}/models/{model}/aliases/{alias}/delete")
def remove_alias(
    project: ProjectName,
    model: ModelName,
    alias: str,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Remove an alias; back to the version it pointed at."""
    number = _int_field(form.get("version"), "version")
    aliases.delete_alias(session, caller, project, model, alias)
    return _back_to_version(project, model, number)


@router.get("/projects/{project}/members")
def members_page(
    request: Request, project: ProjectName, caller: WebCallerDep, session: SessionDep
) -> Response:
    """The project's members and roles; owners also get the forms to change them."""
    scope = open_project(session, caller, project, Role.viewer)
    return render(
        request,
        "members.html",
        {
            "project": scope.project,
            "role": scope.role.name,
            "members": members.list_members(session, caller, project),
            "roles": ROLES,
            "can_manage": scope.role >= Role.owner,
        },
    )


@router.post("/projects/{project}/members")
def put_member(
    project: ProjectName, form: CheckedFormDep, caller: WebCallerDep, session: SessionDep
) -> Response:
    """Add someone to the project, or change their role (owners)."""
    username = str(form.get("username", "")).strip()
    role = str(form.get("role", ""))
    if role not in ROLES:
        raise PageError(422, f"{role!r} is not a role: choose one of {', '.join(ROLES)}")
    _check_username(username)
    members.put_member(session, caller, project, username, role)
    return RedirectResponse(f"/projects/{project}/members", status_code=303)


@router.post("/projects/{project}/members/{username}/delete")
def remove_member(
    project: ProjectName,
    username: Username,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Remove someone from the project (owners; anyone may remove themselves)."""
    members.remove_member(session, caller, project, username)
    if username == caller.user.username:
        return RedirectResponse("/", status_code=303)
    return RedirectResponse(f"/projects/{project}/members", status_code=303)


def _back_to_version(project: str, model: str, number: int) -> Response:
    return RedirectResponse(
        f"/projects/{project}/models/{model}/versions/{number}", status_code=303
    )


def _int_field(value: object, name: str) -> int:
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 10:
        return int(value)
    raise PageError(422, f"the form's {name} must be a version number")


def _check_username(username: str) -> None:
    try:
        _USERNAME.validate_python(username)
    except ValidationError:
        raise PageError(
            422,
            f"{username!r} is not a username: use letters, digits, '.', '_' or '-'",
        ) from None
