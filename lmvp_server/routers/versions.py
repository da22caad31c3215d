"""Versions, aliases and a project's history: the HTTP face of `services.versions`,
`services.aliases` and `services.history`."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, BackgroundTasks, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from lmvp_server import read_path
from lmvp_server.compression import GZIP_MIN_BYTES, accepts_gzip, weak, without_weakness
from lmvp_server.deps import CallerDep, CtxDep, SessionDep
from lmvp_server.models import Role
from lmvp_server.openapi import NEEDS_TOKEN, errors
from lmvp_server.schemas import (
    MAX_BIGINT,
    MAX_INT,
    AliasOut,
    AliasPut,
    HistoryPage,
    ModelName,
    ProjectName,
    TensorComparisonOut,
    VersionCreate,
    VersionOut,
    VersionPage,
)
from lmvp_server.services import aliases, history, retention, tensor_compare, versions
from lmvp_server.services.access import open_model

router = APIRouter(tags=["versions"])

# What `aliases.check_alias_name` takes, as the document states it; the route checks it itself,
# with a message that says why a name cannot be an alias.
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
    openapi_extra=NEEDS_TOKEN,
)
async def list_versions(
    project: ProjectName,
    model: ModelName,
    request: Request,
    ctx: CtxDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_INT, description="only versions numbered below this")
    ] = None,
) -> Response:
    """Versions newest first, `limit` at a time; pass `next` back as `before` for more.
    Gzipped for clients that accept it (compressed once per change of the model)."""
    authorization = request.headers.get("authorization")
    if_none_match = without_weakness(request.headers.get("if-none-match"))
    gzip = accepts_gzip(request.headers.get("accept-encoding"))

    def read() -> tuple[versions.VersionListing, bytes | None]:
        listing = read_path.listing(
            ctx.engine,
            ctx.sessions,
            authorization,
            project,
            model,
            limit=limit,
            before=before,
            if_none_match=if_none_match,
            listing_cache=ctx.listing_cache,
            row_cache=ctx.row_cache,
        )
        body = listing.body
        if gzip and body is not None and len(body) >= GZIP_MIN_BYTES:
            return listing, ctx.listing_cache.gzipped(listing.etag, body)
        return listing, None

    # One trip to a thread for the whole call, on the hot reads' own slots (lmvp_server.read_path).
    listing, compressed = await to_thread.run_sync(read, limiter=ctx.read_slots)
    headers = {
        "ETag": listing.etag,
        "Cache-Control": "private, no-cache",
        "Vary": "Accept-Encoding",
    }
    if listing.body is None:
        return Response(status_code=304, headers=headers)
    if compressed is not None:
        headers.update({"ETag": weak(listing.etag), "Content-Encoding": "gzip"})
        return Response(compressed, media_type="application/json", headers=headers)
    return Response(listing.body, media_type="application/json", headers=headers)


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
    ctx: CtxDep,
    response: Response,
    caller: CallerDep,
    session: SessionDep,
    background: BackgroundTasks,
) -> VersionOut:
    """Commit a manifest of files already uploaded to the project as the model's next version.

    Returns 201 with the new version, or 200 with the earlier one when `idempotency_key` was
    already used for this model (a retried commit). 409 when `parent` is not the latest version.
    """
    commit = versions.create_version(
        session,
        caller,
        project,
        model,
        body,
        max_metadata_bytes=ctx.settings.max_metadata_bytes,
        store=ctx.blob_store,
    )
    if not commit.created:
        response.status_code = 200
    else:
        # The model's retention policy, once the answer is sent: commits do not wait for it.
        background.add_task(
            retention.apply_after_commit, ctx.sessions, commit.project_id, commit.model_id
        )
    return commit.version


@router.get(
    "/projects/{project}/models/{model}/versions/{ref}",
    response_model=VersionOut,
    responses=errors(404, 422),
    openapi_extra=NEEDS_TOKEN,
)
async def get_version(
    project: ProjectName, model: ModelName, ref: str, request: Request, ctx: CtxDep
) -> Response:
    """A version by number (`7` or `v7`), by alias, or `latest`."""
    authorization = request.headers.get("authorization")

    def read() -> bytes:
        return read_path.version_json(
            ctx.engine,
            ctx.sessions,
            authorization,
            project,
            model,
            ref,
            ctx.row_cache,
            ctx.listing_cache,
        )

    # One trip to a thread for the whole call, on the hot reads' own slots (lmvp_server.read_path).
    body = await to_thread.run_sync(read, limiter=ctx.read_slots)
    return Response(body, media_type="application/json")


@router.delete(
    "/projects/{project}/models/{model}/versions/{ref}",
    status_code=204,
    responses=errors(403, 404, 422),
)
def delete_version(
    project: ProjectName, model: ModelName, ref: str, caller: CallerDep, session: SessionDep
) -> None:
    """Move a version to the trash (maintainers), removing its aliases; restore it with
    `POST .../versions/{number}/restore` until it is purged. Its number is never reused."""
    versions.delete_version(session, caller, project, model, ref)


# --- compare ------------------------------------------------------------------------------------

# A version reference in a query: a number, `v` and a number, an alias or `latest`.
VersionRefQuery = Annotated[str, Query(min_length=1, max_length=64)]


@router.get(
    "/projects/{project}/models/{model}/compare/tensors",
    response_model=TensorComparisonOut,
    responses=errors(404, 422),
    openapi_extra=NEEDS_TOKEN,
)
def compare_tensors(
    project: ProjectName,
    model: ModelName,
    a: VersionRefQuery,
    b: VersionRefQuery,
    caller: CallerDep,
    session: SessionDep,
    ctx: CtxDep,
) -> Response:
    """Versions `a` and `b` (numbers, aliases or `latest`) tensor by tensor, for each
    safetensors file of either: added, removed, reshaped, unchanged, or changed with its
    relative change ‖a-b‖/‖a‖. Files that are not safetensors are listed in `skipped`. 500
    `chunk_damaged` when a chunk the comparison needs is damaged in the store."""
    scope = open_model(session, caller, project, model, Role.viewer)
    va = versions.resolve_ref(session, scope.project, scope.model, a)
    vb = versions.resolve_ref(session, scope.project, scope.model, b)
    result = tensor_compare.compare_tensors(session, ctx.blob_store, scope.project.name, va, vb)
    return JSONResponse(tensor_compare.as_json(result))


# --- aliases ------------------------------------------------------------------------------------


@router.get(
    "/projects/{project}/models/{model}/aliases",
    response_model=list[AliasOut],
    responses=errors(404, 422),
)
def list_aliases(
    project: ProjectName, model: ModelName, caller: CallerDep, session: SessionDep
) -> list[AliasOut]:
    return aliases.list_aliases(session, caller, project, model)


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
    return aliases.put_alias(session, caller, project, model, alias, body.version)


@router.delete(
    "/projects/{project}/models/{model}/aliases/{alias}",
    status_code=204,
    responses=errors(403, 404, 422),
)
def delete_alias(
    project: ProjectName, model: ModelName, alias: str, caller: CallerDep, session: SessionDep
) -> None:
    aliases.delete_alias(session, caller, project, model, alias)


# --- history ------------------------------------------------------------------------------------


@router.get("/projects/{project}/history", response_model=HistoryPage, responses=errors(404, 422))
def project_history(
    project: ProjectName,
    caller: CallerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_BIGINT, description="only events with a smaller id")
    ] = None,
    model: ModelName | None = None,
) -> HistoryPage:
    """Everything that happened in the project (new versions, aliases, members...), newest first."""
    return history.project_history(
        session, caller, project, limit=limit, before=before, model=model
    )


__all__ = ["router"]
