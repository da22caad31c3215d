"""Reading versions fast: Core queries straight to JSON-ready dicts for the list and get calls.

Listing is the call people (and the desktop app's lazy table) make most; building ORM objects
for a thousand versions and their files, then validating them through pydantic twice, cost ten
times the query. These rows have exactly the shape of `schemas.VersionOut`. The JSON columns
(metadata, metrics) are read as the JSON text they are stored as and passed through to the
response untouched (`orjson.Fragment`): decoding them only to encode them again was a third of
the time of listing 1,000 versions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Hashable
from typing import Any

import orjson
from orjson import Fragment
from sqlalchemy import ColumnElement, Select, Text, cast, select
from sqlalchemy.orm import Session, aliased

from lmvp_server.models import Alias, Model, Project, User, Version, VersionFile


def dump_json(value: Any) -> bytes:
    """Serialise rows from this module (datetimes as ISO 8601 with `Z`, like the API's models)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


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
        )
        .outerjoin(User, User.id == Version.author_id)
        .outerjoin(parent, parent.id == Version.parent_id)
        .where(Version.model_id == model.id, *conditions)
        .order_by(Version.number.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    rows = session.connection().execute(query).all()
    page = select(Version.id).where(Version.model_id == model.id, *conditions)
    if limit is not None:
        page = page.order_by(Version.number.desc()).limit(limit)
    files = _files_by_version(session, page) if rows else {}
    aliases = _aliases_by_version(session, model.id)
    return [
        {
            "project": project.name,
            "model": model.name,
            "number": number,
            "message": message,
            "metadata": Fragment(meta or "{}"),
            "metrics": Fragment(metrics or "{}"),
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
        ) in rows
    ]


def _files_by_version(session: Session, page: Select[Any]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    # The page's ids as a subquery: a thousand bound parameters cost more than the query.
    rows = (
        session.connection()
        .execute(
            select(VersionFile.version_id, VersionFile.path, VersionFile.size, VersionFile.sha256)
            .where(VersionFile.version_id.in_(page.scalar_subquery()))
            .order_by(VersionFile.version_id, VersionFile.path)
        )
        .all()
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


class ListingCache:
    """Serialised version listings, keyed by the model's identity and revision.

    Versions are immutable and every change to a model's versions or aliases bumps its
    revision (`deps.lock_model`), so a listing stays valid exactly as long as the revision does;
    an entry for an old revision is simply never asked for again. Bounded by total bytes.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self._max_bytes // 4:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes += len(value) - (len(old) if old is not None else 0)
            self._entries[key] = value
            while self._bytes > self._max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
