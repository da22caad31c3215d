"""Models: named lines of versions inside a project."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lmvp_server.deps import (
    CallerDep,
    SessionDep,
    load_model,
    load_project,
    name_taken_is_conflict,
)
from lmvp_server.errors import APIError
from lmvp_server.events import record_event
from lmvp_server.models import Model, Role, Version
from lmvp_server.openapi import errors
from lmvp_server.schemas import ModelCreate, ModelName, ModelOut, ModelUpdate, ProjectName

router = APIRouter(tags=["models"])


def latest_number(session: Session, model: Model) -> int | None:
    return session.scalar(select(func.max(Version.number)).where(Version.model_id == model.id))


def _model_out(project_name: str, model: Model, latest: int | None) -> ModelOut:
    return ModelOut(
        project=project_name,
        name=model.name,
        description=model.description,
        created_at=model.created_at,
        latest_version=latest,
    )


@router.get("/projects/{project}/models", response_model=list[ModelOut], responses=errors(404, 422))
def list_models(project: ProjectName, caller: CallerDep, session: SessionDep) -> list[ModelOut]:
    row, _ = load_project(session, caller, project, Role.viewer)
    latest = (
        select(Version.model_id, func.max(Version.number).label("latest"))
        .group_by(Version.model_id)
        .subquery()
    )
    rows = session.execute(
        select(Model, latest.c.latest)
        .outerjoin(latest, latest.c.model_id == Model.id)
        .where(Model.project_id == row.id)
        .order_by(Model.name)
    )
    return [_model_out(row.name, m, n) for m, n in rows]


@router.post(
    "/projects/{project}/models",
    response_model=ModelOut,
    status_code=201,
    responses=errors(
        400, 403, 404, 409, 413, 422, notes={409: "The project has a model of that name."}
    ),
)
def create_model(
    project: ProjectName, body: ModelCreate, caller: CallerDep, session: SessionDep
) -> ModelOut:
    """Create a model (contributors may, so the first push of a new model just works)."""
    row, _ = load_project(session, caller, project, Role.contributor)
    exists = session.scalar(
        select(Model.id).where(Model.project_id == row.id, Model.name == body.name)
    )
    taken = f"model '{project}/{body.name}' already exists"
    if exists is not None:
        raise APIError(409, "conflict", taken)
    model = Model(project_id=row.id, name=body.name, description=body.description)
    with name_taken_is_conflict(session, taken):
        session.add(model)
        record_event(session, project=row, actor=caller.user, kind="model.created", model=body.name)
        session.commit()
    return _model_out(row.name, model, None)


@router.get(
    "/projects/{project}/models/{model}", response_model=ModelOut, responses=errors(404, 422)
)
def get_model(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> ModelOut:
    row, _ = load_project(session, caller, project, Role.viewer)
    m = load_model(session, row, model)
    return _model_out(row.name, m, latest_number(session, m))


@router.patch(
    "/projects/{project}/models/{model}",
    response_model=ModelOut,
    responses=errors(400, 403, 404, 413, 422),
)
def update_model(
    project: ProjectName,
    model: ModelName,
    body: ModelUpdate,
    caller: CallerDep,
    session: SessionDep,
) -> ModelOut:
    row, _ = load_project(session, caller, project, Role.maintainer)
    m = load_model(session, row, model)
    m.description = body.description
    record_event(session, project=row, actor=caller.user, kind="model.updated", model=m.name)
    session.commit()
    return _model_out(row.name, m, latest_number(session, m))


@router.delete(
    "/projects/{project}/models/{model}", status_code=204, responses=errors(403, 404, 422)
)
def delete_model(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> None:
    """Delete a model and all its versions (maintainers). Blobs stay for other versions."""
    row, _ = load_project(session, caller, project, Role.maintainer)
    m = load_model(session, row, model)
    session.delete(m)
    record_event(session, project=row, actor=caller.user, kind="model.deleted", model=model)
    session.commit()
