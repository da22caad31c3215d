"""Versions: immutable, numbered per model. List a page (cached per model revision, with an
ETag), commit a manifest as the next version, read one by number, alias or `latest`, delete one
(maintainers)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, selectinload

from lmvp_server.blob_claims import hold_for_commit
from lmvp_server.caches import ListingCache, RowCache
from lmvp_server.db import utcnow
from lmvp_server.errors import APIError, not_found
from lmvp_server.manifest import validate_manifest
from lmvp_server.metric_store import values_at
from lmvp_server.models import Alias, Blob, Model, Project, ProjectBlob, Role, Run, Version
from lmvp_server.models import VersionFile as VersionFileRow
from lmvp_server.schemas import FileOut, Source, VersionCreate, VersionOut
from lmvp_server.services.access import Caller, ModelScope, lock_model, open_model
from lmvp_server.services.models import latest_number
from lmvp_server.services.trash import BY_HAND, in_trash_error, trash_ref, trash_version
from lmvp_server.storage import BlobStore
from lmvp_server.version_rows import dump_json, version_rows

ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
VERSION_REF = re.compile(r"^v?([0-9]{1,9})$")


@dataclass(frozen=True)
class VersionListing:
    """One page of a model's versions as JSON, and the ETag naming it. `body` is None when the
    caller's copy (its `If-None-Match`) is still current."""

    etag: str
    body: bytes | None


@dataclass(frozen=True)
class Commit:
    """The version a commit made (`created`) or found already made by its idempotency key."""

    version: VersionOut
    created: bool
    # The ids of its project and model, for what runs after the commit (retention).
    project_id: int = 0
    model_id: int = 0


def list_versions(
    session: Session,
    caller: Caller,
    project: str,
    model: str,
    *,
    limit: int,
    before: int | None,
    if_none_match: str | None,
    listing_cache: ListingCache,
    row_cache: RowCache,
) -> VersionListing:
    """Versions newest first, `limit` at a time, below number `before` when given; the JSON
    has the shape of `schemas.VersionPage` (`next` is the `before` of the next page)."""
    scope = open_model(session, caller, project, model, Role.viewer)
    row, m = scope.project, scope.model
    revision = m.revision
    etag = listing_etag(m.id, m.created_at, revision, before, limit)
    if if_none_match == etag:
        return VersionListing(etag, None)
    body = listing_cache.get(etag)
    if body is None:
        # Versions in the trash are not listed.
        conditions: list[ColumnElement[bool]] = [Version.deleted_at.is_(None)]
        if before is not None:
            conditions.append(Version.number < before)
        items = version_rows(session, row, m, *conditions, limit=limit + 1, cache=row_cache)
        more = len(items) > limit
        items = items[:limit]
        # Serialised straight from plain rows (same shape as VersionPage, which documents it):
        # validating a thousand versions through pydantic cost more than the query.
        body = dump_json({"items": items, "next": items[-1]["number"] if more else None})
        # Kept only if no change landed while the rows were read.
        if session.scalar(select(Model.revision).where(Model.id == m.id)) == revision:
            listing_cache.put(etag, body)
    return VersionListing(etag, body)


def listing_etag(
    model_id: int, created_at: datetime, revision: int, before: int | None, limit: int
) -> str:
    """The ETag of a page of a model's listing: the key it is cached under, too."""
    identity = f"{model_id}/{created_at.isoformat()}/{revision}/{before}/{limit}"
    return f'"{hashlib.sha256(identity.encode()).hexdigest()[:32]}"'


def create_version(
    session: Session,
    caller: Caller,
    project: str,
    model: str,
    body: VersionCreate,
    *,
    max_metadata_bytes: int,
    store: BlobStore,
) -> Commit:
    """Commit a manifest of files already uploaded to the project as the model's next version
    (contributors).

    Returns the new version, or the earlier one when `idempotency_key` was already used for
    this model with the same files. Raises APIError 409 when `parent` is not the latest version
    or the key was used for other files, 413 for oversized metadata or metrics, 422 for files
    not uploaded, wrong sizes or a run of another model.
    """
    scope = open_model(session, caller, project, model, Role.contributor)
    row, m = scope.project, scope.model
    validate_manifest(body.files)
    _check_json_size(max_metadata_bytes, "metadata", body.metadata)
    _check_json_size(max_metadata_bytes, "metrics", body.metrics)
    _check_blobs_present(session, store, row, body)
    run_id = _check_run(session, m, body.run)

    if body.idempotency_key and (earlier := _by_idempotency_key(session, m, body)) is not None:
        return Commit(_earlier_out(session, scope, earlier), created=False)

    # Taking the next number locks the model's row (PostgreSQL) or the database (SQLite) until
    # commit, so concurrent commits to one model are serialised and numbers never collide.
    session.execute(
        update(Model)
        .where(Model.id == m.id)
        .values(version_counter=Model.version_counter + 1, revision=Model.revision + 1)
    )
    number = session.scalar(select(Model.version_counter).where(Model.id == m.id))
    assert number is not None
    # Read again under the lock: the garbage collector may have released one since the check
    # above (lmvp_server/gc.py); held from here until this commit ends.
    if gone := hold_for_commit(session, row.id, {f.sha256 for f in body.files}):
        session.rollback()
        raise _missing_blobs_error(row, sorted(gone))
    if body.idempotency_key and (earlier := _by_idempotency_key(session, m, body)) is not None:
        session.rollback()
        return Commit(_earlier_out(session, scope, earlier), created=False)
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
    scope.record_model_event(
        "version.created",
        version=number,
        payload={"message": body.message, "size": version.size, "file_count": len(body.files)},
    )
    session.commit()
    return Commit(version_out(row, m, version, []), created=True, project_id=row.id, model_id=m.id)


def get_version(session: Session, caller: Caller, project: str, model: str, ref: str) -> VersionOut:
    """A version by number (`7` or `v7`), by alias, or `latest`; APIError 404 when none."""
    scope = open_model(session, caller, project, model, Role.viewer)
    version = resolve_ref(session, scope.project, scope.model, ref)
    aliases = aliases_by_version(session, scope.model).get(version.id, [])
    return version_out(scope.project, scope.model, version, aliases)


def delete_version(session: Session, caller: Caller, project: str, model: str, ref: str) -> None:
    """Move a version to the trash (maintainers), removing the aliases on it (a restore puts
    them back; see `services.trash`). Its number is never handed out again."""
    scope = open_model(session, caller, project, model, Role.maintainer)
    lock_model(session, scope.model)
    version = resolve_ref(session, scope.project, scope.model, ref)
    trash_version(session, scope.project, scope.model, version, actor=caller.user, reason=BY_HAND)
    session.commit()


def resolve_ref(session: Session, project: Project, model: Model, ref: str) -> Version:
    """The version `ref` names (a number, `v` and a number, an alias or `latest`), with its
    files; raises APIError 404 when there is none (code `in_trash`, saying how to restore
    it, for a version in the trash)."""
    where = f"version '{ref}' of model '{project.name}/{model.name}'"
    query = select(Version).options(selectinload(Version.files))
    if ref == "latest":
        version = session.scalar(
            query.where(Version.model_id == model.id, Version.deleted_at.is_(None))
            .order_by(Version.number.desc())
            .limit(1)
        )
        if version is None:
            raise APIError(
                404, "not_found", f"model '{project.name}/{model.name}' has no versions yet"
            )
        return version
    if match := VERSION_REF.match(ref):
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
    if version.deleted_at is not None:
        raise in_trash_error(
            f"version {version.number} of model '{project.name}/{model.name}'",
            trash_ref(project.name, model.name, version.number),
            version.deleted_by,
            version.deleted_reason,
        )
    return version


def version_out(project: Project, model: Model, v: Version, aliases: list[str]) -> VersionOut:
    """The API's view of a version."""
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


def aliases_by_version(session: Session, model: Model) -> dict[int, list[str]]:
    """The model's alias names by the id of the version each points at, names sorted."""
    out: dict[int, list[str]] = defaultdict(list)
    rows = session.execute(
        select(Alias.version_id, Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)
    )
    for version_id, name in rows:
        out[version_id].append(name)
    return out


def _earlier_out(session: Session, scope: ModelScope, earlier: Version) -> VersionOut:
    aliases = aliases_by_version(session, scope.model).get(earlier.id, [])
    return version_out(scope.project, scope.model, earlier, aliases)


def _check_json_size(limit: int, what: str, value: object) -> None:
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit:
        raise APIError(
            413,
            f"{what}_too_large",
            f"{what} is {size} bytes once serialised; the limit is {limit}: "
            "store big data as a file",
        )


def _check_blobs_present(
    session: Session, store: BlobStore, project: Project, body: VersionCreate
) -> None:
    wanted = {f.sha256 for f in body.files}
    rows = session.execute(
        select(Blob.sha256, Blob.size, Blob.chunked)
        .join(ProjectBlob, ProjectBlob.sha256 == Blob.sha256)
        .where(ProjectBlob.project_id == project.id, Blob.sha256.in_(wanted))
    )
    # A blob counts only if this server's store holds its bytes too: every host shares the
    # database, but a store on a host's own disk is its own (one stat per distinct file). A
    # blob assembled from chunks is its chunks (services/chunks.py), not one object.
    held = {sha: size for sha, size, chunked in rows if chunked or store.holds(sha)}
    missing = sorted(wanted - held.keys())
    if missing:
        raise _missing_blobs_error(project, missing)
    wrong = [f.path for f in body.files if held[f.sha256] != f.size]
    if wrong:
        raise APIError(
            422,
            "size_mismatch",
            f"the size given for {wrong[0]!r} is not the size of its uploaded bytes",
            details={"paths": wrong},
        )


def _missing_blobs_error(project: Project, missing: list[str]) -> APIError:
    return APIError(
        422,
        "missing_blobs",
        f"{len(missing)} file(s) of this manifest are not uploaded to project "
        f"'{project.name}' yet: upload them, then commit again",
        details={"missing": missing},
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
