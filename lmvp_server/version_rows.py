"""Reading versions fast: Core queries straight to JSON-ready dicts for the list and get calls.

Listing is the call people (and the desktop app's lazy table) make most; building ORM objects
for a thousand versions and their files, then validating them through pydantic twice, costs
ten times the query. These rows have exactly the shape of `schemas.VersionOut`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, aliased

from lmvp_server.models import Alias, Model, Project, User, Version, VersionFile


def version_rows(
    session: Session,
    project: Project,
    model: Model,
    *conditions: ColumnElement[bool],
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Versions of `model` matching `conditions`, newest first, as `VersionOut`-shaped dicts."""
    parent = aliased(Version)
    query = (
        select(
            Version.id,
            Version.number,
            Version.message,
            Version.meta,
            Version.metrics,
            User.username,
            parent.number,
            Version.size,
            Version.file_count,
            Version.source_host,
            Version.source_path,
            Version.idempotency_key,
            Version.created_at,
        )
        .outerjoin(User, User.id == Version.author_id)
        .outerjoin(parent, parent.id == Version.parent_id)
        .where(Version.model_id == model.id, *conditions)
        .order_by(Version.number.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    rows = session.execute(query).all()
    ids = [r[0] for r in rows]
    files = _files_by_version(session, ids)
    aliases = _aliases_by_version(session, model.id)
    return [
        {
            "project": project.name,
            "model": model.name,
            "number": number,
            "message": message,
            "metadata": meta or {},
            "metrics": metrics or {},
            "author": author,
            "parent": parent_number,
            "aliases": aliases.get(vid, []),
            "size": size,
            "file_count": file_count,
            "files": files.get(vid, []),
            "source": {"host": host, "path": path},
            "idempotency_key": key,
            "created_at": created,
        }
        for (vid, number, message, meta, metrics, author, parent_number, size, file_count,
             host, path, key, created) in rows
    ]


def _files_by_version(session: Session, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if not ids:
        return out
    rows = session.execute(
        select(VersionFile.version_id, VersionFile.path, VersionFile.size, VersionFile.sha256)
        .where(VersionFile.version_id.in_(ids))
        .order_by(VersionFile.version_id, VersionFile.path)
    )
    for version_id, path, size, sha256 in rows:
        out[version_id].append({"path": path, "size": size, "sha256": sha256})
    return out


def _aliases_by_version(session: Session, model_id: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    rows = session.execute(
        select(Alias.version_id, Alias.name).where(Alias.model_id == model_id).order_by(Alias.name)
    )
    for version_id, name in rows:
        out[version_id].append(name)
    return out
