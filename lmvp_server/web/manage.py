"""The forms that make and unmake things: creating a project (anyone signed in) and a model
(contributors), deleting a version or a model (maintainers, after a page that says what goes),
and the caller's own API tokens (create, shown once with scope and expiry; revoke).

As in `actions`, every form is CSRF-checked, goes through the service function the JSON API
calls, and a refused one is shown on its own page with what was typed kept.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from lmvp_server.deps import CtxDep, SessionDep
from lmvp_server.errors import APIError
from lmvp_server.models import Role
from lmvp_server.schemas import ModelName, ProjectName, TokenCreated
from lmvp_server.services import console, models, projects, tokens, versions
from lmvp_server.services.access import Caller, open_model
from lmvp_server.services.versions import resolve_ref
from lmvp_server.web.forms import FormProblem, confirm_page, form_text, form_values
from lmvp_server.web.pages import show_project, show_projects
from lmvp_server.web.rendering import PageError, PageRoute, format_size, render
from lmvp_server.web.session import SESSION_TOKEN_NAME, CheckedFormDep, WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)

_PROJECT_NAME: TypeAdapter[str] = TypeAdapter(ProjectName)
_MODEL_NAME: TypeAdapter[str] = TypeAdapter(ModelName)
FORM_STATUSES = frozenset({404, 409, 413, 422})
# The expiry choices of the token form, in days ("" is never).
TOKEN_EXPIRIES = [
    ("30", "30 days"),
    ("90", "90 days"),
    ("365", "1 year"),
    ("7", "7 days"),
    ("", "never"),
]
MAX_DESCRIPTION = 10_000


@router.post("/projects")
def create_project(
    request: Request, form: CheckedFormDep, caller: WebCallerDep, session: SessionDep
) -> Response:
    """Create a project owned by the caller; on to its page."""
    name = form_text(form, "name")
    description = form_text(form, "description")
    try:
        _check_name(_PROJECT_NAME, name, "a project name", 64)
        _check_description(description)
        projects.create_project(session, caller, name, description)
    except (APIError, PageError) as exc:
        if exc.status not in FORM_STATUSES:
            raise
        session.rollback()
        problem = FormProblem(
            "create-project", exc.message, form_values(form, "name", "description"), "name"
        )
        return show_projects(request, session, caller, problem=problem, status=exc.status)
    return RedirectResponse(f"/projects/{name}", status_code=303)


@router.post("/projects/{project}/models")
def create_model(
    request: Request,
    project: ProjectName,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Create a model in the project (contributors); on to its page."""
    name = form_text(form, "name")
    description = form_text(form, "description")
    try:
        _check_name(_MODEL_NAME, name, "a model name", 128)
        _check_description(description)
        models.create_model(session, caller, project, name, description)
    except (APIError, PageError) as exc:
        if exc.status not in FORM_STATUSES:
            raise
        session.rollback()
        problem = FormProblem(
            "create-model", exc.message, form_values(form, "name", "description"), "name"
        )
        return show_project(request, session, caller, project, problem=problem, status=exc.status)
    return RedirectResponse(f"/projects/{project}/models/{name}", status_code=303)


@router.get("/projects/{project}/models/{model}/versions/{number}/delete")
def confirm_version_deletion(
    request: Request,
    project: ProjectName,
    model: ModelName,
    number: int,
    ctx: CtxDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """What deleting the version takes with it, and the button that does it (maintainers)."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    v = resolve_ref(session, scope.project, scope.model, str(number))
    gone = console.version_deletion(session, scope.model, v)
    base = f"/projects/{project}/models/{model}"
    files = f"{gone.file_count} file{'' if gone.file_count == 1 else 's'}"
    lines = [
        f"v{gone.number} of {project}/{model} ({files}, {format_size(gone.size)}) "
        f"will be deleted" + (f": “{gone.message}”." if gone.message else ".")
    ]
    if gone.aliases:
        names = ", ".join(gone.aliases)
        lines.append(
            f"The alias{'es' if len(gone.aliases) > 1 else ''} {names} pointing at it "
            "will be removed."
        )
    if gone.children:
        lines.append(
            "Versions made from it (" + ", ".join(f"v{n}" for n in gone.children) + ") stay."
        )
    lines.append(_in_the_trash(ctx.settings.trash_days, project))
    lines.append(f"The number {gone.number} is never given to another version.")
    return confirm_page(
        request,
        title=f"Delete v{gone.number} of {model}?",
        lines=lines,
        action=f"{base}/versions/{gone.number}/delete",
        fields={},
        button=f"Delete v{gone.number}",
        cancel=f"{base}/versions/{gone.number}",
        context={"project": scope.project, "role": scope.role.name},
    )


@router.post("/projects/{project}/models/{model}/versions/{number}/delete")
def delete_version(
    project: ProjectName,
    model: ModelName,
    number: int,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Delete the version (maintainers); on to the model's page."""
    versions.delete_version(session, caller, project, model, str(number))
    return RedirectResponse(f"/projects/{project}/models/{model}", status_code=303)


@router.get("/projects/{project}/models/{model}/delete")
def confirm_model_deletion(
    request: Request,
    project: ProjectName,
    model: ModelName,
    ctx: CtxDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """What deleting the model takes with it, and the button that does it (maintainers)."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    gone = console.model_deletion(session, scope.model)
    lines = [
        f"The model {project}/{model} will be deleted with its {gone.versions} "
        f"version{'' if gone.versions == 1 else 's'} ({format_size(gone.size)}) "
        f"and {gone.runs} run{'' if gone.runs == 1 else 's'}."
    ]
    if gone.aliases:
        lines.append("Its aliases go too: " + ", ".join(gone.aliases) + ".")
    lines.append(_in_the_trash(ctx.settings.trash_days, project))
    frees = console.model_storage(session, caller, project, model).exclusive_bytes
    lines.append(
        f"Once it leaves the trash, the garbage collector frees {format_size(frees)} "
        f"(its files that no other model of {project} shares)."
    )
    return confirm_page(
        request,
        title=f"Delete the model {model}?",
        lines=lines,
        action=f"/projects/{project}/models/{model}/delete",
        fields={},
        button=f"Delete {model}",
        cancel=f"/projects/{project}/models/{model}",
        context={"project": scope.project, "role": scope.role.name},
    )


@router.post("/projects/{project}/models/{model}/delete")
def delete_model(
    project: ProjectName,
    model: ModelName,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Delete the model (maintainers); on to the project's page."""
    models.delete_model(session, caller, project, model)
    return RedirectResponse(f"/projects/{project}", status_code=303)


@router.get("/tokens")
def tokens_page(request: Request, caller: WebCallerDep, session: SessionDep) -> Response:
    """The caller's API tokens, and the form that makes one."""
    return show_tokens(request, session, caller)


def show_tokens(
    request: Request,
    session: Session,
    caller: Caller,
    *,
    created: TokenCreated | None = None,
    problem: FormProblem | None = None,
    status: int = 200,
) -> Response:
    """The tokens page; `created` is a token just made, whose secret is shown this once."""
    rows = tokens.list_tokens(session, caller)
    rows.reverse()
    return render(
        request,
        "tokens.html",
        {
            "tokens": rows,
            "created": created,
            "problem": problem,
            "expiries": TOKEN_EXPIRIES,
            "session_name": SESSION_TOKEN_NAME,
            "server": str(request.base_url).rstrip("/"),
            "now": datetime.now(UTC),
        },
        status=status,
    )


@router.post("/tokens")
def create_token(
    request: Request, form: CheckedFormDep, caller: WebCallerDep, session: SessionDep
) -> Response:
    """Make a token and show its secret once (the answer to this post is not stored)."""
    name = form_text(form, "name")
    scope = form_text(form, "scope")
    expires = form_text(form, "expires_in_days")
    try:
        if not name or len(name) > 200:
            raise PageError(422, "give the token a name (up to 200 characters), such as 'laptop'")
        if scope not in ("read", "write"):
            raise PageError(422, "choose what the token may do: read, or read and write")
        if expires not in {value for value, _ in TOKEN_EXPIRIES}:
            raise PageError(422, "choose when the token expires from the list")
        made = tokens.create_token(session, caller, name, scope, int(expires) if expires else None)
    except PageError as exc:
        values = form_values(form, "name", "scope", "expires_in_days")
        problem = FormProblem("create-token", exc.message, values, "name")
        return show_tokens(request, session, caller, problem=problem, status=exc.status)
    return show_tokens(request, session, caller, created=made, status=201)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(
    token_id: int, form: CheckedFormDep, caller: WebCallerDep, session: SessionDep
) -> Response:
    """Revoke one of the caller's tokens; back to the list."""
    if not 1 <= token_id <= 2**62:
        raise PageError(404, f"token {token_id} not found")
    tokens.revoke_token(session, caller, token_id)
    return RedirectResponse("/tokens", status_code=303)


def _in_the_trash(days: float, project: str) -> str:
    """What happens after a deletion: the trash, for how long, and where to undo it."""
    span = f"{days:g} day{'' if days == 1 else 's'}"
    return (
        f"It goes to the trash of {project} first: a maintainer can restore it from the "
        f"project's Trash page for {span}, then it is purged for good."
    )


def _check_name(adapter: TypeAdapter[str], name: str, what: str, longest: int) -> None:
    try:
        adapter.validate_python(name)
    except ValidationError:
        raise PageError(
            422,
            f"{name!r} cannot be {what}: start with a letter or digit, then letters, digits, "
            f"'.', '_' or '-' (at most {longest} characters)",
        ) from None


def _check_description(description: str) -> None:
    if len(description) > MAX_DESCRIPTION:
        raise PageError(422, f"the description is longer than {MAX_DESCRIPTION} characters")
