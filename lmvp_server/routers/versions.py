"""Versions (immutable, numbered per model), aliases and a project's history."""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from lmvp_server.db import utcnow
from lmvp_server.deps import (
    Caller,
    CallerDep,
    SessionDep,
    load_model,
    load_project,
    lock_model,
)
from lmvp_server.errors import APIError, not_found
from lmvp_server.events import event_out, record_event
from lmvp_server.manifest import validate_manifest
from lmvp_server.metric_store import values_at
from lmvp_server.models import (
    Alias,
    Blob,
    Event,
    Model,
    Project,
    ProjectBlob,
    Role,
    Run,
    Version,
)
from lmvp_server.models import VersionFile as VersionFileRow
from lmvp_server.openapi import errors
from lmvp_server.routers.models import latest_number
from lmvp_server.schemas import (
    MAX_BIGINT,
    MAX_INT,
    AliasOut,
    AliasPut,
    FileOut,
    HistoryPage,
    ModelName,
    ProjectName,
    Source,
    VersionCreate,
    VersionOut,
    VersionPage,
)
from lmvp_server.version_rows import ListingCache, dump_json, version_rows

router = APIRouter(tags=["versions"])

ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_VERSION_REF = re.compile(r"^v?([0-9]{1,9})$")
# What `_check_alias_name` takes, as the document states it; the route checks it itself, with
# a message that says why a name cannot be an alias.
AliasName = Annotated[
    str,
    Path(
        description="A letter first, then letters, digits, '.', '_' or '-'; not `latest`, nor "
        "`v` and digits (those name versions).",
        json_schema_extra={"pattern": r"^(?!latest$)(?!v[0-9]{1,9}$)[A-Za-z][A-Za-z0-9._-]{0,63}$"},
    ),
]


# --- versions -----------------------------------------------------------------------------------


_ETAG = {
    "ETag": {
        "description": "Send it back in `If-None-Match` to get 304 while nothing changed.",
        "required": True,
        "schema": {"type": "string"},
    }
}


@router.get(
    "/projects/{project}/models/{model}/versions",
    response_model=VersionPage,
    responses={
        200: {"headers": _ETAG},
        304: {
            "description": "Nothing changed since the `ETag` sent in `If-None-Match`.",
            "headers": _ETAG,
        },
        **errors(404, 422),
    },
)
def list_versions(
    project: ProjectName,
    model: ModelName,
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    limit: int = Query(50, ge=1, le=1000),
    before: int | None = Query(
        None, ge=1, le=MAX_INT, description="only versions numbered below this"
    ),
) -> Response:
    """Versions newest first, `limit` at a time; pass `next` back as `before` for more."""
    row, _ = load_project(session, caller, project, Role.viewer)
    m = load_model(session, row, model)
    revision = m.revision
    identity = f"{m.id}/{m.created_at.isoformat()}/{revision}/{before}/{limit}"
    etag = f'"{hashlib.sha256(identity.encode()).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    cache: ListingCache = request.app.state.listing_cache
    body = cache.get(etag)
    if body is None:
        conditions = [Version.number < before] if before is not None else []
        items = version_rows(
            session, row, m, *conditions, limit=limit + 1, cache=request.app.state.row_cache
        )
        more = len(items) > limit
        items = items[:limit]
        # Serialised straight from plain rows (same shape as VersionPage, which documents it):
        # validating a thousand versions through pydantic cost more than the query.
        body = dump_json({"items": items, "next": items[-1]["number"] if more else None})
        # Kept only if no change landed while the rows were read.
        if session.scalar(select(Model.revision).where(Model.id == m.id)) == revision:
            cache.put(etag, body)
    return Response(body, media_type="application/json", headers=headers)


@router.post(
    "/projects/{project}/models/{model}/versions",
    response_model=VersionOut,
    status_code=201,
    responses={
        200: {
            "model": VersionOut,
            "description": "The version this `idempotency_key` made earlier (a retried commit).",
        },
        **errors(
            400,
            403,
            404,
            409,
            413,
            422,
            notes={
                409: "`parent` is not the latest version any more (`error.details.latest` "
                "is), or `idempotency_key` was used for other files.",
                413: "`metadata` or `metrics` is over the server's limit once serialised.",
                422: "Invalid, or names files not uploaded to the project "
                "(`error.details.missing`), sizes that are not theirs, or a run of another "
                "model.",
            },
        ),
    },
)
def create_version(
    project: ProjectName,
    model: ModelName,
    body: VersionCreate,
    request: Request,
    response: Response,
    caller: CallerDep,
    session: SessionDep,
) -> VersionOut:
    """Commit a manifest of files already uploaded to the project as the model's next version.

    Returns 201 with the new version, or 200 with the earlier one when `idempotency_key` was
    already used for this model (a retried commit). 409 when `parent` is not the latest version.
    """
    row, _ = load_project(session, caller, project, Role.contributor)
    m = load_model(session, row, model)
    validate_manifest(body.files)
    _check_json_size(request, "metadata", body.metadata)
    _check_json_size(request, "metrics", body.metrics)
    _check_blobs_present(session, row, body)
    run_id = _check_run(session, m, body.run)

    if body.idempotency_key and (earlier := _by_idempotency_key(session, m, body)) is not None:
        response.status_code = 200
        return _version_out(row, m, earlier, _aliases_by_version(session, m).get(earlier.id, []))

    # Taking the next number locks the model's row (PostgreSQL) or the database (SQLite) until
    # commit, so concurrent commits to one model are serialised and numbers never collide.
    session.execute(
        update(Model)
        .where(Model.id == m.id)
        .values(version_counter=Model.version_counter + 1, revision=Model.revision + 1)
    )
    number = session.scalar(select(Model.version_counter).where(Model.id == m.id))
    assert number is not None
    if body.idempotency_key and (earlier := _by_idempotency_key(session, m, body)) is not None:
        session.rollback()
        response.status_code = 200
        return _version_out(row, m, earlier, _aliases_by_version(session, m).get(earlier.id, []))
    parent = _check_parent(session, m, body.parent)
    metrics = body.metrics
    if run_id is not None and body.step is not None and not metrics:
        metrics = values_at(session.connection(), run_id, body.step)

    version = Version(
        model_id=m.id,
        number=number,
        author_id=caller.user.id,
        message=body.message,
        meta=body.metadata,
        metrics=metrics,
        run_id=run_id,
        step=body.step,
        parent_id=parent.id if parent else None,
        source_host=body.source.host,
        source_path=body.source.path,
        idempotency_key=body.idempotency_key,
        size=sum(f.size for f in body.files),
        file_count=len(body.files),
        created_at=utcnow(),
    )
    version.author = caller.user
    version.parent = parent
    version.files = [VersionFileRow(path=f.path, size=f.size, sha256=f.sha256) for f in body.files]
    session.add(version)
    record_event(
        session,
        project=row,
        actor=caller.user,
        kind="version.created",
        model=m.name,
        version=number,
        payload={"message": body.message, "size": version.size, "file_count": len(body.files)},
    )
    session.commit()
    return _version_out(row, m, version, [])


@router.get(
    "/projects/{project}/models/{model}/versions/{ref}",
    response_model=VersionOut,
    responses=errors(404, 422),
)
def get_version(
    project: ProjectName, model: ModelName, ref: str, caller: CallerDep, session: SessionDep
) -> VersionOut:
    """A version by number (`7` or `v7`), by alias, or `latest`."""
    row, _ = load_project(session, caller, project, Role.viewer)
    m = load_model(session, row, model)
    version = resolve_ref(session, row, m, ref)
    return _version_out(row, m, version, _aliases_by_version(session, m).get(version.id, []))


@router.delete(
    "/projects/{project}/models/{model}/versions/{ref}",
    status_code=204,
    responses=errors(403, 404, 422),
)
def delete_version(
    project: ProjectName, model: ModelName, ref: str, caller: CallerDep, session: SessionDep
) -> None:
    """Delete a version (maintainers). Its number is never handed out again."""
    row, _ = load_project(session, caller, project, Role.maintainer)
    m = load_model(session, row, model)
    lock_model(session, m)
    version = resolve_ref(session, row, m, ref)
    record_event(
        session,
        project=row,
        actor=caller.user,
        kind="version.deleted",
        model=m.name,
        version=version.number,
    )
    session.delete(version)
    session.commit()


def resolve_ref(session: Session, project: Project, model: Model, ref: str) -> Version:
    where = f"version '{ref}' of model '{project.name}/{model.name}'"
    query = select(Version).options(selectinload(Version.files))
    if ref == "latest":
        version = session.scalar(
            query.where(Version.model_id == model.id).order_by(Version.number.desc()).limit(1)
        )
        if version is None:
            raise APIError(
                404, "not_found", f"model '{project.name}/{model.name}' has no versions yet"
            )
        return version
    if match := _VERSION_REF.match(ref):
        version = session.scalar(
            query.where(Version.model_id == model.id, Version.number == int(match.group(1)))
        )
    elif not ALIAS_PATTERN.match(ref):
        # No alias can have this name; asking the database could fail (PostgreSQL refuses NUL).
        version = None
    else:
        version = session.scalar(
            query.join(Alias, Alias.version_id == Version.id).where(
                Alias.model_id == model.id, Alias.name == ref
            )
        )
    if version is None:
        raise not_found(where)
    return version


# --- aliases ------------------------------------------------------------------------------------


@router.get(
    "/projects/{project}/models/{model}/aliases",
    response_model=list[AliasOut],
    responses=errors(404, 422),
)
def list_aliases(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> list[AliasOut]:
    row, _ = load_project(session, caller, project, Role.viewer)
    m = load_model(session, row, model)
    rows = session.execute(
        select(Alias, Version.number)
        .join(Version, Version.id == Alias.version_id)
        .where(Alias.model_id == m.id)
        .order_by(Alias.name)
    )
    return [AliasOut(name=a.name, version=n, updated_at=a.updated_at) for a, n in rows]


@router.put(
    "/projects/{project}/models/{model}/aliases/{alias}",
    response_model=AliasOut,
    responses=errors(
        400,
        403,
        404,
        413,
        422,
        notes={
            422: "Invalid, or the alias name cannot be one (a letter first, then letters, "
            "digits, '.', '_' or '-'; not `latest`, nor `v` and digits)."
        },
    ),
)
def put_alias(
    project: ProjectName,
    model: ModelName,
    alias: AliasName,
    body: AliasPut,
    caller: CallerDep,
    session: SessionDep,
) -> AliasOut:
    """Point an alias at a version, creating or moving it (maintainers)."""
    row, _ = load_project(session, caller, project, Role.maintainer)
    m = load_model(session, row, model)
    _check_alias_name(alias)
    lock_model(session, m)
    version = resolve_ref(session, row, m, str(body.version))
    existing = session.get(Alias, (m.id, alias))
    previous = None
    if existing is None:
        existing = Alias(model_id=m.id, name=alias, version_id=version.id, updated_at=utcnow())
        session.add(existing)
    else:
        previous = session.scalar(select(Version.number).where(Version.id == existing.version_id))
        existing.version_id = version.id
        existing.updated_at = utcnow()
    record_event(
        session,
        project=row,
        actor=caller.user,
        kind="alias.set",
        model=m.name,
        version=version.number,
        payload={"alias": alias, "previous": previous},
    )
    session.commit()
    return AliasOut(name=alias, version=version.number, updated_at=existing.updated_at)


@router.delete(
    "/projects/{project}/models/{model}/aliases/{alias}",
    status_code=204,
    responses=errors(403, 404, 422),
)
def delete_alias(
    project: ProjectName, model: ModelName, alias: str, caller: CallerDep, session: SessionDep
) -> None:
    row, _ = load_project(session, caller, project, Role.maintainer)
    m = load_model(session, row, model)
    lock_model(session, m)
    existing = session.get(Alias, (m.id, alias)) if ALIAS_PATTERN.match(alias) else None
    if existing is None:
        raise not_found(f"alias '{alias}' of model '{project}/{model}'")
    session.delete(existing)
    record_event(
        session,
        project=row,
        actor=caller.user,
        kind="alias.deleted",
        model=m.name,
        payload={"alias": alias},
    )
    session.commit()


# --- history ------------------------------------------------------------------------------------


@router.get("/projects/{project}/history", response_model=HistoryPage, responses=errors(404, 422))
def project_history(
    project: ProjectName,
    caller: CallerDep,
    session: SessionDep,
    limit: int = Query(50, ge=1, le=1000),
    before: int | None = Query(
        None, ge=1, le=MAX_BIGINT, description="only events with a smaller id"
    ),
    model: ModelName | None = None,
) -> HistoryPage:
    """Everything that happened in the project (new versions, aliases, members...), newest first."""
    row, _ = load_project(session, caller, project, Role.viewer)
    query = select(Event).where(Event.project_id == row.id)
    if before is not None:
        query = query.where(Event.id < before)
    if model is not None:
        query = query.where(Event.model_name == model)
    events = list(session.scalars(query.order_by(Event.id.desc()).limit(limit + 1)))
    more = len(events) > limit
    events = events[:limit]
    return HistoryPage(items=[event_out(e) for e in events], next=events[-1].id if more else None)


# --- helpers ------------------------------------------------------------------------------------


def _version_out(project: Project, model: Model, v: Version, aliases: list[str]) -> VersionOut:
    return VersionOut(
        project=project.name,
        model=model.name,
        number=v.number,
        message=v.message,
        metadata=v.meta or {},
        metrics=v.metrics or {},
        author=v.author.username if v.author else None,
        parent=v.parent.number if v.parent else None,
        aliases=aliases,
        size=v.size,
        file_count=v.file_count,
        files=[FileOut(path=f.path, size=f.size, sha256=f.sha256) for f in v.files],
        source=Source(host=v.source_host, path=v.source_path),
        idempotency_key=v.idempotency_key,
        created_at=v.created_at,
        run=v.run_id,
        step=v.step,
    )


def _aliases_by_version(session: Session, model: Model) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    rows = session.execute(
        select(Alias.version_id, Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)
    )
    for version_id, name in rows:
        out[version_id].append(name)
    return out


def _check_json_size(request: Request, what: str, value: object) -> None:
    limit: int = request.app.state.settings.max_metadata_bytes
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit:
        raise APIError(
            413,
            f"{what}_too_large",
            f"{what} is {size} bytes once serialised; the limit is {limit}: "
            "store big data as a file",
        )


def _check_blobs_present(session: Session, project: Project, body: VersionCreate) -> None:
    wanted = {f.sha256 for f in body.files}
    rows = session.execute(
        select(Blob.sha256, Blob.size)
        .join(ProjectBlob, ProjectBlob.sha256 == Blob.sha256)
        .where(ProjectBlob.project_id == project.id, Blob.sha256.in_(wanted))
    )
    held = {sha: size for sha, size in rows}
    missing = sorted(wanted - held.keys())
    if missing:
        raise APIError(
            422,
            "missing_blobs",
            f"{len(missing)} file(s) of this manifest are not uploaded to project "
            f"'{project.name}' yet: upload them, then commit again",
            details={"missing": missing},
        )
    wrong = [f.path for f in body.files if held[f.sha256] != f.size]
    if wrong:
        raise APIError(
            422,
            "size_mismatch",
            f"the size given for {wrong[0]!r} is not the size of its uploaded bytes",
            details={"paths": wrong},
        )


def _by_idempotency_key(session: Session, model: Model, body: VersionCreate) -> Version | None:
    earlier = session.scalar(
        select(Version)
        .options(selectinload(Version.files))
        .where(Version.model_id == model.id, Version.idempotency_key == body.idempotency_key)
    )
    if earlier is None:
        return None
    if _manifest_key(earlier.files) != _manifest_key(body.files):
        session.rollback()
        raise APIError(
            409,
            "idempotency_key_reused",
            f"idempotency key {body.idempotency_key!r} was used for version {earlier.number} "
            "with different files: use a new key for a new version",
        )
    return earlier


def _manifest_key(files: Sequence[object]) -> set[tuple[str, str]]:
    return {(f.path, f.sha256) for f in files}  # type: ignore[attr-defined]


def _check_parent(session: Session, model: Model, parent: int | None) -> Version | None:
    if parent is None:
        return None
    latest = latest_number(session, model)
    if latest != parent:
        session.rollback()
        raise APIError(
            409,
            "parent_mismatch",
            f"version {latest} of '{model.name}' landed after version {parent}: fetch the "
            "latest version, redo your change on it, then commit with it as parent"
            if latest
            else f"'{model.name}' has no version {parent}",
            details={"latest": latest},
        )
    return session.scalar(
        select(Version).where(Version.model_id == model.id, Version.number == parent)
    )


def _check_run(session: Session, model: Model, run: int | None) -> int | None:
    """The id of the run a new version names, which must be a run of the same model."""
    if run is None:
        return None
    if session.scalar(select(Run.model_id).where(Run.id == run)) != model.id:
        raise APIError(
            422,
            "invalid_run",
            f"run {run} is not a run of model '{model.name}': give a run of this model, or none",
        )
    return run


def _check_alias_name(alias: str) -> None:
    if not ALIAS_PATTERN.match(alias) or alias == "latest" or _VERSION_REF.match(alias):
        raise APIError(
            422,
            "invalid_alias",
            f"{alias!r} cannot be an alias: use a letter first, then letters, digits, '.', '_' "
            "or '-' (not 'latest', nor 'v' followed by digits, which name versions)",
        )


__all__ = ["Caller", "resolve_ref", "router"]
