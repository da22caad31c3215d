"""One append to an upload, whichever way its bytes come: authorise, lock the partial file,
check the offset, continue the running hash, (the caller writes), keep what was written or cut
it back, and store the blob once the last byte is in.

The tus `PATCH` (`lmvp_server.routers.uploads`) and the local socket
(`lmvp_server.local_uploads`) differ only in how bytes reach the partial file (a request body
through `UploadWriter`, or a kernel copy from the client's descriptor); both go through an
`AppendSession`, so the checks, the messages, the durability and the completion are the same.
It speaks no HTTP: it raises `UploadError`s (`UploadGone`, `UploadBusy`, `OffsetMismatch`,
`PastDeclaredLength`, `ChecksumMismatch`, `StoreFull`), which the router maps to tus answers
and the socket to its JSON answers (`lmvp_server.tus.tus_error_for`). Every method but `lock`
blocks: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmvp_server.db import session_scope, utcnow
from lmvp_server.deps import authenticate, load_project
from lmvp_server.errors import forbidden, not_found
from lmvp_server.models import Project, Role, Upload
from lmvp_server.upload_errors import (
    OffsetMismatch,
    PastDeclaredLength,
    StoreFull,
    UploadBusy,
    UploadGone,
)
from lmvp_server.upload_lifecycle import drop_upload, finish_upload, load_own_upload
from lmvp_server.upload_staging import hold, hold_blocking, hold_wait_seconds, partial_path
from lmvp_server.upload_writer import hash_file_prefix

if TYPE_CHECKING:
    from lmvp_server.context import ServerContext

log = logging.getLogger(__name__)

# How stale the database's record of an upload's last append may get (expiry counts in days).
ACTIVITY_RECORD_INTERVAL = timedelta(hours=1)


def authorize_append(ctx: ServerContext, authorization: str | None, upload_id: str) -> Upload:
    """The upload, if the token may append to it: a write token of the user who created it,
    who is still a contributor of its project. Raises `UploadGone` for an upload that is not
    the caller's (or no more), and the API's 401/403 errors for the token and the role."""
    with session_scope(ctx.sessions) as session:
        caller = authenticate(session, authorization)
        if not caller.can_write:
            raise forbidden("this token is read-only; create a write token to upload")
        upload = load_own_upload(session, caller, upload_id)
        project = session.get(Project, upload.project_id)
        if project is None:
            raise not_found(f"upload {upload_id}")
        # Still a contributor? Membership may have changed since the upload was created.
        load_project(session, caller, project.name, Role.contributor)
        if upload.updated_at < utcnow() - ACTIVITY_RECORD_INTERVAL:
            # The record of activity that expiry goes by, on any host
            # (`upload_lifecycle.expire_stale_uploads`); written at most this often.
            upload.updated_at = utcnow()
            session.commit()
        return upload


class AppendSession:
    """An append in progress: the upload, its partial file open and (once `lock`ed) held
    exclusively, and where it stood when the append began (`held`).

    Use: `open` → `lock` (or `lock_blocking`) → `begin(offset)` (→ `check_fits`) →
    `cached_hasher() or rehash()` → the caller writes bytes from `held` on, feeding the hasher
    → `keep(end, hasher)` (or `cut_back()`) → `complete(kept, hasher)`; `close()` in every case
    (`with` does it).
    """

    def __init__(self, ctx: ServerContext, upload: Upload, fd: int) -> None:
        self.ctx = ctx
        self.upload = upload
        self.path: Path = partial_path(ctx.settings, upload.id)
        self.fd = fd
        self.held = -1

    @classmethod
    def open(cls, ctx: ServerContext, upload: Upload) -> AppendSession:
        """Open the upload's partial file (not yet locked). Raises `UploadGone`."""
        try:
            fd = os.open(partial_path(ctx.settings, upload.id), os.O_RDWR)
        except FileNotFoundError:
            raise UploadGone(upload.id) from None
        return cls(ctx, upload, fd)

    async def lock(self) -> None:
        """Take the exclusive lock, asking a request of any process that holds it to let go
        (`lmvp_server.upload_staging`) and waiting for it without blocking the event loop.
        Raises `UploadBusy` if it is still held after the stall time and a margin."""
        seconds = hold_wait_seconds(self.ctx.settings)
        if not await hold(self.path, self.fd, fcntl.LOCK_EX, seconds):
            raise UploadBusy()

    def lock_blocking(self) -> None:
        """`lock` for worker threads."""
        seconds = hold_wait_seconds(self.ctx.settings)
        if not hold_blocking(self.path, self.fd, fcntl.LOCK_EX, seconds):
            raise UploadBusy()

    def begin(self, offset: int) -> int:
        """Check, under the lock, that the append starts where the server's bytes end;
        returns that offset (`held`). Raises `OffsetMismatch` naming it."""
        # Under the lock the size is stable: only the lock holder writes.
        held = self.held = os.fstat(self.fd).st_size
        if offset != held:
            raise OffsetMismatch(held)
        return held

    @property
    def room(self) -> int:
        """Bytes the upload may still take after `held`."""
        return self.upload.length - self.held

    def check_fits(self, count: int) -> None:
        """Raise `PastDeclaredLength` if `count` more bytes would pass the declared length."""
        if count > self.room:
            raise PastDeclaredLength(
                self.held,
                f"this PATCH carries {count} bytes but only {self.room} remain of the declared "
                f"{self.upload.length}",
            )

    def cached_hasher(self) -> Any | None:
        """This process's running hash of the `held` bytes, if it has it (never blocks)."""
        return self.ctx.hash_cache.take(self.upload.id, self.held)

    def rehash(self) -> Any:
        """A sha256 object fed with the `held` bytes, read again from the partial file (the
        running hash was lost: a restart, another worker). Raises `UploadGone`."""
        try:
            return hash_file_prefix(self.path, self.held)
        except FileNotFoundError:
            raise UploadGone(self.upload.id) from None

    def keep(self, end: int, hasher: Any | None) -> int:
        """End the partial file at `end` and make it durable, so the upload resumes from
        there; if that cannot be done (the disk filled up under the write-back), go back to
        the `held` bytes the append started from. `hasher` (fed with exactly the bytes kept,
        or None when unknown) is kept for the next append. Returns the size kept."""
        try:
            os.ftruncate(self.fd, end)
            os.fsync(self.fd)
            kept = end
        except OSError as exc:
            log.warning("upload %s: could not keep the bytes written (%s)", self.upload.id, exc)
            self.cut_back()
            kept = self.held
        if kept == end and hasher is not None:
            self.ctx.hash_cache.put(self.upload.id, kept, hasher)
        else:
            self.ctx.hash_cache.drop(self.upload.id)
        return kept

    def cut_back(self) -> None:
        """Forget everything this append wrote: the file ends at `held` again (what the
        hash of earlier appends covers), durably if the disk lets it."""
        os.ftruncate(self.fd, self.held)
        with contextlib.suppress(OSError):
            os.fsync(self.fd)

    def complete(self, kept: int, hasher: Any) -> str | None:
        """After `keep`: if the last byte is in, let go of the file and store the blob.
        Returns the stored blob's sha256, or None when the upload is not complete (or another
        request stored it a moment ago). Raises `ChecksumMismatch` (the upload is dropped)."""
        if kept < self.upload.length:
            return None
        self.ctx.hash_cache.drop(self.upload.id)
        self.close()  # finish_upload takes the lock again
        return finish_upload(self.ctx, self.upload, self.path, hasher.hexdigest())

    def drop(self) -> StoreFull:
        """The disk is full: drop the upload (its partial file would keep the disk full for
        everyone) and return the error to raise."""
        self.close()
        drop_upload(self.ctx, self.upload.id)
        return StoreFull()

    def close(self) -> None:
        """Close the file, which lets go of the lock."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> AppendSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AppendSession", "authorize_append"]
