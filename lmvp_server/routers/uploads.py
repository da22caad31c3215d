"""Resumable uploads over the tus 1.0 protocol (core, creation, termination).

`POST /uploads` declares a file (length, and in `Upload-Metadata` its project and, usually, its
sha256); `PATCH` appends bytes at `Upload-Offset`; `HEAD` tells how many bytes the server holds,
which is where a client resumes after a dropped connection or a server restart. When the last
byte arrives the upload becomes a blob of its project, but only if its sha256 is the declared
one. Any standard tus client (tuspy, Uppy) can upload.

The sha256 may be left out: a client that starts sending a large file while it is still hashing
it learns the stored blob's hash from the `LMVP-Blob-Sha256` header of the last PATCH and compares
it with its own (the blob is stored under the hash of the bytes the server received, so a wrong
or late claim can never put bytes under another file's name).

A client on the server's own machine may append by handing over the file's descriptor instead
of a body (`lmvp_server.local_uploads`); create and `HEAD` answers to such a client name the
socket in `LMVP-Local-Uploads`.

One request at a time writes to an upload: it holds an exclusive `flock` on the partial file,
and the offset is checked under that lock. A client whose connection died may resume before the
server has noticed the old request is gone (a half-open connection can stay silent for hours);
so a newer request for the same upload, on any worker, asks an older one to stop and let go,
the way tusd's lock release requests do (`lmvp_server.upload_staging`), and `HEAD` reports the
offset once the file is settled. A PATCH whose body stops arriving for `upload_stall_seconds`
ends by itself (408), keeping the bytes it received. With blobs in an S3-compatible store the
bytes wait in the store as a multipart upload and the writer holds a lease in the database
(`lmvp_server.upload_staging_s3`), so a worker on any host continues any upload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fcntl
import hashlib
import logging
import os
import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from lmvp_server.context import CtxDep, ServerContext
from lmvp_server.db import session_scope
from lmvp_server.deps import CallerDep, SessionDep, load_project
from lmvp_server.errors import error_response
from lmvp_server.models import Role, Upload
from lmvp_server.numbers import parse_count
from lmvp_server.openapi import NEEDS_TOKEN, errors, tus_request, tus_response
from lmvp_server.sha256_state import SavableSha256, StateMismatch
from lmvp_server.tus import TUS_VERSION, tus_error, tus_error_for, tus_headers
from lmvp_server.upload_errors import (
    ChecksumMismatch,
    OffsetMismatch,
    PastDeclaredLength,
    UploadError,
    UploadGone,
)
from lmvp_server.upload_lifecycle import (
    DISK_FULL,
    complete_upload,
    finish_upload,
    load_own_upload,
)
from lmvp_server.upload_session import AppendSession, authorize_append
from lmvp_server.upload_staging import (
    LET_GO_CHECK_SECONDS,
    clear_let_go,
    hold,
    hold_wait_seconds,
    let_go_asked,
    partial_path,
)
from lmvp_server.upload_staging_s3 import (
    UNKNOWN_DIGEST,
    S3Staging,
    S3Writer,
    Staged,
    lease_keeper,
    staging_for,
)
from lmvp_server.upload_writer import UploadWriter, hash_file_prefix

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])

TUS_EXTENSIONS = "creation,termination"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The sha256 of the blob a finished upload became (an LMVP extension of tus, for uploads that
# declared no hash).
BLOB_SHA256_HEADER = "LMVP-Blob-Sha256"


def _require_tus_version(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise tus_error(
            412,
            "tus_version",
            f"this server speaks tus {TUS_VERSION}; got {version!r}",
            **{"Tus-Version": TUS_VERSION},
        )


_DISCOVERY = tus_response(
    204,
    "What this server supports.",
    always=("Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size"),
)
_TUS_ERROR_NOTES = {
    400: "A tus header is malformed: `Upload-Length` or `Upload-Offset` not plain digits, "
    "`Upload-Metadata` not `key base64` pairs or without `project`, a `sha256` that is not "
    "64 hex digits, or `Upload-Defer-Length` (not supported).",
    404: "No such upload of the caller's (it finished, expired or was aborted), or no such "
    "project.",
}


@router.options("/uploads", status_code=204, responses=_DISCOVERY, response_class=Response)
def tus_options(ctx: CtxDep) -> Response:
    """What this tus server supports (tus discovery; no authentication needed)."""
    settings = ctx.settings
    return Response(
        status_code=204,
        headers=tus_headers(
            **{
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": TUS_EXTENSIONS,
                "Tus-Max-Size": str(settings.max_upload_size),
            }
        ),
    )


@router.options(
    "/uploads/{upload_id}", status_code=204, responses=_DISCOVERY, response_class=Response
)
def tus_upload_options(upload_id: str, ctx: CtxDep) -> Response:
    """What this tus server supports, asked at an upload's URL (no authentication needed)."""
    return tus_options(ctx)


@router.post(
    "/uploads",
    status_code=201,
    response_class=Response,
    responses={
        **tus_response(
            201,
            "The upload exists; send its bytes to `Location`. A zero-length upload is complete "
            "at once (`LMVP-Blob-Sha256`).",
            always=("Tus-Resumable", "Location", "Upload-Offset"),
            sometimes=("LMVP-Blob-Sha256", "LMVP-Local-Uploads"),
        ),
        **errors(
            400,
            403,
            404,
            412,
            413,
            460,
            notes={
                **_TUS_ERROR_NOTES,
                403: "The token is read-only, or the caller is a viewer of the project.",
                413: "`Upload-Length` is over the server's `Tus-Max-Size`.",
            },
        ),
    },
    openapi_extra=tus_request("Tus-Resumable", "Upload-Length", "Upload-Metadata"),
)
def create_upload(
    request: Request, ctx: CtxDep, caller: CallerDep, session: SessionDep
) -> Response:
    """Declare an upload. Needs `Upload-Length`, and `project` (and optionally `sha256`) in
    `Upload-Metadata`."""
    _require_tus_version(request)
    settings = ctx.settings
    if request.headers.get("upload-defer-length"):
        raise tus_error(
            400, "defer_length", "Upload-Defer-Length is not supported: send Upload-Length"
        )
    length = _header_int(request, "upload-length")
    if length > settings.max_upload_size:
        raise tus_error(
            413,
            "too_large",
            f"the file is {length} bytes; this server takes at most {settings.max_upload_size}",
        )
    meta = parse_upload_metadata(request.headers.get("upload-metadata", ""))
    project_name = meta.get("project", "")
    sha256 = meta.get("sha256", "").lower()
    if not project_name:
        raise tus_error(400, "missing_project", "Upload-Metadata must name the 'project'")
    if sha256 and not _SHA256.match(sha256):
        raise tus_error(
            400,
            "invalid_sha256",
            "Upload-Metadata 'sha256' must be the file's sha256 as 64 hex digits (or left out)",
        )
    project, _ = load_project(session, caller, project_name, Role.contributor)
    upload = Upload(
        id=uuid.uuid4().hex,
        project_id=project.id,
        user_id=caller.user.id,
        sha256=sha256,
        length=length,
        filename=meta.get("filename", meta.get("name", ""))[:1024],
    )
    path = partial_path(settings, upload.id)
    staging = _staging(ctx)
    if staging is not None and length > 0:
        staging.create(upload)  # in the object store; a zero-length upload completes below
    else:
        path.touch(mode=0o600, exist_ok=False)
    session.add(upload)
    session.commit()
    headers = tus_headers(
        Location=str(request.url_for("tus_upload", upload_id=upload.id)),
        **{"Upload-Offset": "0"},
        **_local_channel(request, ctx),
    )
    if length == 0:
        digest = hash_file_prefix(path, 0).hexdigest()
        complete_upload(session, ctx.blob_store, upload, project, path, digest)
        headers[BLOB_SHA256_HEADER] = digest
    return Response(status_code=201, headers=headers)


@router.head(
    "/uploads/{upload_id}",
    name="tus_upload",
    response_class=Response,
    responses={
        **tus_response(
            200,
            "How many bytes the server holds: resume from `Upload-Offset`. Once all arrived, "
            "the upload is stored and `LMVP-Blob-Sha256` names the blob.",
            always=("Tus-Resumable", "Upload-Offset", "Upload-Length", "Cache-Control"),
            sometimes=("LMVP-Blob-Sha256", "LMVP-Local-Uploads"),
        ),
        **errors(404, 412, 423, 460, notes=_TUS_ERROR_NOTES),
    },
    openapi_extra=tus_request("Tus-Resumable"),
)
async def upload_offset(
    upload_id: str, request: Request, ctx: CtxDep, caller: CallerDep, session: SessionDep
) -> Response:
    """How many bytes of the upload the server holds: resume from there.

    A request of any worker still writing to the upload is asked to stop first (its client
    is resuming, so it is gone), and the offset is read once the partial file is settled.
    """
    _require_tus_version(request)
    upload = await run_in_threadpool(load_own_upload, session, caller, upload_id)
    session.close()
    path = partial_path(ctx.settings, upload.id)
    _ask_writer_to_let_go(upload.id)
    staging = _staging(ctx)
    if staging is not None:
        staged = await run_in_threadpool(
            staging.settled, upload.id, hold_wait_seconds(ctx.settings)
        )
        offset = None if staged is None else staged.staged
    else:
        offset = await _settled_size(path, hold_wait_seconds(ctx.settings))
    if offset is None:
        raise UploadGone(upload_id)
    headers = tus_headers(
        **{
            "Upload-Offset": str(offset),
            "Upload-Length": str(upload.length),
            "Cache-Control": "no-store",
        },
        **_local_channel(request, ctx),
    )
    if offset == upload.length:
        # Every byte arrived but the server stopped before storing the blob (a crash between
        # the last write and the commit): store it now, or the client would never be done.
        if staging is not None:
            digest = await run_in_threadpool(_finish_staged, ctx, staging, upload)
        else:
            digest = await run_in_threadpool(finish_upload, ctx, upload, path, None)
        if digest:
            headers[BLOB_SHA256_HEADER] = digest
    return Response(status_code=200, headers=headers)


@router.patch(
    "/uploads/{upload_id}",
    status_code=204,
    response_class=Response,
    responses={
        **tus_response(
            204,
            "The body was appended. After the last byte the upload is stored as a blob and "
            "`LMVP-Blob-Sha256` names it.",
            always=("Tus-Resumable", "Upload-Offset"),
            sometimes=("LMVP-Blob-Sha256",),
        ),
        **errors(
            400,
            403,
            404,
            408,
            409,
            412,
            413,
            415,
            423,
            460,
            507,
            notes={
                **_TUS_ERROR_NOTES,
                408: "No body byte arrived for the server's stall time: the bytes received "
                "before are kept; resume from `Upload-Offset`.",
                409: "`Upload-Offset` is not the offset the server holds (its `Upload-Offset` "
                "header is), or a newer request for this upload took over.",
                413: "The body goes past the upload's declared length.",
                415: "The body must be `application/offset+octet-stream`.",
            },
        ),
    },
    openapi_extra={**NEEDS_TOKEN, **tus_request("Tus-Resumable", "Upload-Offset", body=True)},
)
async def append_to_upload(upload_id: str, request: Request, ctx: CtxDep) -> Response:
    """Append the body at `Upload-Offset`. Bytes received before a dropped connection are kept."""
    _require_tus_version(request)
    if (
        request.headers.get("content-type", "").split(";")[0].strip()
        != "application/offset+octet-stream"
    ):
        raise tus_error(
            415, "unsupported_media_type", "PATCH bodies must be application/offset+octet-stream"
        )
    offset = _header_int(request, "upload-offset")
    upload = await run_in_threadpool(
        authorize_append, ctx, request.headers.get("authorization"), upload_id
    )
    _ask_writer_to_let_go(upload.id)
    staging = _staging(ctx)
    if staging is not None:
        return await _append_to_staged(request, ctx, staging, upload, offset)
    append = AppendSession.open(ctx, upload)
    try:
        await append.lock()
        held = append.begin(offset)
        declared = request.headers.get("content-length")
        if declared is not None:
            append.check_fits(parse_count(declared, "Content-Length", headers=tus_headers()))
        hasher = append.cached_hasher() or await run_in_threadpool(append.rehash)
        return await _append_body(
            request, ctx, append, UploadWriter(os.dup(append.fd), held, hasher)
        )
    finally:
        append.close()


async def _append_body(
    request: Request, ctx: ServerContext, append: AppendSession, writer: UploadWriter
) -> Response:
    """Write the request body through `writer`, then keep it (and store the blob once the
    last byte is in) or cut it back."""
    upload = append.upload
    try:
        ending = await _receive_body(
            request,
            upload.id,
            lambda: let_go_asked(append.path),
            writer,
            append.room,
            ctx.settings.upload_stall_seconds,
        )
        if ending is _BodyEnd.overran:
            await writer.discard()
            await writer.aclose()
            await run_in_threadpool(append.cut_back)
            raise PastDeclaredLength(
                append.held, f"the body goes past the declared length of {upload.length} bytes"
            )
        await writer.drain()
        await writer.aclose()
    except OSError as exc:
        # A write failed: this request's bytes are dropped, and with them the doubt about
        # which of them reached the file. What earlier requests stored stays.
        await writer.abandon()
        await writer.aclose()
        await run_in_threadpool(append.cut_back)
        ctx.hash_cache.drop(upload.id)
        if exc.errno in DISK_FULL:
            raise await run_in_threadpool(append.drop) from None
        raise
    finally:
        writer.close()
    end = writer.offset
    kept = await run_in_threadpool(append.keep, end, writer.hasher)
    if kept < end:  # the bytes could not be made durable: a full disk
        raise await run_in_threadpool(append.drop)
    if ending is not _BodyEnd.complete:
        return _ended_early(upload, ending, kept, ctx)
    headers = tus_headers(**{"Upload-Offset": str(kept)})
    stored = await run_in_threadpool(append.complete, kept, writer.hasher)
    if stored:
        headers[BLOB_SHA256_HEADER] = stored
    return Response(status_code=204, headers=headers)


@router.delete(
    "/uploads/{upload_id}",
    status_code=204,
    response_class=Response,
    responses={
        **tus_response(204, "The upload is gone with its bytes.", always=("Tus-Resumable",)),
        **errors(403, 404, 412, notes=_TUS_ERROR_NOTES),
    },
    openapi_extra=tus_request("Tus-Resumable"),
)
def terminate_upload(
    upload_id: str, request: Request, ctx: CtxDep, caller: CallerDep, session: SessionDep
) -> Response:
    """Abort an upload and free its bytes (tus termination)."""
    _require_tus_version(request)
    upload = load_own_upload(session, caller, upload_id)
    multipart_id, multipart_key = upload.multipart_id, upload.multipart_key
    session.delete(upload)
    session.commit()
    staging = _staging(ctx)
    if staging is not None:
        staging.discard(upload.id, multipart_id, multipart_key)
    path = partial_path(ctx.settings, upload.id)
    path.unlink(missing_ok=True)
    clear_let_go(path)
    ctx.hash_cache.drop(upload.id)
    return Response(status_code=204, headers=tus_headers())


def _staging(ctx: ServerContext) -> S3Staging | None:
    """The object store's staging, when blobs are in one; None for the local partial files."""
    return staging_for(ctx.blob_store, ctx.sessions, ctx.settings)


async def _append_to_staged(
    request: Request, ctx: ServerContext, staging: S3Staging, upload: Upload, offset: int
) -> Response:
    """A PATCH into the object store's staging (`lmvp_server.upload_staging_s3`): take the
    upload's lease, check the offset, send the body in parts, keep the rest as the tail, and
    store the blob once the last byte is in."""
    lease = await run_in_threadpool(staging.acquire, upload.id, hold_wait_seconds(ctx.settings))
    lost = False
    writer: S3Writer | None = None
    keeper: asyncio.Task[None] | None = None
    try:
        before = await run_in_threadpool(staging.state, upload.id)
        if offset != before.staged:
            raise OffsetMismatch(before.staged)
        room = upload.length - before.staged
        declared = request.headers.get("content-length")
        if declared is not None:
            count = parse_count(declared, "Content-Length", headers=tus_headers())
            if count > room:
                raise PastDeclaredLength(
                    before.staged,
                    f"this PATCH carries {count} bytes but only {room} remain of the declared "
                    f"{upload.length}",
                )
        hasher = ctx.hash_cache.take(upload.id, before.staged)
        tail = b""
        if before.tail_key:
            tail = await run_in_threadpool(staging.get_tail, before.tail_key, before.tail_size)
        if before.multipart_key is not None:
            if not isinstance(hasher, SavableSha256):
                # Taken over: continue the running hash saved with the last part, over the
                # bytes of the tail read back just now.
                hasher = await _resumed_hasher(ctx, staging, upload, before, tail)
        elif hasher is None and before.staged == 0:
            hasher = hashlib.sha256()
        writer = S3Writer(staging, lease, before, hasher, tail)

        def let_go() -> None:
            nonlocal lost
            lost = True

        keeper = lease_keeper(staging, lease, let_go)
        ending = await _receive_body(
            request, upload.id, lambda: lost, writer, room, ctx.settings.upload_stall_seconds
        )
        keeper.cancel()
        if ending is _BodyEnd.overran:
            await writer.discard()
            await run_in_threadpool(staging.rollback_to, lease, before)
            ctx.hash_cache.drop(upload.id)
            raise PastDeclaredLength(
                before.staged, f"the body goes past the declared length of {upload.length} bytes"
            )
        await writer.drain()
        kept = await run_in_threadpool(writer.finish, writer.offset == upload.length)
        if writer.hasher is not None:
            ctx.hash_cache.put(upload.id, kept, writer.hasher)
        else:
            ctx.hash_cache.drop(upload.id)
        if ending is not _BodyEnd.complete or kept < upload.length:
            return _ended_early(upload, ending, kept, ctx)
        headers = tus_headers(**{"Upload-Offset": str(kept)})
        running = writer.hasher
        ctx.hash_cache.drop(upload.id)
        stored = await run_in_threadpool(
            staging.complete, upload.id, running.hexdigest() if running is not None else None
        )
        if stored:
            headers[BLOB_SHA256_HEADER] = stored
        return Response(status_code=204, headers=headers)
    finally:
        if keeper is not None:
            keeper.cancel()
        if writer is not None:
            writer.close()
        await run_in_threadpool(staging.release, lease)


async def _resumed_hasher(
    ctx: ServerContext, staging: S3Staging, upload: Upload, before: Staged, tail: bytes
) -> SavableSha256:
    """The running hash of an upload sent straight to its blob's key that another request
    (of any worker) began: the one saved with its last part, fed the tail's bytes. If none
    can be continued, its bytes can never be verified: the upload is dropped."""
    try:
        hasher = await run_in_threadpool(
            staging.resumed_hasher, upload.id, before.staged - before.tail_size
        )
    except (StateMismatch, RuntimeError) as exc:
        log.warning("upload %s cannot be verified, dropping it: %s", upload.id, exc)
        await run_in_threadpool(
            staging.discard, upload.id, before.multipart_id, before.multipart_key
        )
        await run_in_threadpool(_forget_upload, ctx, upload.id)
        raise ChecksumMismatch(UNKNOWN_DIGEST, upload.sha256) from None
    hasher.update(tail)
    return hasher


def _forget_upload(ctx: ServerContext, upload_id: str) -> None:
    with session_scope(ctx.sessions) as session:
        gone = session.get(Upload, upload_id)
        if gone is not None:
            session.delete(gone)
            session.commit()


def _ended_early(upload: Upload, ending: _BodyEnd, kept: int, ctx: ServerContext) -> Response:
    """The answer to a PATCH whose body ended before the upload's last byte: 204 when the
    body was all there was (or its client is gone), or the error that says why it stopped."""
    if ending is not _BodyEnd.complete:
        log.info("upload %s: %s at %d of %d bytes", upload.id, ending.value, kept, upload.length)
    if ending is _BodyEnd.superseded:
        raise tus_error(
            409,
            "upload_superseded",
            "a newer request for this upload took over; ask HEAD for the offset",
            **{"Upload-Offset": str(kept)},
        )
    if ending is _BodyEnd.stalled:
        raise tus_error(
            408,
            "upload_stalled",
            f"no bytes arrived for {ctx.settings.upload_stall_seconds:g} s; the server kept "
            f"{kept} bytes: resume from Upload-Offset {kept}",
            **{"Upload-Offset": str(kept), "Connection": "close"},
        )
    if ending is _BodyEnd.complete:
        return Response(status_code=204, headers=tus_headers(**{"Upload-Offset": str(kept)}))
    return Response(status_code=204)


def _finish_staged(ctx: ServerContext, staging: S3Staging, upload: Upload) -> str | None:
    """Store a fully staged upload whose PATCH stopped before storing it (under its lease)."""
    lease = staging.acquire(upload.id, hold_wait_seconds(ctx.settings))
    try:
        running = ctx.hash_cache.take(upload.id, upload.length)
        return staging.complete(upload.id, running.hexdigest() if running is not None else None)
    finally:
        staging.release(lease)


def parse_upload_metadata(header: str) -> dict[str, str]:
    """Decode tus `Upload-Metadata`: comma-separated `key base64(value)` pairs."""
    out: dict[str, str] = {}
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, encoded = pair.partition(" ")
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise tus_error(
                400, "invalid_metadata", f"Upload-Metadata value for {key!r} is not base64 UTF-8"
            ) from None
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise tus_error(
                400,
                "invalid_metadata",
                f"Upload-Metadata value for {key!r} contains a control character",
            )
        out[key] = value
    return out


# --- helpers ------------------------------------------------------------------------------------


class _BodyEnd(StrEnum):
    """How the reading of a PATCH body ended."""

    complete = "body complete"
    overran = "body past the declared length"
    disconnected = "connection dropped"
    superseded = "superseded by a newer request"
    stalled = "no bytes for the stall time"


@dataclass
class _ActiveWrite:
    """A PATCH of this process streaming into an upload, which a newer request may stop, and
    which stops by itself once its body stalls."""

    task: asyncio.Task[Any]
    # Whether a request of another process asked this one to let go (looked at every second).
    asked: Callable[[], bool]
    stall_seconds: float
    receiving: bool = False
    # When the current wait for the next body chunk began (the loop's clock).
    waiting_since: float = 0.0
    let_go: bool = False
    reason: _BodyEnd = _BodyEnd.superseded
    watchdog: asyncio.TimerHandle | None = None

    def stop(self, reason: _BodyEnd) -> None:
        """Stop before reading more: at once if waiting for body bytes (nothing received is
        lost half-written), else before the next read."""
        if self.let_go:
            return
        self.let_go, self.reason = True, reason
        if self.receiving:
            self.task.cancel()

    def watch(self) -> None:
        """Once a second: stop if the body stalled or a request of another process asked
        this one to let go (`lmvp_server.upload_staging`); else look again later."""
        loop = asyncio.get_running_loop()
        if self.let_go:
            return
        if self.receiving and loop.time() - self.waiting_since >= self.stall_seconds:
            self.stop(_BodyEnd.stalled)
        elif self.asked():
            self.stop(_BodyEnd.superseded)
        else:
            delay = LET_GO_CHECK_SECONDS
            if self.receiving:
                left = self.waiting_since + self.stall_seconds - loop.time()
                delay = max(0.0, min(delay, left))
            self.watchdog = loop.call_later(delay, self.watch)


# Upload id → the request of this process writing to it. Only touched on the event loop.
_active_writes: dict[str, _ActiveWrite] = {}


def _ask_writer_to_let_go(upload_id: str) -> None:
    """Ask the request of this process writing to the upload, if any, to stop.

    Only a request waiting for body bytes is interrupted at once; one busy writing stops before
    it reads more. So nothing it received is lost half-written. A request in another worker
    process is asked through the let-go signal by the caller's wait for the lock
    (`lmvp_server.upload_staging.hold`).
    """
    active = _active_writes.get(upload_id)
    if active is None or active.task is asyncio.current_task():
        return
    active.stop(_BodyEnd.superseded)


async def _receive_body(
    request: Request,
    upload_id: str,
    asked: Callable[[], bool],
    writer: UploadWriter | S3Writer,
    room: int,
    stall_seconds: float,
) -> _BodyEnd:
    """Feed the request body to `writer` until it ends, overruns `room`, the client goes away,
    no byte comes for `stall_seconds`, or a newer request for the upload asks this one to let
    go."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    active = _ActiveWrite(task, asked, stall_seconds)
    _active_writes[upload_id] = active
    active.watchdog = loop.call_later(LET_GO_CHECK_SECONDS, active.watch)
    chunks = request.stream()
    try:
        while not active.let_go:
            active.receiving = True
            active.waiting_since = loop.time()
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return _BodyEnd.complete
            finally:
                active.receiving = False
            if writer.received + len(chunk) > room:
                return _BodyEnd.overran
            if chunk:
                await writer.feed(chunk)
        return active.reason
    except ClientDisconnect:
        return _BodyEnd.disconnected
    except OSError:  # a write failed: the caller cuts the file back
        raise
    except asyncio.CancelledError:
        if not active.let_go:
            # Shutdown, not a newer request: keep what reached the disk, then go.
            await writer.drain()
            writer.close()
            raise
        task.uncancel()
        return active.reason
    except BaseException:
        await writer.drain()
        writer.close()
        raise
    finally:
        if active.watchdog is not None:
            active.watchdog.cancel()
        if _active_writes.get(upload_id) is active:
            del _active_writes[upload_id]


async def _settled_size(path: Path, seconds: float) -> int | None:
    """The partial file's size once no request is writing to it (a writer of any process is
    asked to let go; if one still writes after `seconds`, its size now); None if the file is
    gone (finished or aborted)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        await hold(path, fd, fcntl.LOCK_SH, seconds)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    # Completion moves the file into the blob store: then the upload is no more.
    return size if path.exists() else None


def _local_channel(request: Request, ctx: ServerContext) -> dict[str, str]:
    """The header naming the socket on which a client on this machine may hand over the file
    instead of sending its bytes (see `lmvp_server.local_uploads`). Not with the object
    store's staging: the socket copies into a partial file on this host."""
    if _staging(ctx) is not None:
        return {}
    return ctx.local_uploads.headers_for(request.client.host if request.client else None)


async def answer_upload_error(_request: Request, exc: Exception) -> JSONResponse:
    """The tus answer to an upload's domain error (installed as the app's handler for
    `UploadError`)."""
    assert isinstance(exc, UploadError)
    return error_response(tus_error_for(exc))


def _header_int(request: Request, name: str) -> int:
    return parse_count(request.headers.get(name), name, headers=tus_headers())


__all__ = ["BLOB_SHA256_HEADER", "answer_upload_error", "parse_upload_metadata", "router"]
