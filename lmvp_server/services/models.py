"""Models: named lines of versions inside a project. List, create (contributors, so a first
push just works), read, describe and delete (maintainers)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lmvp_server.errors import APIError
from lmvp_server.models import Model, Role, Version
from lmvp_server.schemas import ModelOut
from lmvp_server.services import trash
from lmvp_server.services.access import (
    Caller,
    name_taken_is_conflict,
    open_model,
    open_project,
)


def list_models(session: Session, caller: Caller, project: str) -> list[ModelOut]:
    """The project's models by name, each with its latest version number."""
    scope = open_project(session, caller, project, Role.viewer)
    latest = (
        select(Version.model_id, func.max(Version.number).label("latest"))
        .where(Version.deleted_at.is_(None))
        .group_by(Version.model_id)
        .subquery()
    )
    rows = session.execute(
        select(Model, latest.c.latest)
        .outerjoin(latest, latest.c.model_id == Model.id)
        .where(Model.project_id == scope.project.id, Model.deleted_at.is_(None))
        .order_by(Model.name)
    )
    return [model_out(scope.project.name, m, n) for m, n in rows]


def create_model(
    session: Session, caller: Caller, project: str, name: str, description: str
) -> ModelOut:
    """Create a model (contributors); raises APIError 409 when the project has one so named."""
    scope = open_project(session, caller, project, Role.contributor)
    row = scope.project
    exists = session.scalar(select(Model.id).where(Model.project_id == row.id, Model.name == name))
    taken = f"model '{project}/{name}' already exists"
    if exists is not None:
        raise APIError(409, "conflict", taken)
    model = Model(project_id=row.id, name=name, description=description)
    with name_taken_is_conflict(session, taken):
        session.add(model)
        scope.record("model.created", model=name)
        session.commit()
    return model_out(row.name, model, None)


def get_model(session: Session, caller: Caller, project: str, model: str) -> ModelOut:
    """The model with its latest version number."""
    scope = open_model(session, caller, project, model, Role.viewer)
    return model_out(scope.project.name, scope.model, latest_number(session, scope.model))


def update_model(
    session: Session, caller: Caller, project: str, model: str, description: str
) -> ModelOut:
    """Change the model's description (maintainers)."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    scope.model.description = description
    scope.record_model_event("model.updated")
    session.commit()
    return model_out(scope.project.name, scope.model, latest_number(session, scope.model))


def delete_model(session: Session, caller: Caller, project: str, model: str) -> None:
    """Move a model and all its versions to the trash (maintainers; see `services.trash`)."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    trash.delete_model(session, scope)


def latest_number(session: Session, model: Model) -> int | None:
    """The number of the model's newest version, None when it has none."""
    return session.scalar(
        select(func.max(Version.number)).where(
            Version.model_id == model.id, Version.deleted_at.is_(None)
        )
    )


def model_out(project_name: str, model: Model, latest: int | None) -> ModelOut:
    """The API's view of a model."""
    return ModelOut(
        project=project_name,
        name=model.name,
        description=model.description,
        created_at=model.created_at,
        latest_version=latest,
    )
