"""An upload's life on the server apart from the HTTP that feeds it: who may append to it, where
its bytes wait, how a complete one becomes a blob of its project, and how one is dropped or
expires. The tus endpoints (`lmvp_server.routers.uploads`) and the socket that takes files from
clients on this machine (`lmvp_server.local_uploads`) both append through it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmvp_server.db import session_scope, utcnow
from lmvp_server.deps import Caller, authenticate, load_project
from lmvp_server.errors import APIError, forbidden, not_found
from lmvp_server.models import Blob, Project, ProjectBlob, Role, Upload
from lmvp_server.settings import Settings
from lmvp_server.storage import BlobStore
from lmvp_server.upload_writer import flock_within_blocking, hash_file_prefix

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
# How long a request waits for another one to let go of an upload's partial file.
LOCK_WAIT_SECONDS = 5.0
_ORPHAN_AGE_SECONDS = 3600


def tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **extra}


def tus_error(status: int, code: str, message: str, **headers: str) -> APIError:
    return APIError(status, code, message, headers=tus_headers(**headers))


def partial_path(settings: Settings, upload_id: str) -> Path:
    return settings.upload_dir / upload_id


def upload_gone(upload_id: str) -> APIError:
    return tus_error(
        404, "not_found", f"upload {upload_id} not found: it finished, expired or was aborted"
    )


def load_upload(session: Session, caller: Caller, upload_id: str) -> Upload:
    upload = session.get(Upload, upload_id) if len(upload_id) == 32 else None
    if upload is None or upload.user_id != caller.user.id:
        raise upload_gone(upload_id)
    return upload


def authorize_patch(app: Any, authorization: str | None, upload_id: str) -> tuple[Upload, Project]:
    with session_scope(app.state.sessionmaker) as session:
        caller = authenticate(session, authorization)
        if not caller.can_write:
            raise forbidden("this token is read-only; create a write token to upload")
        upload = load_upload(session, caller, upload_id)
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
            complete_upload(session, app.state.blob_store, current, project, path, digest)
            return digest
    finally:
        if fd >= 0:
            os.close(fd)


def complete_upload(
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


__all__ = [
    "DISK_FULL",
    "LOCK_WAIT_SECONDS",
    "TUS_VERSION",
    "authorize_patch",
    "complete_upload",
    "disk_full",
    "drop_upload",
    "finish_upload",
    "load_upload",
    "partial_path",
    "remove_stale_uploads",
    "tus_error",
    "tus_headers",
    "upload_gone",
]
