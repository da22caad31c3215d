"""Storage accounting: the bytes a project's blobs take, and per model what removing it would
free (the blobs no other model of the project references). Plain aggregates over
`project_blobs`, `version_files` and `blobs`, cheap enough for listings; the figures count each
blob once per project however many versions use it. The garbage collector on demand (server
admins) is here too, for the API."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from lmvp_server.gc import GCReport, collect
from lmvp_server.models import (
    Blob,
    Chunk,
    Model,
    Project,
    ProjectBlob,
    ProjectChunk,
    Role,
    Version,
    VersionFile,
)
from lmvp_server.schemas import ModelUsageOut, ProjectOut, UsageOut
from lmvp_server.services.access import Caller, open_project, require_admin
from lmvp_server.settings import Settings
from lmvp_server.storage import BlobStore


def project_sizes(session: Session, project_ids: Sequence[int]) -> dict[int, int]:
    """Bytes of the distinct blobs each project holds, by project id (0 for none)."""
    if not project_ids:
        return {}
    # project_blobs.size and its index (project_id, size): an index range per project.
    rows = session.execute(
        select(ProjectBlob.project_id, func.coalesce(func.sum(ProjectBlob.size), 0))
        .where(ProjectBlob.project_id.in_(project_ids))
        .group_by(ProjectBlob.project_id)
    )
    sizes = dict.fromkeys(project_ids, 0)
    sizes.update({project_id: int(total or 0) for project_id, total in rows})
    return sizes


def with_sizes(session: Session, projects: list[ProjectOut]) -> list[ProjectOut]:
    """The listing with each project's `size` filled in, by one aggregate query."""
    ids = dict(
        session.execute(
            select(Project.name, Project.id).where(Project.name.in_([p.name for p in projects]))
        ).all()
    )
    sizes = project_sizes(session, list(ids.values()))
    return [p.model_copy(update={"size": sizes.get(ids.get(p.name, -1), 0)}) for p in projects]


def project_usage(session: Session, caller: Caller, project: str) -> UsageOut:
    """What the project's blobs take, in total and per model (viewers)."""
    scope = open_project(session, caller, project, Role.viewer)
    project_id = scope.project.id
    held_bytes, held_count = session.execute(
        select(func.coalesce(func.sum(ProjectBlob.size), 0), func.count()).where(
            ProjectBlob.project_id == project_id
        )
    ).one()
    # Each (model, blob) once: which blobs each model's versions reference.
    refs = (
        select(Version.model_id.label("model_id"), VersionFile.sha256.label("sha256"))
        .join(VersionFile, VersionFile.version_id == Version.id)
        .join(Model, Model.id == Version.model_id)
        .where(Model.project_id == project_id)
        .distinct()
        .subquery()
    )
    referenced: dict[int, int] = dict(
        session.execute(
            select(refs.c.model_id, func.sum(Blob.size))
            .join(Blob, Blob.sha256 == refs.c.sha256)
            .group_by(refs.c.model_id)
        ).all()
    )
    # Blobs exactly one model references are what removing that model frees.
    solo = (
        select(refs.c.sha256, func.min(refs.c.model_id).label("model_id"))
        .group_by(refs.c.sha256)
        .having(func.count() == 1)
        .subquery()
    )
    exclusive: dict[int, int] = dict(
        session.execute(
            select(solo.c.model_id, func.sum(Blob.size))
            .join(Blob, Blob.sha256 == solo.c.sha256)
            .group_by(solo.c.model_id)
        ).all()
    )
    any_ref = select(refs.c.sha256).distinct().scalar_subquery()
    unreferenced = session.scalar(
        select(func.coalesce(func.sum(Blob.size), 0))
        .select_from(ProjectBlob)
        .join(Blob, Blob.sha256 == ProjectBlob.sha256)
        .where(ProjectBlob.project_id == project_id, ProjectBlob.sha256.not_in(any_ref))
    )
    models = session.execute(
        select(Model.id, Model.name).where(Model.project_id == project_id).order_by(Model.name)
    ).all()
    chunk_count, chunk_bytes = session.execute(
        select(func.count(), func.coalesce(func.sum(Chunk.stored_size), 0))
        .select_from(ProjectChunk)
        .join(Chunk, Chunk.sha256 == ProjectChunk.sha256)
        .where(ProjectChunk.project_id == project_id)
    ).one()
    return UsageOut(
        project=scope.project.name,
        bytes=int(held_bytes or 0),
        blobs=int(held_count),
        unreferenced_bytes=int(unreferenced or 0),
        models=[
            ModelUsageOut(
                name=name,
                referenced_bytes=int(referenced.get(model_id, 0)),
                exclusive_bytes=int(exclusive.get(model_id, 0)),
            )
            for model_id, name in models
        ],
        chunks=int(chunk_count),
        chunk_bytes=int(chunk_bytes or 0),
    )


def collect_garbage(
    caller: Caller,
    sessions: sessionmaker[Session],
    store: BlobStore,
    settings: Settings,
    *,
    dry_run: bool,
) -> GCReport:
    """One garbage collection pass now (server admins); see `lmvp_server.gc`."""
    require_admin(caller)
    return collect(sessions, store, settings, dry_run=dry_run)
