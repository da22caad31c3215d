"""The forms that change aliases (maintainers) and members (owners).

Each form post is CSRF-checked first (`session.checked_form`), then handed to the very service
function that the JSON API calls (`lmvp_server.services`), so roles, validation, locking and the
audit event are the API's own. Success redirects back to the page (post/redirect/get). A
refusal renders the page that had the form again, with the message next to the form and what
was typed kept (`forms.FormProblem`); a refusal of the role (403) or of a project the caller
cannot see (404) is an error page, as for the API.

Moving an alias that points elsewhere and removing one first show a confirmation page that says
what changes; its "yes" button posts the same form with `confirmed=yes`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from lmvp_server.deps import SessionDep
from lmvp_server.errors import APIError
from lmvp_server.models import Role
from lmvp_server.schemas import ModelName, ProjectName, Username
from lmvp_server.services import aliases, console, members
from lmvp_server.services.access import Caller, open_model, open_project
from lmvp_server.web.forms import (
    FormProblem,
    confirm_page,
    form_text,
    form_values,
    is_confirmed,
)
from lmvp_server.web.pages import show_version
from lmvp_server.web.rendering import PageError, PageRoute, render
from lmvp_server.web.session import CheckedFormDep, WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)

ROLES = [role.name for role in Role]
_USERNAME: TypeAdapter[str] = TypeAdapter(Username)
# Refusals shown on the form's own page; others (403 role, 404 project) are error pages.
FORM_STATUSES = frozenset({404, 409, 413, 422})


@router.post("/projects/{project}/models/{model}/aliases")
def set_alias(
    request: Request,
    project: ProjectName,
    model: ModelName,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Point alias `alias` at version `version`, creating it, or moving it once confirmed."""
    alias = form_text(form, "alias")
    number = _int_field(form.get("version"), "version")
    base = f"/projects/{project}/models/{model}"
    try:
        scope = open_model(session, caller, project, model, Role.maintainer)
        aliases.check_alias_name(alias)
        current = dict(console.alias_numbers(session, scope.model)).get(alias)
        if current is not None and current != number and not is_confirmed(form):
            return confirm_page(
                request,
                title=f"Move the alias {alias} to v{number}?",
                lines=[
                    f"{alias} points at v{current} of {project}/{model} now.",
                    f"It will point at v{number}: whoever fetches {project}/{model}@{alias} "
                    f"gets v{number} from then on, and v{current} loses the alias.",
                ],
                action=f"{base}/aliases",
                fields={"alias": alias, "version": str(number)},
                button=f"Move {alias} to v{number}",
                cancel=f"{base}/versions/{number}",
                context={"project": scope.project, "role": scope.role.name},
                danger=False,
            )
        aliases.put_alias(session, caller, project, model, alias, number)
    except APIError as exc:
        if exc.status not in FORM_STATUSES:
            raise
        session.rollback()
        problem = FormProblem("set-alias", exc.message, {"alias": alias}, field="alias")
        return show_version(
            request,
            session,
            caller,
            project,
            model,
            str(number),
            problem=problem,
            status=exc.status,
        )
    return _back_to_version(project, model, number)


@router.post("/projects/{project}/models/{model}/aliases/{alias}/delete")
def remove_alias(
    request: Request,
    project: ProjectName,
    model: ModelName,
    alias: str,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Remove an alias once confirmed; back to the version it pointed at."""
    number = _int_field(form.get("version"), "version")
    base = f"/projects/{project}/models/{model}"
    if not is_confirmed(form):
        scope = open_model(session, caller, project, model, Role.maintainer)
        return confirm_page(
            request,
            title=f"Remove the alias {alias}?",
            lines=[
                f"{alias} points at v{number} of {project}/{model}; v{number} itself stays.",
                f"Whoever fetches {project}/{model}@{alias} will get 'not found' until the "
                "alias is set again.",
            ],
            action=f"{base}/aliases/{alias}/delete",
            fields={"version": str(number)},
            button=f"Remove {alias}",
            cancel=f"{base}/versions/{number}",
            context={"project": scope.project, "role": scope.role.name},
        )
    aliases.delete_alias(session, caller, project, model, alias)
    return _back_to_version(project, model, number)


@router.get("/projects/{project}/members")
def members_page(
    request: Request, project: ProjectName, caller: WebCallerDep, session: SessionDep
) -> Response:
    """The project's members and roles; owners also get the forms to change them."""
    return show_members(request, session, caller, project)


def show_members(
    request: Request,
    session: Session,
    caller: Caller,
    project: str,
    *,
    problem: FormProblem | None = None,
    status: int = 200,
) -> Response:
    """The members page, with `problem` beside the form that was refused."""
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
            "problem": problem,
        },
        status=status,
    )


@router.post("/projects/{project}/members")
def put_member(
    request: Request,
    project: ProjectName,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Add someone to the project, or change their role (owners)."""
    username = form_text(form, "username")
    role = form_text(form, "role")
    # The add form and the per-member role forms post here; a refusal shows beside the one sent.
    which = "add-member" if form_text(form, "form") != "change-role" else "change-role"
    try:
        if role not in ROLES:
            raise PageError(422, f"{role!r} is not a role: choose one of {', '.join(ROLES)}")
        _check_username(username)
        members.put_member(session, caller, project, username, role)
    except (APIError, PageError) as exc:
        if exc.status not in FORM_STATUSES:
            raise
        session.rollback()
        message = exc.message
        if exc.status == 404 and isinstance(exc, APIError) and message.startswith("user '"):
            message = (
                f"No user named {username}: check the spelling, or ask a server admin to "
                "create the account first"
            )
        values = form_values(form, "username", "role")
        problem = FormProblem(which, message, values, field="username")
        return show_members(request, session, caller, project, problem=problem, status=exc.status)
    return RedirectResponse(f"/projects/{project}/members", status_code=303)


@router.post("/projects/{project}/members/{username}/delete")
def remove_member(
    request: Request,
    project: ProjectName,
    username: Username,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Remove someone from the project (owners; anyone may remove themselves)."""
    try:
        members.remove_member(session, caller, project, username)
    except APIError as exc:
        if exc.status != 409:
            raise
        session.rollback()
        problem = FormProblem("members", exc.message)
        return show_members(request, session, caller, project, problem=problem, status=409)
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
