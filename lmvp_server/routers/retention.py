"""Retention policies and the trash: the HTTP face of `services.retention` and
`services.trash`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from lmvp_server.deps import CallerDep, CtxDep, SessionDep
from lmvp_server.openapi import errors
from lmvp_server.retention_schemas import RetentionOut, RetentionPolicy, RetentionPreview, TrashItem
from lmvp_server.schemas import MAX_INT, ModelName, ModelOut, ProjectName, ProjectOut, VersionOut
from lmvp_server.services import retention, trash

router = APIRouter(tags=["retention"])

_MODEL = "/projects/{project}/models/{model}/retention"
_PROJECT = "/projects/{project}/retention"
_INVALID = {422: "Invalid, or a policy without any rule (delete the policy instead)."}

VersionNumber = Annotated[int, Path(ge=1, le=MAX_INT)]


# --- policies -----------------------------------------------------------------------------------


@router.get(_MODEL, response_model=RetentionOut, responses=errors(404, 422))
def get_model_policy(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> RetentionOut:
    """The model's retention policy and the one in force (its own, else the project's)."""
    return retention.get_model_policy(session, caller, project, model)


@router.put(
    _MODEL, response_model=RetentionOut, responses=errors(400, 403, 404, 413, 422, notes=_INVALID)
)
def put_model_policy(
    project: ProjectName,
    model: ModelName,
    body: RetentionPolicy,
    caller: CallerDep,
    session: SessionDep,
) -> RetentionOut:
    """Set the model's retention policy (maintainers). It applies at the next commit to the
    model and at the server's scheduled pass; `POST .../retention/preview` shows what it would
    remove, `POST .../retention/apply` applies it now."""
    return retention.set_model_policy(session, caller, project, model, body)


@router.delete(_MODEL, response_model=RetentionOut, responses=errors(403, 404, 422))
def delete_model_policy(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> RetentionOut:
    """Remove the model's own policy (maintainers): the project's default applies, if any."""
    return retention.set_model_policy(session, caller, project, model, None)


@router.get(_PROJECT, response_model=RetentionOut, responses=errors(404, 422))
def get_project_policy(
    project: ProjectName, caller: CallerDep, session: SessionDep
) -> RetentionOut:
    """The project's default retention policy, for its models that have none of their own."""
    return retention.get_project_policy(session, caller, project)


@router.put(
    _PROJECT,
    response_model=RetentionOut,
    responses=errors(400, 403, 404, 413, 422, notes=_INVALID),
)
def put_project_policy(
    project: ProjectName, body: RetentionPolicy, caller: CallerDep, session: SessionDep
) -> RetentionOut:
    """Set the project's default retention policy (maintainers)."""
    return retention.set_project_policy(session, caller, project, body)


@router.delete(_PROJECT, response_model=RetentionOut, responses=errors(403, 404, 422))
def delete_project_policy(
    project: ProjectName, caller: CallerDep, session: SessionDep
) -> RetentionOut:
    """Remove the project's default retention policy (maintainers)."""
    return retention.set_project_policy(session, caller, project, None)


@router.get(f"{_MODEL}/preview", response_model=RetentionPreview, responses=errors(404, 422))
def preview(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> RetentionPreview:
    """What the policy in force would keep, by which rules, and remove now, and the bytes that
    removing them frees. Changes nothing; anyone who can read the model may ask."""
    return retention.preview(session, caller, project, model)


@router.post(
    f"{_MODEL}/preview",
    response_model=RetentionPreview,
    responses=errors(
        400, 403, 404, 413, 422, notes={**_INVALID, 403: "A read-only token: use GET."}
    ),
)
def preview_policy(
    project: ProjectName,
    model: ModelName,
    caller: CallerDep,
    session: SessionDep,
    body: RetentionPolicy | None = None,
) -> RetentionPreview:
    """The same preview for the policy in the body (to try one before setting it), or without
    a body for the policy in force. Changes nothing; any member with a write token may ask."""
    return retention.preview(session, caller, project, model, body)


@router.post(f"{_MODEL}/apply", response_model=RetentionPreview, responses=errors(403, 404, 422))
def apply(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> RetentionPreview:
    """Apply the policy in force now (maintainers): the versions it removes go to the trash."""
    return retention.apply(session, caller, project, model)


# --- the trash ----------------------------------------------------------------------------------


@router.get("/trash", response_model=list[TrashItem], responses=errors(404, 422))
def list_trash(
    ctx: CtxDep,
    caller: CallerDep,
    session: SessionDep,
    project: Annotated[ProjectName | None, Query()] = None,
) -> list[TrashItem]:
    """What is in the trash of `project`, or of every project you are a member of (projects in
    the trash included), newest deletion first, with when each will be purged."""
    return trash.list_trash(session, caller, ctx.settings.trash_days, project)


@router.post(
    "/projects/{project}/models/{model}/versions/{number}/restore",
    response_model=VersionOut,
    responses=errors(403, 404, 422),
)
def restore_version(
    project: ProjectName,
    model: ModelName,
    number: VersionNumber,
    caller: CallerDep,
    session: SessionDep,
) -> VersionOut:
    """Take a version out of the trash (maintainers), with the aliases it had that are free."""
    return trash.restore_version(session, caller, project, model, number)


@router.post(
    "/projects/{project}/models/{model}/restore",
    response_model=ModelOut,
    responses=errors(
        403, 404, 409, 422, notes={409: "A new model of that name was made meanwhile."}
    ),
)
def restore_model(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> ModelOut:
    """Take a model, with everything it held, out of the trash (maintainers)."""
    return trash.restore_model(session, caller, project, model)


@router.post(
    "/projects/{project}/restore",
    response_model=ProjectOut,
    responses=errors(
        403, 404, 409, 422, notes={409: "A new project of that name was made meanwhile."}
    ),
)
def restore_project(project: ProjectName, caller: CallerDep, session: SessionDep) -> ProjectOut:
    """Take a project, with everything it held, out of the trash (owners)."""
    return trash.restore_project(session, caller, project)


__all__ = ["router"]
