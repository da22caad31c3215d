"""An upload's life on the server apart from the bytes that feed it: how a complete one
becomes a blob of its project, and how one is dropped or expires. Where its bytes wait and who
may write them is `lmvp_server.upload_staging`; appends go through
`lmvp_server.upload_session`; all speak in domain errors (`lmvp_server.upload_errors`), never
HTTP.
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
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmvp_server.blob_claims import claim_blob
from lmvp_server.db import session_scope, utcnow
from lmvp_server.deps import Caller
from lmvp_server.models import Blob, Project, ProjectBlob, Upload
from lmvp_server.settings import Settings
from lmvp_server.storage import BlobStore
from lmvp_server.upload_errors import ChecksumMismatch, UploadBusy, UploadGone
from lmvp_server.upload_staging import (
    LOCK_WAIT_SECONDS,
    clear_let_go,
    hold_blocking,
    hold_wait_seconds,
    partial_path,
)
from lmvp_server.upload_staging_s3 import discard_staged
from lmvp_server.upload_writer import hash_file_prefix

if TYPE_CHECKING:
    from lmvp_server.context import ServerContext

log = logging.getLogger(__name__)

_ORPHAN_AGE_SECONDS = 3600
# The errors of a write that mean the disk is full.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def load_own_upload(session: Session, caller: Caller, upload_id: str) -> Upload:
    """The caller's upload `upload_id`. Raises `UploadGone` for another user's, or none."""
    upload = session.get(Upload, upload_id) if len(upload_id) == 32 else None
    if upload is None or upload.user_id != caller.user.id:
        raise UploadGone(upload_id)
    return upload


def finish_upload(ctx: ServerContext, upload: Upload, path: Path, digest: str | None) -> str | None:
    """Store a fully received upload as a blob, holding the partial file's lock so that two
    requests that both saw the last byte (a PATCH and a HEAD) store it once. `digest` is the
    running hash of the bytes, or None to hash the file again. Returns the stored blob's sha256,
    or None when another request stored it a moment ago. Raises `UploadGone`, `UploadBusy`,
    `ChecksumMismatch`."""
    try:
        fd = _lock_partial_file(path, hold_wait_seconds(ctx.settings))
    except FileNotFoundError:
        fd = -1
    try:
        with session_scope(ctx.sessions) as session:
            current = session.get(Upload, upload.id) if fd >= 0 else None
            if current is None or not path.exists():
                # Another request stored it a moment ago, or it was aborted.
                if (
                    not upload.sha256
                    or session.get(ProjectBlob, (upload.project_id, upload.sha256)) is None
                ):
                    raise UploadGone(upload.id)
                return None
            project = session.get(Project, current.project_id)
            if project is None:
                raise UploadGone(upload.id)
            if digest is None:
                digest = hash_file_prefix(path, path.stat().st_size).hexdigest()
            complete_upload(session, ctx.blob_store, current, project, path, digest)
            return digest
    finally:
        if fd >= 0:
            os.close(fd)


def complete_upload(
    session: Session, store: BlobStore, upload: Upload, project: Project, path: Path, digest: str
) -> None:
    """Turn a fully received upload into a blob of its project, if its hash is the declared one
    (an upload that declared none is stored under the hash of its bytes). Raises
    `ChecksumMismatch` (the upload is dropped) when its bytes are not the declared ones."""
    size = path.stat().st_size
    if (upload.sha256 and digest != upload.sha256) or size != upload.length:
        session.delete(upload)
        session.commit()
        path.unlink(missing_ok=True)
        clear_let_go(path)
        raise ChecksumMismatch(digest, upload.sha256)
    clear_let_go(path)
    # Claimed first, so a garbage collection pass never deletes bytes the store then keeps
    # instead of this upload's copy (lmvp_server/gc.py).
    claim_blob(session, digest, size)
    store.adopt(path, digest)
    record_blob(session, upload.id, project.id, digest, size)
    log.info("upload %s stored as blob %s (%d bytes) in %s", upload.id, digest, size, project.name)


def record_blob(session: Session, upload_id: str, project_id: int, digest: str, size: int) -> None:
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
                session.add(ProjectBlob(project_id=project_id, sha256=digest, size=size))
            session.commit()
            return
        except IntegrityError:
            session.rollback()
            if attempt == 2:
                raise


def _lock_partial_file(path: Path, seconds: float) -> int:
    """An fd holding the exclusive lock on the partial file (asks the current holder, in any
    process, to let go, and waits up to `seconds` for it)."""
    fd = os.open(path, os.O_RDONLY)
    if not hold_blocking(path, fd, fcntl.LOCK_EX, seconds):
        os.close(fd)
        raise UploadBusy()
    return fd


def drop_upload(ctx: ServerContext, upload_id: str) -> None:
    """Forget an upload and free its bytes (as tus termination does). The bytes go first: on
    a full disk the database needs the room to record it (and a descriptor still open on the
    file would keep an unlinked file's blocks)."""
    path = partial_path(ctx.settings, upload_id)
    with contextlib.suppress(FileNotFoundError):
        os.truncate(path, 0)
    path.unlink(missing_ok=True)
    clear_let_go(path)
    ctx.hash_cache.drop(upload_id)
    with session_scope(ctx.sessions) as session:
        upload = session.get(Upload, upload_id)
        if upload is not None:
            session.delete(upload)
            session.commit()


def expire_stale_uploads(session: Session, settings: Settings) -> int:
    """Delete uploads whose last activity the database records (`updated_at`) is older than
    `upload_expiry_days`; returns how many. Fleet work (`lmvp_server.fleet`): whichever server
    runs it, on any host, decides from the database alone, never from whether the bytes are on
    its own disk (another host sharing the database may be receiving them). A partial file of
    its own folder written to since the cutoff still counts as activity."""
    cutoff = utcnow() - timedelta(days=settings.upload_expiry_days)
    gone: list[tuple[str, str | None, str | None]] = []
    for upload in session.scalars(select(Upload).where(Upload.updated_at < cutoff)):
        path = partial_path(settings, upload.id)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime >= cutoff.timestamp():
                continue
        session.delete(upload)
        path.unlink(missing_ok=True)
        gone.append((upload.id, upload.multipart_id, upload.multipart_key))
    session.commit()
    # Staged in the object store: abort their multipart uploads, delete their tails.
    discard_staged(settings, gone)
    return len(gone)


def remove_orphan_partials(session: Session, settings: Settings) -> int:
    """Delete files of this server's own upload folder that belong to no upload the database
    knows and were last written over an hour ago; returns how many. Host work: each server
    sweeps its own folder."""
    # A file without a row may belong to an upload another worker is creating right now (the
    # file is made just before its row commits): only old ones are orphans.
    orphan_before = time.time() - _ORPHAN_AGE_SECONDS
    old = []
    for path in settings.upload_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < orphan_before:
                old.append(path)
    if not old:
        return 0
    known = set(session.scalars(select(Upload.id).where(Upload.id.in_([p.name for p in old]))))
    orphans = [path for path in old if path.name not in known]
    for path in orphans:
        path.unlink(missing_ok=True)
    return len(orphans)


def remove_stale_uploads(session: Session, settings: Settings) -> int:
    """`expire_stale_uploads`, then `remove_orphan_partials` of this server's own folder;
    returns how many uploads expired."""
    removed = expire_stale_uploads(session, settings)
    remove_orphan_partials(session, settings)
    return removed


__all__ = [
    "DISK_FULL",
    "LOCK_WAIT_SECONDS",
    "complete_upload",
    "drop_upload",
    "expire_stale_uploads",
    "finish_upload",
    "load_own_upload",
    "partial_path",
    "record_blob",
    "remove_orphan_partials",
    "remove_stale_uploads",
]
