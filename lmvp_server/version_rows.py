"""Reading versions fast: Core queries straight to JSON-ready dicts for the list and get calls.

Listing is the call people (and the desktop app's lazy table) make most; building ORM objects
for a thousand versions and their files, then validating them through pydantic twice, cost ten
times the query. These rows have exactly the shape of `schemas.VersionOut`. The JSON columns
(metadata, metrics) are read as the JSON text they are stored as and passed through to the
response untouched (`orjson.Fragment`): decoding them only to encode them again was a third of
the time of listing 1,000 versions.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

import orjson
from orjson import Fragment
from sqlalchemy import ColumnElement, Connection, Text, bindparam, cast, select
from sqlalchemy.orm import Session, aliased

from lmvp_server.caches import RowCache
from lmvp_server.models import Alias, Model, Project, User, Version, VersionFile

_parent = aliased(Version)
# Built once: building a statement costs more than running this one.
_ALIASES_OF = (
    select(Alias.name).where(Alias.version_id == bindparam("version_id")).order_by(Alias.name)
)


def dump_json(value: Any) -> bytes:
    """Serialise rows from this module (datetimes as ISO 8601 with `Z`, like the API's models)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


def version_rows(
    session: Session,
    project: Project,
    model: Model,
    *conditions: ColumnElement[bool],
    limit: int,
    cache: RowCache | None = None,
) -> list[dict[str, Any]]:
    """Versions of `model` matching `conditions`, newest first (at most `limit`), as
    `VersionOut`-shaped dicts.

    Versions never change, so their rows are kept in `cache` and only versions not seen before
    are read in full: after a commit, listing a thousand versions builds one. Aliases, which do
    move, are looked up on every call, and so is each parent's number (a parent purged from the
    trash leaves its children without one).
    """
    page = (
        select(Version.id, Version.number, _parent.number)
        .outerjoin(_parent, _parent.id == Version.parent_id)
        .where(Version.model_id == model.id, *conditions)
        .order_by(Version.number.desc())
        .limit(limit)
    )
    conn = session.connection()
    ids = conn.execute(page).all()
    known: dict[int, dict[str, Any]] = {}
    todo = []
    # A deleted model's id, and its versions' ids and numbers, can all come back in a new model
    # of the same name (SQLite reuses the highest row ids): its creation time tells them apart.
    identity = (model.id, model.created_at.isoformat())
    for vid, number, _ in ids:
        row = cache.get((vid, *identity, number)) if cache is not None else None
        if row is None:
            todo.append(vid)
        else:
            known[vid] = row
    if todo:
        for vid, row in _read_rows(conn, project.name, model.name, todo).items():
            known[vid] = row
            if cache is not None:
                cache.put((vid, *identity, row["number"]), row)
    aliases = _aliases_by_version(session, model.id)
    return [
        {**known[vid], "aliases": aliases.get(vid, []), "parent": parent}
        for vid, _, parent in ids
        if vid in known
    ]


def version_row(
    conn: Connection,
    project: str,
    model: str,
    identity: tuple[int, datetime],
    version: tuple[int, int],
    cache: RowCache,
) -> dict[str, Any]:
    """One version, (id, number), of the model `project/model` whose (id, creation time) is
    `identity`, as a `VersionOut`-shaped dict: its row from `cache` (read and kept there if
    missing), its aliases read now. Its `parent` is as the row was read: a caller that must be
    exact about a parent purged since reads it itself."""
    version_id, number = version
    key = (version_id, identity[0], identity[1].isoformat(), number)
    row = cache.get(key)
    if row is None:
        row = _read_rows(conn, project, model, [version_id])[version_id]
        cache.put(key, row)
    names = conn.execute(_ALIASES_OF, {"version_id": version_id}).scalars().all()
    return {**row, "aliases": names}


def _read_rows(
    conn: Connection, project: str, model: str, ids: list[int]
) -> dict[int, dict[str, Any]]:
    parent = aliased(Version)
    query = (
        select(
            Version.id,
            Version.number,
            Version.message,
            cast(Version.meta, Text),
            cast(Version.metrics, Text),
            User.username,
            parent.number,
            Version.size,
            Version.file_count,
            Version.source_host,
            Version.source_path,
            Version.idempotency_key,
            Version.created_at,
            Version.run_id,
            Version.step,
        )
        .outerjoin(User, User.id == Version.author_id)
        .outerjoin(parent, parent.id == Version.parent_id)
        .where(Version.id.in_(ids))
    )
    rows = conn.execute(query).all()
    files = _files_by_version(conn, ids)
    return {
        vid: {
            "project": project,
            "model": model,
            "number": number,
            "message": message,
            "metadata": Fragment(meta or "{}"),
            "metrics": Fragment(metrics or "{}"),
            "author": author,
            "parent": parent_number,
            "aliases": [],
            "size": size,
            "file_count": file_count,
            "files": files.get(vid, []),
            "source": {"host": host, "path": path},
            "idempotency_key": key,
            "created_at": created,
            "run": run_id,
            "step": step,
        }
        for (
            vid,
            number,
            message,
            meta,
            metrics,
            author,
            parent_number,
            size,
            file_count,
            host,
            path,
            key,
            created,
            run_id,
            step,
        ) in rows
    }


def _files_by_version(conn: Connection, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    rows = conn.execute(
        select(VersionFile.version_id, VersionFile.path, VersionFile.size, VersionFile.sha256)
        .where(VersionFile.version_id.in_(ids))
        .order_by(VersionFile.version_id, VersionFile.path)
    ).all()
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
