"""The pages for reading: projects, a project's history across its models, a model's versions,
a version (with its files to download) and a project's audit log.

Every page loads its project through `services.access` with the role the matching API call
needs, so the console shows exactly what the API would: a non-member gets 404, never a hint
that the project exists.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import Text, cast, select
from sqlalchemy.orm import aliased

from lmvp_server.blob_download import blob_response
from lmvp_server.deps import CtxDep, SessionDep
from lmvp_server.models import Alias, Model, Role, Run, User, Version
from lmvp_server.schemas import MAX_BIGINT, MAX_INT, ModelName, ProjectName
from lmvp_server.services import blobs, history, models, projects
from lmvp_server.services.access import open_model, open_project
from lmvp_server.services.versions import resolve_ref
from lmvp_server.web.rendering import PageError, PageRoute, render
from lmvp_server.web.session import WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 50
# Columns of key metrics on a model's page: the keys most versions of the page carry.
KEY_METRIC_COLUMNS = 3


@router.get("/")
def projects_page(request: Request, caller: WebCallerDep, session: SessionDep) -> Response:
    """The projects the user is a member of."""
    rows = projects.list_projects(session, caller)
    return render(request, "projects.html", {"projects": rows})


@router.get("/projects/{project}")
def project_page(
    request: Request,
    project: ProjectName,
    caller: WebCallerDep,
    session: SessionDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> Response:
    """A project: its models, and its versions across all models, newest first."""
    scope = open_project(session, caller, project, Role.viewer)
    row, role = scope.project, scope.role
    model_rows = models.list_models(session, caller, project)
    query = (
        select(
            Version.id,
            Model.name,
            Version.number,
            Version.message,
            User.username,
            Version.size,
            Version.step,
            Version.created_at,
        )
        .join(Model, Model.id == Version.model_id)
        .outerjoin(User, User.id == Version.author_id)
        .where(Model.project_id == row.id)
    )
    if before is not None:
        query = query.where(Version.id < before)
    found = session.execute(query.order_by(Version.id.desc()).limit(PAGE_SIZE + 1)).all()
    history = [
        {
            "model": name,
            "number": number,
            "message": message,
            "author": author,
            "size": size,
            "step": step,
            "created_at": created,
        }
        for _, name, number, message, author, size, step, created in found[:PAGE_SIZE]
    ]
    older = found[PAGE_SIZE - 1][0] if len(found) > PAGE_SIZE else None
    return render(
        request,
        "project.html",
        {
            "project": row,
            "role": role.name,
            "models": model_rows,
            "history": history,
            "older": older,
            "paged": before is not None,
        },
    )


@router.get("/projects/{project}/models/{model}")
def model_page(
    request: Request,
    project: ProjectName,
    model: ModelName,
    caller: WebCallerDep,
    session: SessionDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
) -> Response:
    """A model's versions, newest first, a page at a time; its aliases and recent runs."""
    scope = open_model(session, caller, project, model, Role.viewer)
    row, role, m = scope.project, scope.role, scope.model
    rows = _version_page(session, m, before)
    older = rows[PAGE_SIZE - 1]["number"] if len(rows) > PAGE_SIZE else None
    rows = rows[:PAGE_SIZE]
    counts = Counter(key for r in rows for key in r["metrics"])
    metric_keys = sorted(counts, key=lambda k: (-counts[k], k))[:KEY_METRIC_COLUMNS]
    aliases = session.execute(
        select(Alias.name, Version.number)
        .join(Version, Version.id == Alias.version_id)
        .where(Alias.model_id == m.id)
        .order_by(Alias.name)
    ).all()
    runs = session.execute(
        select(Run.id, Run.name, Run.status, Run.started_at)
        .where(Run.model_id == m.id)
        .order_by(Run.id.desc())
        .limit(10)
    ).all()
    return render(
        request,
        "model.html",
        {
            "project": row,
            "model": m,
            "role": role.name,
            "versions": rows,
            "metric_keys": metric_keys,
            "aliases": aliases,
            "runs": runs,
            "older": older,
            "paged": before is not None,
        },
    )


@router.get("/projects/{project}/models/{model}/versions/{ref}")
def version_page(
    request: Request,
    project: ProjectName,
    model: ModelName,
    ref: str,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """A version: metadata, metrics, files with download links, lineage, the line that
    downloads it, and (for maintainers) the alias forms. An alias or `latest` redirects to
    the version's number, so that the address names what is shown."""
    scope = open_model(session, caller, project, model, Role.viewer)
    row, role, m = scope.project, scope.role, scope.model
    v = resolve_ref(session, row, m, ref)
    if ref != str(v.number):
        return RedirectResponse(
            f"/projects/{row.name}/models/{m.name}/versions/{v.number}", status_code=303
        )
    all_aliases = session.execute(
        select(Alias.name, Version.number)
        .join(Version, Version.id == Alias.version_id)
        .where(Alias.model_id == m.id)
        .order_by(Alias.name)
    ).all()
    children = list(
        session.scalars(
            select(Version.number).where(Version.parent_id == v.id).order_by(Version.number)
        )
    )
    run = session.get(Run, v.run_id) if v.run_id is not None else None
    return render(
        request,
        "version.html",
        {
            "project": row,
            "model": m,
            "role": role.name,
            "can_alias": role >= Role.maintainer,
            "v": v,
            "aliases_here": [name for name, number in all_aliases if number == v.number],
            "aliases_elsewhere": [(n, num) for n, num in all_aliases if num != v.number],
            "children": children,
            "run": run,
            "download_line": f'lmvp.download("{row.name}/{m.name}:{v.number}")',
        },
    )


@router.get("/projects/{project}/models/{model}/versions/{number}/files/{path:path}")
def download_file(
    request: Request,
    project: ProjectName,
    model: ModelName,
    number: int,
    path: str,
    ctx: CtxDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """One file of a version, as an attachment named like the file (Range works as in the
    API, which streams it)."""
    scope = open_model(session, caller, project, model, Role.viewer)
    row, m = scope.project, scope.model
    v = resolve_ref(session, row, m, str(number))
    entry = next((f for f in v.files if f.path == path), None)
    if entry is None:
        raise PageError(404, f"version {v.number} of '{row.name}/{m.name}' has no file {path!r}")
    blob = blobs.find_blob(session, caller, row.name, entry.sha256)
    response = blob_response(request, ctx.blob_store, row.name, blob)
    name = PurePosixPath(entry.path).name
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    return response


@router.get("/projects/{project}/audit")
def audit_page(
    request: Request,
    project: ProjectName,
    caller: WebCallerDep,
    session: SessionDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
) -> Response:
    """Everything that changed in the project, newest first (the API's history)."""
    scope = open_project(session, caller, project, Role.viewer)
    row, role = scope.project, scope.role
    page = history.project_history(session, caller, project, limit=PAGE_SIZE, before=before)
    return render(
        request,
        "audit.html",
        {
            "project": row,
            "role": role.name,
            "events": page.items,
            "older": page.next,
            "paged": before is not None,
        },
    )


def _version_page(session: SessionDep, model: Model, before: int | None) -> list[dict[str, Any]]:
    """One page of versions (and one more, to know whether older ones exist), with aliases.

    A plain Core query: ORM objects with their files for every row would cost more than the
    page needs, which is what the table shows."""
    parent = aliased(Version)
    query = (
        select(
            Version.id,
            Version.number,
            Version.message,
            User.username,
            Version.size,
            Version.file_count,
            Version.step,
            Version.created_at,
            cast(Version.metrics, Text),
            Version.run_id,
            parent.number,
        )
        .outerjoin(User, User.id == Version.author_id)
        .outerjoin(parent, parent.id == Version.parent_id)
        .where(Version.model_id == model.id)
    )
    if before is not None:
        query = query.where(Version.number < before)
    found = session.connection().execute(query.order_by(Version.number.desc()).limit(PAGE_SIZE + 1))
    aliases: dict[int, list[str]] = defaultdict(list)
    for version_id, name in session.execute(
        select(Alias.version_id, Alias.name).where(Alias.model_id == model.id).order_by(Alias.name)
    ):
        aliases[version_id].append(name)
    return [
        {
            "number": number,
            "message": message,
            "author": author,
            "size": size,
            "file_count": file_count,
            "step": step,
            "created_at": created,
            "metrics": _metrics(metrics),
            "run": run_id,
            "parent": parent_number,
            "aliases": aliases.get(vid, []),
        }
        for (
            vid,
            number,
            message,
            author,
            size,
            file_count,
            step,
            created,
            metrics,
            run_id,
            parent_number,
        ) in found
    ]


def _metrics(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}
