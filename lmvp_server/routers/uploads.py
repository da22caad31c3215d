"""Resumable uploads over the tus 1.0 protocol (core, creation, termination).

`POST /uploads` declares a file (length, and in `Upload-Metadata` its project and sha256);
`PATCH` appends bytes at `Upload-Offset`; `HEAD` tells how many bytes the server holds, which is
where a client resumes after a dropped connection or a server restart. When the last byte
arrives the upload becomes a blob of its project, but only if its sha256 is the declared one.
Any standard tus client (tuspy, Uppy) can upload.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import uuid
from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from lmvp_server.db import session_scope, utcnow
from lmvp_server.deps import Caller, CallerDep, SessionDep, authenticate, load_project
from lmvp_server.errors import APIError, forbidden, not_found
from lmvp_server.models import Blob, Project, ProjectBlob, Role, Upload
from lmvp_server.settings import Settings
from lmvp_server.storage import BlobStore
from lmvp_server.upload_writer import HashCache, UploadBusy, UploadWriter, hash_file_prefix

log = logging.getLogger(__name__)
router = APIRouter(tags=["uploads"])

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **extra}


def _tus_error(status: int, code: str, message: str, **headers: str) -> APIError:
    return APIError(status, code, message, headers=_tus_headers(**headers))


def _require_tus_version(request: Request) -> None:
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise _tus_error(
            412, "tus_version", f"this server speaks tus {TUS_VERSION}; got {version!r}",
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
    """Declare an upload. Needs `Upload-Length`, and `project` and `sha256` in `Upload-Metadata`."""
    _require_tus_version(request)
    settings: Settings = request.app.state.settings
    if request.headers.get("upload-defer-length"):
        raise _tus_error(400, "defer_length", "Upload-Defer-Length is not supported: send Upload-Length")
    length = _header_int(request, "upload-length")
    if length > settings.max_upload_size:
        raise _tus_error(
            413, "too_large",
            f"the file is {length} bytes; this server takes at most {settings.max_upload_size}",
        )
    meta = parse_upload_metadata(request.headers.get("upload-metadata", ""))
    project_name = meta.get("project", "")
    sha256 = meta.get("sha256", "").lower()
    if not project_name:
        raise _tus_error(400, "missing_project", "Upload-Metadata must name the 'project'")
    if not _SHA256.match(sha256):
        raise _tus_error(
            400, "missing_sha256", "Upload-Metadata must carry the file's 'sha256' (64 hex digits)"
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
    path = _partial_path(settings, upload.id)
    path.touch(mode=0o600, exist_ok=False)
    session.add(upload)
    session.commit()
    headers = _tus_headers(
        Location=str(request.url_for("tus_upload", upload_id=upload.id)), **{"Upload-Offset": "0"}
    )
    if length == 0:
        _complete_upload(session, request.app.state.blob_store, upload, project, path,
                         hash_file_prefix(path, 0).hexdigest())
    return Response(status_code=201, headers=headers)


@router.head("/uploads/{upload_id}", name="tus_upload")
def upload_offset(upload_id: str, request: Request, caller: CallerDep, session: SessionDep) -> Response:
    """How many bytes of the upload the server holds: resume from there."""
    _require_tus_version(request)
    upload = _load_upload(session, caller, upload_id)
    offset = _partial_path(request.app.state.settings, upload.id).stat().st_size
    return Response(
        status_code=200,
        headers=_tus_headers(
            **{
                "Upload-Offset": str(offset),
                "Upload-Length": str(upload.length),
                "Cache-Control": "no-store",
            }
        ),
    )


@router.patch("/uploads/{upload_id}", status_code=204)
async def append_to_upload(upload_id: str, request: Request) -> Response:
    """Append the body at `Upload-Offset`. Bytes received before a dropped connection are kept."""
    _require_tus_version(request)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/offset+octet-stream":
        raise _tus_error(
            415, "unsupported_media_type", "PATCH bodies must be application/offset+octet-stream"
        )
    offset = _header_int(request, "upload-offset")
    app = request.app
    upload, project = await run_in_threadpool(
        _authorize_patch, app, request.headers.get("authorization"), upload_id
    )
    path = _partial_path(app.state.settings, upload.id)
    cache: HashCache = app.state.hash_cache

    held = path.stat().st_size
    if offset != held:
        raise _tus_error(
            409, "offset_mismatch",
            f"the server holds {held} bytes of this upload; send from Upload-Offset {held}",
            **{"Upload-Offset": str(held)},
        )
    room = upload.length - held
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > room:
        raise _tus_error(
            413, "past_declared_length",
            f"this PATCH carries {declared} bytes but only {room} remain of the declared "
            f"{upload.length}",
        )

    hasher = cache.take(upload.id, held)
    if hasher is None:
        hasher = await run_in_threadpool(hash_file_prefix, path, held)
    writer = UploadWriter(path, held, hasher)
    try:
        await writer.open()
    except UploadBusy:
        raise _tus_error(423, "upload_busy", "another request is writing to this upload; retry") from None

    try:
        async for chunk in request.stream():
            if writer.received + len(chunk) > room:
                await writer.truncate_to_start()
                raise _tus_error(
                    413, "past_declared_length",
                    f"the body goes past the declared length of {upload.length} bytes",
                    **{"Upload-Offset": str(held)},
                )
            if chunk:
                await writer.feed(chunk)
    except ClientDisconnect:
        new_offset = await writer.finish()
        cache.put(upload.id, new_offset, writer.hasher)
        log.info("upload %s: connection dropped at %d of %d bytes", upload.id, new_offset, upload.length)
        return Response(status_code=204)
    except BaseException:
        # Anything else (cancellation at shutdown included): keep what reached the disk.
        await writer.drain()
        writer.close()
        raise
    new_offset = await writer.finish()

    if new_offset < upload.length:
        cache.put(upload.id, new_offset, writer.hasher)
    else:
        await run_in_threadpool(
            _finish_upload, app, upload.id, project.id, path, writer.hasher.hexdigest()
        )
    return Response(status_code=204, headers=_tus_headers(**{"Upload-Offset": str(new_offset)}))


@router.delete("/uploads/{upload_id}", status_code=204)
def terminate_upload(upload_id: str, request: Request, caller: CallerDep, session: SessionDep) -> Response:
    """Abort an upload and free its bytes (tus termination)."""
    _require_tus_version(request)
    upload = _load_upload(session, caller, upload_id)
    session.delete(upload)
    session.commit()
    _partial_path(request.app.state.settings, upload.id).unlink(missing_ok=True)
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
            out[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _tus_error(
                400, "invalid_metadata", f"Upload-Metadata value for {key!r} is not base64 UTF-8"
            ) from None
    return out


def remove_stale_uploads(session: Session, settings: Settings) -> int:
    """Delete uploads untouched for `upload_expiry_days`, and partial files nobody owns."""
    cutoff = utcnow() - timedelta(days=settings.upload_expiry_days)
    removed = 0
    known = set()
    for upload in session.scalars(select(Upload)):
        path = _partial_path(settings, upload.id)
        mtime = path.stat().st_mtime if path.exists() else 0
        if mtime < cutoff.timestamp():
            session.delete(upload)
            path.unlink(missing_ok=True)
            removed += 1
        else:
            known.add(upload.id)
    session.commit()
    for path in settings.upload_dir.iterdir():
        if path.name not in known:
            path.unlink(missing_ok=True)
    return removed


# --- helpers ------------------------------------------------------------------------------------


def _partial_path(settings: Settings, upload_id: str) -> Path:
    return settings.upload_dir / upload_id


def _header_int(request: Request, name: str) -> int:
    value = request.headers.get(name)
    if value is None or not value.isdigit():
        raise _tus_error(400, "invalid_header", f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _load_upload(session: Session, caller: Caller, upload_id: str) -> Upload:
    upload = session.get(Upload, upload_id) if len(upload_id) == 32 else None
    if upload is None or upload.user_id != caller.user.id:
        raise _tus_error(
            404, "not_found", f"upload {upload_id} not found: it finished, expired or was aborted"
        )
    return upload


def _authorize_patch(app: object, authorization: str | None, upload_id: str) -> tuple[Upload, Project]:
    with session_scope(app.state.sessionmaker) as session:  # type: ignore[attr-defined]
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


def _finish_upload(app: object, upload_id: str, project_id: int, path: Path, digest: str) -> None:
    with session_scope(app.state.sessionmaker) as session:  # type: ignore[attr-defined]
        upload = session.get(Upload, upload_id)
        project = session.get(Project, project_id)
        if upload is None or project is None:
            raise not_found(f"upload {upload_id}")
        _complete_upload(session, app.state.blob_store, upload, project, path, digest)  # type: ignore[attr-defined]


def _complete_upload(
    session: Session, store: BlobStore, upload: Upload, project: Project, path: Path, digest: str
) -> None:
    """Turn a fully received upload into a blob of its project, if its hash is the declared one."""
    size = path.stat().st_size
    session.delete(upload)
    if digest != upload.sha256 or size != upload.length:
        session.commit()
        path.unlink(missing_ok=True)
        raise _tus_error(
            460, "checksum_mismatch",
            f"the bytes received hash to {digest}, not the declared {upload.sha256}: the file "
            "changed while it was sent, or was damaged on the way; nothing was stored, upload again",
        )
    store.adopt(path, digest)
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=size))
        session.flush()
    if session.get(ProjectBlob, (project.id, digest)) is None:
        session.add(ProjectBlob(project_id=project.id, sha256=digest))
    session.commit()
    log.info("upload %s stored as blob %s (%d bytes) in %s", upload.id, digest, size, project.name)


__all__ = ["parse_upload_metadata", "remove_stale_uploads", "router"]
