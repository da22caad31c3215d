"""A project's trash in the console: what was deleted (by hand or by a retention policy), by
whom, when it will be purged, and a button that restores a version or a model (maintainers),
through `services.trash` like the API's `lmvp trash restore`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from lmvp_server.deps import CtxDep, SessionDep
from lmvp_server.errors import APIError
from lmvp_server.models import Role
from lmvp_server.schemas import ModelName, ProjectName
from lmvp_server.services import trash
from lmvp_server.services.access import Caller, open_project
from lmvp_server.web.forms import FormProblem
from lmvp_server.web.rendering import PageRoute, render
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
