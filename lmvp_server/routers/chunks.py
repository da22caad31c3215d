"""Chunks (issue 17): which a project lacks, sending them in packs, assembling a blob from them,
a chunked blob's chunk list, and fetching chunks in packs: the HTTP face of
`services.chunks`."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse

from lmvp_server.context import CtxDep, ServerContext
from lmvp_server.deps import Caller, CallerDep, SessionDep, authenticate
from lmvp_server.errors import APIError, error_body
from lmvp_server.numbers import count_or_none
from lmvp_server.openapi import NEEDS_TOKEN, errors
from lmvp_server.schemas import (
    AssembleRequest,
    AssembleResponse,
    ChunkListOut,
    ChunksMissingResponse,
    ChunksRequest,
    PackResult,
    ProjectName,
    Sha256,
)
from lmvp_server.services import chunks
from lmvp_server.storage import ChunkMissing

router = APIRouter(tags=["chunks"])

_PACK_BODY = {
    "requestBody": {
        "required": True,
        "description": "Records back to back: sha256 (32 raw bytes), raw length (u32 LE), frame "
        "length (u32 LE), frame (an lmvp chunk frame).",
        "content": {chunks.PACK_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def get_reader(request: Request, session: SessionDep) -> Caller:
    """The caller of a request that only reads, though it is a POST: read tokens may."""
    return authenticate(session, request.headers.get("authorization"))


ReaderDep = Annotated[Caller, Depends(get_reader)]


@router.post(
    "/projects/{project}/chunks/missing",
    response_model=ChunksMissingResponse,
    responses=errors(403, 404, 413, 422),
)
def missing_chunks(
    project: ProjectName, body: ChunksRequest, caller: CallerDep, session: SessionDep, ctx: CtxDep
) -> ChunksMissingResponse:
    """Which of the given chunks this project lacks, in the order asked. Those it holds are
    claimed for the assembly that follows."""
    missing = chunks.missing_chunks(
        session, caller, project, body.chunks, claim_seconds=ctx.settings.gc_grace_seconds
    )
    return ChunksMissingResponse(missing=missing)


@router.post(
    "/projects/{project}/chunks",
    response_model=PackResult,
    responses=errors(
        403,
        404,
        413,
        415,
        422,
        notes={
            413: "The pack is larger than 256 MiB: the complete records before that point are "
            "stored.",
            422: "A record failed verification (`error.details.chunk` names it) or the pack "
            "ended inside a record: the records before it are stored.",
        },
    ),
    openapi_extra=_PACK_BODY,
)
async def send_chunks(
    project: ProjectName, request: Request, ctx: CtxDep, caller: CallerDep, session: SessionDep
) -> PackResult:
    """Store a pack of chunk frames, streamed: each record is decoded and checked against its
    sha256 and length, and stored as received; chunks the project holds are skipped. A cut
    connection keeps every complete record before the cut."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != chunks.PACK_MEDIA_TYPE:
        raise APIError(
            415, "unsupported_media_type", f"a chunk pack is sent as {chunks.PACK_MEDIA_TYPE}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and (count_or_none(declared) or 0) > chunks.MAX_PACK_BYTES:
        raise APIError(
            413,
            "pack_too_large",
            f"a chunk pack may hold at most {chunks.MAX_PACK_BYTES} bytes: send smaller packs",
        )
    pack = await run_in_threadpool(chunks.open_pack, session, caller, project)
    storer = _InOrder(ctx, pack)
    body = request.stream()
    try:
        async for data in body:
            if pack.feed(data):
                await storer.submit()
        await storer.submit()
        await storer.settle()
        pack.check_complete()
    except ClientDisconnect:
        await storer.finish()  # the complete records before the cut
        return PackResult(**pack.result())
    except APIError as refused:
        # Unless a batch failed (then nothing after its bad record is stored), the complete
        # records before the refusal are stored; a bad one among them is the answer.
        error = refused if storer.failed else (await storer.finish() or refused)
        if error.status == 422:
            await _drain(body, pack.received)  # so the client reads the answer
        raise error from None
    finally:
        storer.forget()
    return PackResult(**pack.result())


class _InOrder:
    """Stores a pack's batches on worker threads one at a time, in order, while the body goes
    on arriving: receiving the next batch overlaps verifying and writing this one (at most two
    batches are held)."""

    def __init__(self, ctx: ServerContext, pack: chunks.PackIngest) -> None:
        self.ctx = ctx
        self.pack = pack
        self.task: asyncio.Future[None] | None = None
        self.failed = False

    async def settle(self) -> None:
        """Wait for the batch being stored; raises what storing it raised."""
        task, self.task = self.task, None
        if task is not None:
            try:
                await task
            except BaseException:
                self.failed = True
                raise

    async def submit(self) -> None:
        """Once the batch before it is stored, start storing the records received since."""
        await self.settle()
        batch = self.pack.take_batch()
        if batch:
            sessions, store = self.ctx.sessions, self.ctx.blob_store
            self.task = asyncio.ensure_future(
                run_in_threadpool(chunks.store_batch, sessions, store, self.pack, batch)
            )

    async def finish(self) -> APIError | None:
        """Store every complete record received; the refusal of a bad one, if any."""
        try:
            await self.submit()
            await self.settle()
        except APIError as exc:
            return exc
        return None

    def forget(self) -> None:
        """Leaving early: stop waiting for a batch in flight (its thread finishes it)."""
        task, self.task = self.task, None
        if task is not None:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it as lost


async def _drain(body: AsyncIterator[bytes], received: int) -> None:
    """Read (and drop) the rest of a refused pack, up to the most a pack may hold."""
    try:
        async for data in body:
            received += len(data)
            if received > chunks.MAX_PACK_BYTES:
                return
    except (ClientDisconnect, RuntimeError):
        return


@router.post(
    "/projects/{project}/blobs/assemble",
    response_model=AssembleResponse,
    responses=errors(
        403,
        404,
        409,
        413,
        422,
        notes={
            409: "The project does not hold some of the chunks: `missing` (and "
            "`error.details.missing`) lists them; send them, then assemble again.",
            422: "The chunks' sizes do not add up to `size`, or their bytes do not hash to "
            "`sha256`: nothing was recorded.",
        },
    ),
)
def assemble_blob(
    project: ProjectName, body: AssembleRequest, caller: CallerDep, session: SessionDep, ctx: CtxDep
) -> Any:
    """Record the blob `sha256` in the project from chunks it holds, once their decoded bytes,
    in order, prove to be it; then a version may name it, as after a tus upload."""
    refs = [chunks.ChunkRef(c.sha256, c.size) for c in body.chunks]
    try:
        chunks.assemble_blob(
            session,
            ctx.blob_store,
            caller,
            project,
            body.sha256,
            body.size,
            refs,
            grace_seconds=ctx.settings.gc_grace_seconds,
        )
    except APIError as exc:
        if exc.code != "missing_chunks":
            raise
        # The error body, and the list at the top as the protocol names it.
        missing = (exc.details or {}).get("missing", [])
        return JSONResponse(
            {**error_body(exc.code, exc.message, exc.details), "missing": missing},
            status_code=409,
        )
    return AssembleResponse(sha256=body.sha256, size=body.size)


@router.get(
    "/projects/{project}/blobs/{sha256}/chunks",
    response_model=ChunkListOut,
    responses=errors(
        404,
        422,
        notes={
            404: "No such blob in the project, or (`error.code` `not_chunked`) it is "
            "stored whole: download it with GET .../blobs/{sha256}."
        },
    ),
)
def blob_chunks(
    project: ProjectName, sha256: Sha256, caller: CallerDep, session: SessionDep
) -> ChunkListOut:
    """A chunked blob's chunks, in order, with their sizes and offsets."""
    return ChunkListOut(**chunks.chunk_list(session, caller, project, sha256))


@router.post(
    "/projects/{project}/chunks/fetch",
    response_class=Response,
    responses={
        200: {
            "description": "A chunk pack of the chunks asked, in order, frames as stored.",
            "content": {chunks.PACK_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        **errors(403, 404, 413, 422, 503),
    },
    openapi_extra=NEEDS_TOKEN,
)
def fetch_chunks(
    project: ProjectName, body: ChunksRequest, caller: ReaderDep, session: SessionDep, ctx: CtxDep
) -> Response:
    """Stream the chunks asked as a pack (readers; read tokens may). 404 before anything is
    sent when the project does not hold one of them."""
    wanted = chunks.fetchable_chunks(session, caller, project, body.chunks)
    session.rollback()
    stream = chunks.pack_stream(ctx.blob_store, wanted)
    try:
        first = next(stream, b"")
    except ChunkMissing as lost:
        raise APIError(
            404, "not_found", f"the store has lost chunk {lost.sha256}: send it again"
        ) from None
    return StreamingResponse(itertools.chain((first,), stream), media_type=chunks.PACK_MEDIA_TYPE)


__all__ = ["router"]
