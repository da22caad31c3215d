"""Models: named lines of versions inside a project; the HTTP face of `services.models`."""

from __future__ import annotations

from fastapi import APIRouter

from lmvp_server.deps import CallerDep, SessionDep
from lmvp_server.openapi import errors
from lmvp_server.schemas import ModelCreate, ModelName, ModelOut, ModelUpdate, ProjectName
from lmvp_server.services import models

router = APIRouter(tags=["models"])


@router.get("/projects/{project}/models", response_model=list[ModelOut], responses=errors(404, 422))
def list_models(project: ProjectName, caller: CallerDep, session: SessionDep) -> list[ModelOut]:
    return models.list_models(session, caller, project)


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
    return models.create_model(session, caller, project, body.name, body.description)


@router.get(
    "/projects/{project}/models/{model}", response_model=ModelOut, responses=errors(404, 422)
)
def get_model(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> ModelOut:
    return models.get_model(session, caller, project, model)


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
    return models.update_model(session, caller, project, model, body.description)


@router.delete(
    "/projects/{project}/models/{model}", status_code=204, responses=errors(403, 404, 422)
)
def delete_model(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> None:
    """Delete a model and all its versions (maintainers). Blobs stay for other versions."""
    models.delete_model(session, caller, project, model)


__all__ = ["router"]
