"""A project's trash in the console: what was deleted (by hand or by a retention policy), by
whom, when it will be purged, and a button that restores a version or a model (maintainers),
through `services.trash` like the API's `lmvp trash restore`; and emptying the trash now
(maintainers), after a page that says what goes for good (`services.trash.empty_trash`, up to
the newest deletion that page showed)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from lmvp_server.deps import CtxDep, SessionDep
from lmvp_server.errors import APIError
from lmvp_server.models import Role
from lmvp_server.schemas import ModelName, ProjectName
from lmvp_server.services import trash
from lmvp_server.services.access import Caller, open_project
from lmvp_server.web.forms import FormProblem, confirm_page, form_text, is_confirmed
from lmvp_server.web.rendering import PageError, PageRoute, format_size, render
from lmvp_server.web.session import CheckedFormDep, WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/projects/{project}/trash")
def trash_page(
    request: Request, project: ProjectName, ctx: CtxDep, caller: WebCallerDep, session: SessionDep
) -> Response:
    """What is in the project's trash, newest deletion first."""
    return show_trash(request, session, caller, project, ctx.settings.trash_days)


def show_trash(
    request: Request,
    session: Session,
    caller: Caller,
    project: str,
    trash_days: float,
    *,
    problem: FormProblem | None = None,
    status: int = 200,
) -> Response:
    """The trash page, with `problem` when a restore was refused."""
    scope = open_project(session, caller, project, Role.viewer)
    items = [
        i for i in trash.list_trash(session, caller, trash_days, project) if i.kind != "project"
    ]
    return render(
        request,
        "trash.html",
        {
            "project": scope.project,
            "role": scope.role.name,
            "items": items,
            "can_restore": scope.role >= Role.maintainer,
            "trash_days": trash_days,
            "problem": problem,
        },
        status=status,
    )


@router.post("/projects/{project}/models/{model}/versions/{number}/restore")
def restore_version(
    request: Request,
    project: ProjectName,
    model: ModelName,
    number: int,
    form: CheckedFormDep,
    ctx: CtxDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Take a version out of the trash (maintainers); on to its page."""
    try:
        trash.restore_version(session, caller, project, model, number)
    except APIError as exc:
        if exc.status not in (404, 409):
            raise
        session.rollback()
        problem = FormProblem("trash", exc.message)
        days = ctx.settings.trash_days
        return show_trash(
            request, session, caller, project, days, problem=problem, status=exc.status
        )
    return RedirectResponse(
        f"/projects/{project}/models/{model}/versions/{number}", status_code=303
    )


@router.post("/projects/{project}/models/{model}/restore")
def restore_model(
    request: Request,
    project: ProjectName,
    model: ModelName,
    form: CheckedFormDep,
    ctx: CtxDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Take a model, with everything it held, out of the trash (maintainers)."""
    try:
        trash.restore_model(session, caller, project, model)
    except APIError as exc:
        if exc.status not in (404, 409):
            raise
        session.rollback()
        problem = FormProblem("trash", exc.message)
        days = ctx.settings.trash_days
        return show_trash(
            request, session, caller, project, days, problem=problem, status=exc.status
        )
    return RedirectResponse(f"/projects/{project}/models/{model}", status_code=303)


# The trashed versions and models an emptying confirmation names before "and N more".
NAMED = 30


@router.get("/projects/{project}/trash/empty")
def confirm_emptying(
    request: Request, project: ProjectName, ctx: CtxDep, caller: WebCallerDep, session: SessionDep
) -> Response:
    """What emptying the trash purges for good, and the button that does it (maintainers)."""
    scope = open_project(session, caller, project, Role.maintainer)
    items = [
        i
        for i in trash.list_trash(session, caller, ctx.settings.trash_days, project)
        if i.kind != "project"
    ]
    if not items:
        return RedirectResponse(f"/projects/{project}/trash", status_code=303)
    versions = [i for i in items if i.kind == "version"]
    models = [i for i in items if i.kind == "model"]
    counted = []
    if versions:
        counted.append(f"{len(versions)} version{'' if len(versions) == 1 else 's'}")
    if models:
        counted.append(
            f"{len(models)} model{'' if len(models) == 1 else 's'} with every version in it"
        )
    named = ", ".join(
        f"{i.model} v{i.version}" if i.kind == "version" else f"the model {i.model}"
        for i in items[:NAMED]
    )
    more = f" and {len(items) - NAMED} more" if len(items) > NAMED else ""
    size = sum(i.size for i in items)
    return confirm_page(
        request,
        title=f"Empty the trash of {project}?",
        lines=[
            f"{' and '.join(counted)} ({format_size(size)} of files) will be removed for good: "
            f"{named}{more}.",
            "They cannot be restored afterwards. Their files' bytes are freed by the next "
            "garbage collection, except what versions still in use share with them.",
            "Whatever is deleted after this page was shown stays in the trash.",
        ],
        action=f"/projects/{project}/trash/empty",
        fields={"through": max(i.deleted_at for i in items).isoformat()},
        button="Empty the trash",
        cancel=f"/projects/{project}/trash",
        context={"project": scope.project, "role": scope.role.name},
    )


@router.post("/projects/{project}/trash/empty")
def empty_trash(
    project: ProjectName, form: CheckedFormDep, caller: WebCallerDep, session: SessionDep
) -> Response:
    """Purge what the confirmation page showed (maintainers); back to the trash page."""
    open_project(session, caller, project, Role.maintainer)
    if not is_confirmed(form):
        return RedirectResponse(f"/projects/{project}/trash/empty", status_code=303)
    try:
        through = datetime.fromisoformat(form_text(form, "through"))
    except ValueError:
        raise PageError(
            422, "this form lost the time it was shown: empty the trash again"
        ) from None
    if through.tzinfo is None:
        raise PageError(422, "this form lost the time it was shown: empty the trash again")
    trash.empty_trash(session, caller, project, deleted_through=through)
    return RedirectResponse(f"/projects/{project}/trash", status_code=303)
