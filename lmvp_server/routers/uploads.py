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
so a newer request for the same upload asks an older one of this process to stop and let go,
the way tusd's lock release requests do, and `HEAD` reports the offset once the file is settled.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import fcntl
import logging
import os
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from lmvp_server.db import session_scope, utcnow
from lmvp_server.deps import Caller, CallerDep, SessionDep, authenticate, load_project
from lmvp_server.errors import APIError, forbidden, not_found
from lmvp_server.models import Blob, Project, ProjectBlob, Role, Upload
from lmvp_server.settings import Settings
from lmvp_server.storage import BlobStore
from lmvp_server.upload_writer import (
    HashCache,
    UploadBusy,
    UploadWriter,
    flock_within,
    flock_within_blocking,
    hash_file_prefix,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])

_ORPHAN_AGE_SECONDS = 3600
TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# How long a request waits for another one to let go of an upload's partial file.
LOCK_WAIT_SECONDS = 5.0
# The sha256 of the blob a finished upload became (an LMVP extension of tus, for uploads that
# declared no hash).
BLOB_SHA256_HEADER = "LMVP-Blob-Sha256"


def _tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **extra}


def tus_error(status: int, code: str, message: str, **headers: str) -> APIError:
    return APIError(status, code, message, headers=_tus_headers(**headers))


def _require_tus_version(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise tus_error(
            412,
            "tus_version",
            f"this server speaks tus {TUS_VERSION}; got {version!r}",
            **{"Tus-Version": TUS_VERSION},
        )


@router.options("/uploads")
@router.options("/uploads/{upload_id}")
def tus_options(request: Request) -> Response:
    """What this tus server supports (tus discovery; no authentication needed)."""
    settings: Settings = request.app.state.settings
    return Response(
        status_code=204,
        headers=_tus_headers(
            **{
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": TUS_EXTENSIONS,
                "Tus-Max-Size": str(settings.max_upload_size),
            }
        ),
    )


@router.post("/uploads", status_code=201)
def create_upload(request: Request, caller: CallerDep, session: SessionDep) -> Response:
    """Declare an upload. Needs `Upload-Length`, and `project` (and optionally `sha256`) in
    `Upload-Metadata`."""
    _require_tus_version(request)
    settings: Settings = request.app.state.settings
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
    path.touch(mode=0o600, exist_ok=False)
    session.add(upload)
    session.commit()
    headers = _tus_headers(
        Location=str(request.url_for("tus_upload", upload_id=upload.id)),
        **{"Upload-Offset": "0"},
        **_local_channel(request),
    )
    if length == 0:
        digest = hash_file_prefix(path, 0).hexdigest()
        _complete_upload(session, request.app.state.blob_store, upload, project, path, digest)
        headers[BLOB_SHA256_HEADER] = digest
    return Response(status_code=201, headers=headers)


@router.head("/uploads/{upload_id}", name="tus_upload")
async def upload_offset(
    upload_id: str, request: Request, caller: CallerDep, session: SessionDep
) -> Response:
    """How many bytes of the upload the server holds: resume from there.

    A request of this process still writing to the upload is asked to stop first (its client
    is resuming, so it is gone), and the offset is read once the partial file is settled.
    """
    _require_tus_version(request)
    upload = await run_in_threadpool(_load_upload, session, caller, upload_id)
    session.close()
    path = partial_path(request.app.state.settings, upload.id)
    _ask_writer_to_let_go(upload.id)
    offset = await _settled_size(path)
    if offset is None:
        raise upload_gone(upload_id)
    headers = _tus_headers(
        **{
            "Upload-Offset": str(offset),
            "Upload-Length": str(upload.length),
            "Cache-Control": "no-store",
        },
        **_local_channel(request),
    )
    if offset == upload.length:
        # Every byte arrived but the server stopped before storing the blob (a crash between
        # the last write and the commit): store it now, or the client would never be done.
        digest = await run_in_threadpool(finish_upload, request.app, upload, path, None)
        if digest:
            headers[BLOB_SHA256_HEADER] = digest
    return Response(status_code=200, headers=headers)


@router.patch("/uploads/{upload_id}", status_code=204)
async def append_to_upload(upload_id: str, request: Request) -> Response:
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
    app = request.app
    upload, _project = await run_in_threadpool(
        authorize_patch, app, request.headers.get("authorization"), upload_id
    )
    path = partial_path(app.state.settings, upload.id)
    cache: HashCache = app.state.hash_cache

    _ask_writer_to_let_go(upload.id)
    writer = UploadWriter(path, offset, None)
    try:
        await writer.open(LOCK_WAIT_SECONDS)
    except UploadBusy:
        raise tus_error(
            423, "upload_busy", "another request is writing to this upload; retry"
        ) from None
    except FileNotFoundError:
        raise upload_gone(upload_id) from None

    try:
        # Under the lock the size is stable: only the lock holder writes.
        held = path.stat().st_size
        if offset != held:
            raise tus_error(
                409,
                "offset_mismatch",
                f"the server holds {held} bytes of this upload; send from Upload-Offset {held}",
                **{"Upload-Offset": str(held)},
            )
        room = upload.length - held
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > room:
            raise tus_error(
                413,
                "past_declared_length",
                f"this PATCH carries {declared} bytes but only {room} remain of the declared "
                f"{upload.length}",
                **{"Upload-Offset": str(held)},
            )
        hasher = cache.take(upload.id, held)
        if hasher is None:
            hasher = await run_in_threadpool(hash_file_prefix, path, held)
        # Known only now, under the lock; the writer reads it when it hashes its first batch.
        writer.hasher = hasher
    except FileNotFoundError:
        writer.close()
        raise upload_gone(upload_id) from None
    except BaseException:
        writer.close()
        raise

    try:
        ending = await _receive_body(request, upload.id, writer, room)
        if ending is _BodyEnd.overran:
            await writer.truncate_to_start()
            raise tus_error(
                413,
                "past_declared_length",
                f"the body goes past the declared length of {upload.length} bytes",
                **{"Upload-Offset": str(held)},
            )
        new_offset = await writer.finish()
    except OSError as exc:
        # A write failed: this request's bytes are dropped, and with them the doubt about
        # which of them reached the file. What earlier requests stored stays.
        await writer.abandon()
        cache.drop(upload.id)
        if exc.errno in DISK_FULL:
            await run_in_threadpool(drop_upload, app, upload.id)
            raise disk_full() from None
        raise
    if ending is not _BodyEnd.complete:
        cache.put(upload.id, new_offset, writer.hasher)
        log.info(
            "upload %s: %s at %d of %d bytes", upload.id, ending.value, new_offset, upload.length
        )
        if ending is _BodyEnd.superseded:
            raise tus_error(
                409,
                "upload_superseded",
                "a newer request for this upload took over; ask HEAD for the offset",
                **{"Upload-Offset": str(new_offset)},
            )
        return Response(status_code=204)

    headers = _tus_headers(**{"Upload-Offset": str(new_offset)})
    if new_offset < upload.length:
        cache.put(upload.id, new_offset, writer.hasher)
    else:
        digest = writer.hasher.hexdigest()
        stored = await run_in_threadpool(finish_upload, app, upload, path, digest)
        if stored:
            headers[BLOB_SHA256_HEADER] = stored
    return Response(status_code=204, headers=headers)


@router.delete("/uploads/{upload_id}", status_code=204)
def terminate_upload(
    upload_id: str, request: Request, caller: CallerDep, session: SessionDep
) -> Response:
    """Abort an upload and free its bytes (tus termination)."""
    _require_tus_version(request)
    upload = _load_upload(session, caller, upload_id)
    session.delete(upload)
    session.commit()
    partial_path(request.app.state.settings, upload.id).unlink(missing_ok=True)
    request.app.state.hash_cache.drop(upload.id)
    return Response(status_code=204, headers=_tus_headers())


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


def remove_stale_uploads(session: Session, settings: Settings) -> int:
    """Delete uploads untouched for `upload_expiry_days`, and partial files nobody owns."""
    cutoff = utcnow() - timedelta(days=settings.upload_expiry_days)
    removed = 0
    known = set()
    for upload in session.scalars(select(Upload)):
        path = partial_path(settings, upload.id)
        mtime = path.stat().st_mtime if path.exists() else 0
        if mtime < cutoff.timestamp():
            session.delete(upload)
            path.unlink(missing_ok=True)
            removed += 1
        else:
            known.add(upload.id)
    session.commit()
    # A file without a row may belong to an upload another worker is creating right now (the
    # file is made just before its row commits): only old ones are orphans.
    orphan_before = time.time() - _ORPHAN_AGE_SECONDS
    for path in settings.upload_dir.iterdir():
        if path.name not in known and path.stat().st_mtime < orphan_before:
            path.unlink(missing_ok=True)
    return removed


# --- helpers ------------------------------------------------------------------------------------


class _BodyEnd(StrEnum):
    """How the reading of a PATCH body ended."""

    complete = "body complete"
    overran = "body past the declared length"
    disconnected = "connection dropped"
    superseded = "superseded by a newer request"


@dataclass
class _ActiveWrite:
    """A PATCH of this process streaming into an upload, which a newer request may stop."""

    task: asyncio.Task[Any]
    receiving: bool = False
    let_go: bool = False


# Upload id → the request of this process writing to it. Only touched on the event loop.
_active_writes: dict[str, _ActiveWrite] = {}


def _ask_writer_to_let_go(upload_id: str) -> None:
    """Ask the request of this process writing to the upload, if any, to stop.

    Only a request waiting for body bytes is interrupted at once; one busy writing stops before
    it reads more. So nothing it received is lost half-written. A request in another worker
    process can't be reached: the caller then waits for the lock, and may get 423.
    """
    active = _active_writes.get(upload_id)
    if active is None or active.task is asyncio.current_task():
        return
    active.let_go = True
    if active.receiving:
        active.task.cancel()


async def _receive_body(
    request: Request, upload_id: str, writer: UploadWriter, room: int
) -> _BodyEnd:
    """Feed the request body to `writer` until it ends, overruns `room`, the client goes away,
    or a newer request for the upload asks this one to let go."""
    task = asyncio.current_task()
    assert task is not None
    active = _ActiveWrite(task)
    _active_writes[upload_id] = active
    chunks = request.stream()
    try:
        while not active.let_go:
            active.receiving = True
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
        return _BodyEnd.superseded
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
        return _BodyEnd.superseded
    except BaseException:
        await writer.drain()
        writer.close()
        raise
    finally:
        if _active_writes.get(upload_id) is active:
            del _active_writes[upload_id]


async def _settled_size(path: Path) -> int | None:
    """The partial file's size once no request is writing to it (or, if one still is after
    `LOCK_WAIT_SECONDS`, its size now); None if the file is gone (finished or aborted)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        await flock_within(fd, fcntl.LOCK_SH, LOCK_WAIT_SECONDS)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    # Completion moves the file into the blob store: then the upload is no more.
    return size if path.exists() else None


def _lock_partial_file(path: Path) -> int:
    """An fd holding the exclusive lock on the partial file (waits for the current holder)."""
    fd = os.open(path, os.O_RDONLY)
    if not flock_within_blocking(fd, fcntl.LOCK_EX, LOCK_WAIT_SECONDS):
        os.close(fd)
        raise tus_error(423, "upload_busy", "another request is writing to this upload; retry")
    return fd


DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full() -> APIError:
    """The answer when the server's disk filled up during an append. The upload is dropped
    with it (`drop_upload`): its partial file would keep the disk full for everyone."""
    return tus_error(
        507,
        "insufficient_storage",
        "the server's disk is full, so this upload was dropped: free space on the server (or "
        "ask its admin to), then upload again; versions already stored are intact",
    )


def drop_upload(app: Any, upload_id: str) -> None:
    """Forget an upload and free its bytes (as tus termination does). The bytes go first: on
    a full disk the database needs the room to record it (and a descriptor still open on the
    file would keep an unlinked file's blocks)."""
    path = partial_path(app.state.settings, upload_id)
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)
    path.unlink(missing_ok=True)
    app.state.hash_cache.drop(upload_id)
    with session_scope(app.state.sessionmaker) as session:
        upload = session.get(Upload, upload_id)
        if upload is not None:
            session.delete(upload)
            session.commit()


def _local_channel(request: Request) -> dict[str, str]:
    """The header naming the socket on which a client on this machine may hand over the file
    instead of sending its bytes (see `lmvp_server.local_uploads`)."""
    return request.app.state.local_uploads.headers_for(  # type: ignore[no-any-return]
        request.client.host if request.client else None
    )


def partial_path(settings: Settings, upload_id: str) -> Path:
    return settings.upload_dir / upload_id


def upload_gone(upload_id: str) -> APIError:
    return tus_error(
        404, "not_found", f"upload {upload_id} not found: it finished, expired or was aborted"
    )


def _header_int(request: Request, name: str) -> int:
    value = request.headers.get(name)
    # isascii: str.isdigit() also accepts digits such as '²' that int() refuses.
    if value is None or not (value.isascii() and value.isdigit()):
        raise tus_error(
            400, "invalid_header", f"{name} must be a non-negative integer, got {value!r}"
        )
    return int(value)


def _load_upload(session: Session, caller: Caller, upload_id: str) -> Upload:
    upload = session.get(Upload, upload_id) if len(upload_id) == 32 else None
    if upload is None or upload.user_id != caller.user.id:
        raise upload_gone(upload_id)
    return upload


def authorize_patch(app: Any, authorization: str | None, upload_id: str) -> tuple[Upload, Project]:
    with session_scope(app.state.sessionmaker) as session:
        caller = authenticate(session, authorization)
        if not caller.can_write:
            raise forbidden("this token is read-only; create a write token to upload")
        upload = _load_upload(session, caller, upload_id)
        project = session.get(Project, upload.project_id)
        if project is None:
            raise not_found(f"upload {upload_id}")
        # Still a contributor? Membership may have changed since the upload was created.
        load_project(session, caller, project.name, Role.contributor)
        return upload, project


def finish_upload(app: Any, upload: Upload, path: Path, digest: str | None) -> str | None:
    """Store a fully received upload as a blob, holding the partial file's lock so that two
    requests that both saw the last byte (a PATCH and a HEAD) store it once. `digest` is the
    running hash of the bytes, or None to hash the file again. Returns the stored blob's sha256,
    or None when another request stored it a moment ago."""
    try:
        fd = _lock_partial_file(path)
    except FileNotFoundError:
        fd = -1
    try:
        with session_scope(app.state.sessionmaker) as session:
            current = session.get(Upload, upload.id) if fd >= 0 else None
            if current is None or not path.exists():
                # Another request stored it a moment ago, or it was aborted.
                if (
                    not upload.sha256
                    or session.get(ProjectBlob, (upload.project_id, upload.sha256)) is None
                ):
                    raise upload_gone(upload.id)
                return None
            project = session.get(Project, current.project_id)
            if project is None:
                raise upload_gone(upload.id)
            if digest is None:
                digest = hash_file_prefix(path, path.stat().st_size).hexdigest()
            _complete_upload(session, app.state.blob_store, current, project, path, digest)
            return digest
    finally:
        if fd >= 0:
            os.close(fd)


def _complete_upload(
    session: Session, store: BlobStore, upload: Upload, project: Project, path: Path, digest: str
) -> None:
    """Turn a fully received upload into a blob of its project, if its hash is the declared one
    (an upload that declared none is stored under the hash of its bytes)."""
    size = path.stat().st_size
    if (upload.sha256 and digest != upload.sha256) or size != upload.length:
        session.delete(upload)
        session.commit()
        path.unlink(missing_ok=True)
        raise tus_error(
            460,
            "checksum_mismatch",
            f"the bytes received hash to {digest}, not the declared {upload.sha256}: the file "
            "changed while it was sent, or was damaged on the way; nothing was stored: upload "
            "again",
        )
    store.adopt(path, digest)
    _record_blob(session, upload.id, project.id, digest, size)
    log.info("upload %s stored as blob %s (%d bytes) in %s", upload.id, digest, size, project.name)


def _record_blob(session: Session, upload_id: str, project_id: int, digest: str, size: int) -> None:
    """In one transaction: the upload is over, the blob exists, the project holds it.

    Two uploads of the same bytes may finish at the same moment; the one that loses the race to
    insert the blob's rows rolls back and tries again, and then finds them.
    """
    for attempt in range(3):
        try:
            upload = session.get(Upload, upload_id)
            if upload is not None:
                session.delete(upload)
            if session.get(Blob, digest) is None:
                session.add(Blob(sha256=digest, size=size))
                session.flush()
            if session.get(ProjectBlob, (project_id, digest)) is None:
                session.add(ProjectBlob(project_id=project_id, sha256=digest))
            session.commit()
            return
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                raise


__all__ = [
    "DISK_FULL",
    "LOCK_WAIT_SECONDS",
    "authorize_patch",
    "disk_full",
    "drop_upload",
    "finish_upload",
    "parse_upload_metadata",
    "partial_path",
    "remove_stale_uploads",
    "router",
    "tus_error",
    "upload_gone",
]
